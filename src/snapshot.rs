//! Snapshot files: a consistent image of a member's applied state, as
//! `Maintenance.Snapshot` streams it (`etcdctl snapshot save`) and as
//! `cairn snapshot restore` / `cairn snapshot status` read it.
//!
//! ```text
//!  "CAIRNSNP" u32 version (1: the image ends with a SHA-256; 2: with an
//!             XXH3-128 and 16 zero bytes, see [`ImageHash`])
//!  frame*   : u8 tag, u32 length (big-endian), payload
//!             HEAD (SnapshotHead: revision, applied index, ids, time)
//!             PAIR (u32 key length, key, value): one backend record each
//!             TAIL (SnapshotTail: compaction revision, number of pairs)
//!             PAD  (zeros, so the body is a multiple of 512 bytes: etcdctl
//!                   looks for the hash at `size % 512 == 32`)
//!  hash of everything before it (32 bytes): sha256 as etcd appends to its
//!             snapshots (version 1)
//! ```
//!
//! **Consistency without stopping the member.** The image is taken in two
//! parts. [`capture_head`] runs on the Storage actor between two applied
//! batches and copies the small mutable records (meta, leases, alarms) and
//! the revision `R` they belong to. Then [`write_image`] streams the revision
//! records up to `R` from a blocking thread: they are immutable, so no lock
//! is held and apply carries on. Only compaction removes records, and only
//! those that reads at or above the compaction revision do not need; so the
//! image is valid from the compaction revision current at the *end* of the
//! stream (written in TAIL), as long as that is at most `R`. A compaction
//! past `R` during the stream fails the snapshot (the client retries).
//! Records an unfinished compaction left below its revision are compacted
//! away again on restore.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::cluster::ClusterInfo;
use crate::error::StorageError;
use crate::mvcc::store::{
    CONF_MEMBER_PREFIX, META_COMPACT_REV, META_CONSISTENT_INDEX, REMOVED_PREFIX, REV_PREFIX,
};
use crate::mvcc::{
    Backend, BatchWriter, PreparedState, Revision, Store, WriteBatch, NEVER_COMPACTED,
};
use crate::proto::cairnpb::{SnapshotHead, SnapshotTail};
use crate::raft::log_store::LogStore;

/// The first bytes of every cairn snapshot file.
pub const MAGIC: &[u8; 8] = b"CAIRNSNP";
const TAG_HEAD: u8 = 1;
const TAG_PAIR: u8 = 2;
const TAG_TAIL: u8 = 3;
const TAG_PAD: u8 = 4;
/// The body (everything before the hash) is padded to a multiple of this:
/// etcdctl finds the appended SHA-256 by `size % 512 == 32`, as etcd's
/// bolt files are whole pages.
const PAD_TO: u64 = 512;
const HASH_LEN: usize = 32;
/// The magic and the version.
const PREAMBLE_LEN: usize = 12;

/// The hash an image ends with, which its version names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageHash {
    /// Version 1: SHA-256, what `etcdctl snapshot save` files end with
    /// (etcd's tools look for it) and what `cairn snapshot status` prints.
    Sha256,
    /// Version 2: XXH3-128 (then 16 zero bytes), for raft snapshots between
    /// members, which the receiver verifies and never keeps as a file of
    /// record: the same check against damage and truncation at a tenth of
    /// SHA-256's CPU on both ends.
    Xxh3,
}

impl ImageHash {
    fn version(self) -> u32 {
        match self {
            ImageHash::Sha256 => 1,
            ImageHash::Xxh3 => 2,
        }
    }

    /// The hash an image's preamble names.
    fn of_preamble(preamble: &[u8]) -> Result<ImageHash, SnapshotError> {
        if preamble.len() < PREAMBLE_LEN || &preamble[..8] != MAGIC {
            return Err(SnapshotError::Format("bad magic".into()));
        }
        let version = u32::from_be_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
        match version {
            1 => Ok(ImageHash::Sha256),
            2 => Ok(ImageHash::Xxh3),
            _ => Err(SnapshotError::Format(format!(
                "version {version} (this cairn reads 1 and 2)"
            ))),
        }
    }
}

/// A running [`ImageHash`].
enum Hasher {
    Sha256(Sha256),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl Hasher {
    fn new(kind: ImageHash) -> Hasher {
        match kind {
            ImageHash::Sha256 => Hasher::Sha256(Sha256::new()),
            ImageHash::Xxh3 => Hasher::Xxh3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Xxh3(h) => h.update(data),
        }
    }

    fn finish(self) -> [u8; HASH_LEN] {
        let mut out = [0u8; HASH_LEN];
        match self {
            Hasher::Sha256(h) => out.copy_from_slice(h.finalize().as_slice()),
            Hasher::Xxh3(h) => out[..16].copy_from_slice(&h.digest128().to_be_bytes()),
        }
        out
    }
}
/// Bytes per chunk handed to the gRPC stream (etcd sends 32 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a cairn snapshot: {0}")]
    Format(String),
    #[error("snapshot hash mismatch: the file is damaged or truncated")]
    HashMismatch,
    #[error("a compaction to revision {compacted} passed the snapshot's revision {revision} while it was taken; take it again")]
    Raced { revision: i64, compacted: i64 },
    #[error("the receiver went away")]
    Gone,
    #[error("{0}")]
    Restore(String),
}

/// The part of an image taken between two applied batches.
#[derive(Debug, Clone)]
pub struct ImageHead {
    /// The revision the image is of.
    pub revision: i64,
    /// The applied raft index at that revision.
    pub applied_index: u64,
    /// Every backend record that is not a revision record (meta, leases,
    /// alarms): these change in place, so they are copied now.
    pub mutable: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Called by the Storage actor, between two applied batches (nothing is
/// being written): the revision and the mutable records.
pub fn capture_head(store: &Store) -> Result<ImageHead, StorageError> {
    let backend = store.backend();
    let mut mutable = Vec::new();
    let end = [0xffu8];
    for range in [(&b""[..], REV_PREFIX), (&[REV_PREFIX[0] + 1][..], &end[..])] {
        for item in backend.scan_range(range.0, range.1) {
            mutable.push(item?);
        }
    }
    Ok(ImageHead {
        revision: store.current_revision(),
        applied_index: store.applied_index(),
        mutable,
    })
}

fn frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

fn pair(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.push(TAG_PAIR);
    out.extend_from_slice(&((4 + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Writes the whole image, ending with `hash`, in chunks of about
/// [`CHUNK_BYTES`] to `emit` (told whether the chunk is the last; it
/// returns false when its receiver went away). Blocking: run it on a
/// blocking thread, after [`capture_head`].
pub fn write_image(
    store: &Store,
    head: ImageHead,
    (cluster_id, member_id): (u64, u64),
    hash: ImageHash,
    mut emit: impl FnMut(Vec<u8>, bool) -> bool,
) -> Result<(), SnapshotError> {
    let mut out = Chunker {
        emitted: 0,
        hasher: Hasher::new(hash),
        buf: Vec::with_capacity(CHUNK_BYTES + 1024),
        emit: &mut emit,
    };
    out.buf.extend_from_slice(MAGIC);
    out.buf.extend_from_slice(&hash.version().to_be_bytes());
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let meta = SnapshotHead {
        revision: head.revision,
        applied_index: head.applied_index,
        cluster_id,
        member_id,
        created_unix,
    };
    frame(&mut out.buf, TAG_HEAD, &meta.encode_to_vec());
    let mut pairs = 0u64;
    for (k, v) in &head.mutable {
        pair(&mut out.buf, k, v);
        pairs += 1;
        out.flush(false)?;
    }
    for item in store.backend().scan_prefix(REV_PREFIX) {
        let (k, v) = item?;
        let (rev, _) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
        if rev.main > head.revision {
            break;
        }
        pair(&mut out.buf, &k, &v);
        pairs += 1;
        out.flush(false)?;
    }
    let compacted = store.compact_revision();
    if compacted > head.revision {
        return Err(SnapshotError::Raced {
            revision: head.revision,
            compacted,
        });
    }
    let tail = SnapshotTail {
        compact_revision: compacted,
        pairs,
    };
    frame(&mut out.buf, TAG_TAIL, &tail.encode_to_vec());
    let body = out.emitted + out.buf.len() as u64;
    let mut pad = (PAD_TO - (body + 5) % PAD_TO) % PAD_TO;
    if pad > u32::MAX as u64 {
        pad = 0;
    }
    frame(&mut out.buf, TAG_PAD, &vec![0u8; pad as usize]);
    out.flush(true)?;
    let digest = out.hasher.finish();
    if (out.emit)(digest.to_vec(), true) {
        Ok(())
    } else {
        Err(SnapshotError::Gone)
    }
}

/// Cuts the image into chunks, hashing what it hands out.
struct Chunker<'a, E: FnMut(Vec<u8>, bool) -> bool> {
    /// Bytes handed out so far.
    emitted: u64,
    hasher: Hasher,
    buf: Vec<u8>,
    emit: &'a mut E,
}

impl<E: FnMut(Vec<u8>, bool) -> bool> Chunker<'_, E> {
    fn flush(&mut self, force: bool) -> Result<(), SnapshotError> {
        if self.buf.len() < CHUNK_BYTES && !force {
            return Ok(());
        }
        self.hasher.update(self.buf.as_slice());
        self.emitted += self.buf.len() as u64;
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 1024));
        if (self.emit)(chunk, false) {
            Ok(())
        } else {
            Err(SnapshotError::Gone)
        }
    }
}

/// Checks the file's trailing hash (the one its version names); returns it.
pub fn verify(path: &Path) -> Result<[u8; HASH_LEN], SnapshotError> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size < (PREAMBLE_LEN + HASH_LEN) as u64 {
        return Err(SnapshotError::Format(format!(
            "{} is too short",
            path.display()
        )));
    }
    let mut verifier = StreamVerifier::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return verifier.finish();
        }
        verifier.update(&buf[..n]);
    }
}

/// [`verify`] over bytes as they arrive (a raft snapshot streamed from the
/// leader), so the received image need not be read back: everything but
/// the last 32 bytes is hashed, and those must be the hash.
#[derive(Default)]
pub struct StreamVerifier {
    hasher: BodyHasher,
    /// The last bytes seen (at most [`HASH_LEN`]): the hash, if they are the end.
    tail: Vec<u8>,
    total: u64,
}

impl StreamVerifier {
    pub fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= HASH_LEN {
            self.hasher.update(&self.tail);
            let (body, tail) = data.split_at(data.len() - HASH_LEN);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            let spill = self.tail.len().saturating_sub(HASH_LEN);
            self.hasher.update(&self.tail[..spill]);
            self.tail.drain(..spill);
        }
    }

    /// Whether what arrived is a whole image with a matching hash; the hash.
    pub fn finish(self) -> Result<[u8; HASH_LEN], SnapshotError> {
        if self.total < (PREAMBLE_LEN + HASH_LEN) as u64 {
            return Err(SnapshotError::Format("the image is too short".into()));
        }
        let hash = self.hasher.finish()?;
        if hash != self.tail.as_slice() {
            return Err(SnapshotError::HashMismatch);
        }
        Ok(hash)
    }
}

/// Hashes an image's body with the hash its preamble names: the preamble's
/// bytes are held until they are all there.
enum BodyHasher {
    Preamble(Vec<u8>),
    Hashing(Hasher),
    Refused(SnapshotError),
}

impl Default for BodyHasher {
    fn default() -> BodyHasher {
        BodyHasher::Preamble(Vec::with_capacity(PREAMBLE_LEN))
    }
}

impl BodyHasher {
    fn update(&mut self, data: &[u8]) {
        let held = match self {
            BodyHasher::Hashing(h) => return h.update(data),
            BodyHasher::Refused(_) => return,
            BodyHasher::Preamble(held) => held,
        };
        let take = data.len().min(PREAMBLE_LEN - held.len());
        held.extend_from_slice(&data[..take]);
        if held.len() < PREAMBLE_LEN {
            return;
        }
        *self = match ImageHash::of_preamble(held) {
            Ok(kind) => {
                let mut h = Hasher::new(kind);
                h.update(held);
                h.update(&data[take..]);
                BodyHasher::Hashing(h)
            }
            Err(e) => BodyHasher::Refused(e),
        };
    }

    fn finish(self) -> Result<[u8; HASH_LEN], SnapshotError> {
        match self {
            BodyHasher::Hashing(h) => Ok(h.finish()),
            BodyHasher::Preamble(_) => Err(SnapshotError::Format("the image is too short".into())),
            BodyHasher::Refused(e) => Err(e),
        }
    }
}

/// A backend record: key and value.
type Pair = (Vec<u8>, Vec<u8>);

/// One frame read back.
enum Frame {
    Head(SnapshotHead),
    Pair(Vec<u8>, Vec<u8>),
    Tail(SnapshotTail),
}

/// Reads the frames of a file (already verified) in order.
fn read_frames(
    path: &Path,
    mut f: impl FnMut(Frame) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut frames = FrameReader::open(path)?;
    while let Some(frame) = frames.next_frame()? {
        f(frame)?;
    }
    Ok(())
}

/// The frames of an image, one at a time, from a file or a stream.
struct FrameReader {
    /// The image's body: everything but its trailing hash.
    r: Box<dyn Read + Send>,
}

impl FrameReader {
    /// Opens the file and checks its magic and version.
    fn open(path: &Path) -> Result<FrameReader, SnapshotError> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        if size < (MAGIC.len() + 4 + HASH_LEN) as u64 {
            return Err(SnapshotError::Format(format!(
                "{} is too short",
                path.display()
            )));
        }
        FrameReader::start(Box::new(
            BufReader::with_capacity(1 << 16, file).take(size - HASH_LEN as u64),
        ))
    }

    /// The frames of an image read from `r` as it arrives. Its body ends
    /// with the padding frame; the hash after it is left unread (whoever
    /// receives the image checks it, see [`StreamVerifier`], before using
    /// what was read).
    fn stream(r: impl Read + Send + 'static) -> Result<FrameReader, SnapshotError> {
        FrameReader::start(Box::new(r))
    }

    /// Checks the magic and version at the start of `r`.
    fn start(mut r: Box<dyn Read + Send>) -> Result<FrameReader, SnapshotError> {
        let mut preamble = [0u8; PREAMBLE_LEN];
        r.read_exact(&mut preamble)?;
        ImageHash::of_preamble(&preamble)?;
        Ok(FrameReader { r })
    }

    /// The next `n` bytes. The buffer grows as they come, never allocated
    /// from the length alone: a streamed image is parsed before its hash
    /// is checked, and a damaged length must not ask for gigabytes.
    fn read_bytes(&mut self, n: usize) -> Result<Vec<u8>, SnapshotError> {
        if n <= 1 << 20 {
            let mut out = vec![0u8; n];
            self.r.read_exact(&mut out).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    SnapshotError::Format("a frame cut short".into())
                }
                _ => e.into(),
            })?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(1 << 20);
        (&mut self.r).take(n as u64).read_to_end(&mut out)?;
        if out.len() != n {
            return Err(SnapshotError::Format("a frame cut short".into()));
        }
        Ok(out)
    }

    /// The next frame; `None` at the end of the body (the padding frame,
    /// always the last, or the end of a file's body).
    fn next_frame(&mut self) -> Result<Option<Frame>, SnapshotError> {
        let bad = |what: &str| SnapshotError::Format(what.to_string());
        let mut tag = [0u8; 1];
        if self.r.read(&mut tag)? == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if tag[0] == TAG_PAIR {
            // Key and value read into their own buffers, no copy.
            let mut klen = [0u8; 4];
            if len < 4 {
                return Err(bad("short pair"));
            }
            self.r.read_exact(&mut klen)?;
            let klen = u32::from_be_bytes(klen) as usize;
            if len < 4 + klen {
                return Err(bad("short key"));
            }
            let key = self.read_bytes(klen)?;
            let value = self.read_bytes(len - 4 - klen)?;
            return Ok(Some(Frame::Pair(key, value)));
        }
        let payload = self.read_bytes(len)?;
        Ok(Some(match tag[0] {
            TAG_HEAD => {
                Frame::Head(SnapshotHead::decode(payload.as_slice()).map_err(|_| bad("bad head"))?)
            }
            TAG_TAIL => {
                Frame::Tail(SnapshotTail::decode(payload.as_slice()).map_err(|_| bad("bad tail"))?)
            }
            TAG_PAD => return Ok(None),
            other => return Err(SnapshotError::Format(format!("unknown frame tag {other}"))),
        }))
    }
}

/// The bytes of an image as its chunks come through a bounded channel
/// (a raft snapshot being received): a blocking reader, run off the async
/// runtime. The channel closing ends the stream.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What `cairn snapshot status` prints (etcd's columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The first 4 bytes of the file's SHA-256, as a number.
    pub hash: u32,
    pub revision: i64,
    /// Backend records in the image.
    pub total_keys: u64,
    /// File size in bytes.
    pub total_size: u64,
}

/// Verifies the file and summarises it.
pub fn status(path: &Path) -> Result<Status, SnapshotError> {
    let digest = verify(path)?;
    let total_size = std::fs::metadata(path)?.len();
    let (mut revision, mut total_keys, mut tail) = (None, 0, None);
    read_frames(path, |frame| {
        match frame {
            Frame::Head(h) => revision = Some(h.revision),
            Frame::Pair(..) => total_keys += 1,
            Frame::Tail(t) => tail = Some(t),
        }
        Ok(())
    })?;
    let revision = revision.ok_or_else(|| SnapshotError::Format("no head".into()))?;
    let tail = tail.ok_or_else(|| SnapshotError::Format("no tail".into()))?;
    if tail.pairs != total_keys {
        return Err(SnapshotError::Format(format!(
            "{total_keys} pairs where the tail says {}",
            tail.pairs
        )));
    }
    Ok(Status {
        hash: u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
        revision,
        total_keys,
        total_size,
    })
}

/// `cairn snapshot restore`'s settings (etcdutl's flags).
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: Vec<(String, url::Url)>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<url::Url>,
    pub skip_hash_check: bool,
    /// The state engine of the new data dir (`--backend-engine`; `None`:
    /// the default).
    pub backend_engine: Option<crate::mvcc::Engine>,
}

/// Builds a new member's data dir from a snapshot file: the applied state of
/// the image (compacted to its compaction revision), and a fresh raft log
/// bootstrapping the cluster `--initial-cluster` describes, as etcd's
/// restore does. Returns the restored revision.
pub fn restore(path: &Path, opts: &RestoreOptions) -> Result<i64, SnapshotError> {
    if !opts.skip_hash_check {
        verify(path)?;
    }
    let member_dir = opts.data_dir.join("member");
    if member_dir.exists() {
        return Err(SnapshotError::Restore(format!(
            "data dir {} already holds a member; restore into a new one",
            opts.data_dir.display()
        )));
    }
    let cluster = ClusterInfo::from_initial_cluster(
        &opts.initial_cluster,
        &opts.initial_cluster_token,
        &opts.name,
        &[],
    );
    if cluster.local_id == 0 {
        return Err(SnapshotError::Restore(format!(
            "--name {} is not in --initial-cluster",
            opts.name
        )));
    }
    let mut own: Vec<String> = cluster
        .local()
        .map(|m| m.peer_urls.clone())
        .unwrap_or_default();
    let mut advertised: Vec<String> = opts
        .initial_advertise_peer_urls
        .iter()
        .map(crate::cluster::url_string)
        .collect();
    own.sort();
    advertised.sort();
    if own != advertised {
        return Err(SnapshotError::Restore(format!(
            "--initial-cluster lists {} with {} but --initial-advertise-peer-urls is {}",
            opts.name,
            own.join(","),
            advertised.join(",")
        )));
    }
    std::fs::create_dir_all(&member_dir)?;

    // The state: every pair but the applied index (the new log starts from
    // nothing) and the compaction revision (compacted again below, which
    // also removes what an unfinished compaction left).
    let backend: Arc<dyn Backend> = crate::mvcc::engine::open_state(
        &member_dir,
        opts.backend_engine,
        crate::mvcc::backend::DEFAULT_SLED_CACHE_BYTES,
    )?;
    let (mut head, mut tail) = (None, None);
    let mut batch = WriteBatch::new();
    let mut in_batch = 0usize;
    read_frames(path, |frame| {
        match frame {
            Frame::Head(h) => head = Some(h),
            Frame::Tail(t) => tail = Some(t),
            Frame::Pair(k, v) => {
                // The old cluster's configuration goes too: the new one is
                // --initial-cluster.
                let old_config = k.starts_with(CONF_MEMBER_PREFIX) || k.starts_with(REMOVED_PREFIX);
                if k != META_CONSISTENT_INDEX && k != META_COMPACT_REV && !old_config {
                    batch.put(k, v);
                    in_batch += 1;
                }
                if in_batch >= 10_000 {
                    backend.write_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
        }
        Ok(())
    })?;
    backend.write_batch(batch)?;
    let head = head.ok_or_else(|| SnapshotError::Format("no head".into()))?;
    let tail = tail.ok_or_else(|| SnapshotError::Format("no tail".into()))?;

    let store = Store::open(backend.clone())?;
    if tail.compact_revision != NEVER_COMPACTED && tail.compact_revision > 0 {
        let mut w = BatchWriter::new(&store);
        w.compact(tail.compact_revision).map_err(|e| {
            SnapshotError::Restore(format!("compacting to {}: {e}", tail.compact_revision))
        })?;
        w.commit(0)?;
    }
    let revision = store.current_revision();
    if revision != head.revision {
        return Err(SnapshotError::Restore(format!(
            "restored revision {revision}, the snapshot says {}",
            head.revision
        )));
    }
    drop(store);
    crate::mvcc::store::seed_membership(
        backend.as_ref(),
        &cluster.member_records(),
        crate::raft::log_store::BOOTSTRAP_INDEX,
    )?;
    backend.flush()?;

    let log = LogStore::open(&member_dir.join("wal"))?;
    log.bootstrap(cluster.voter_ids())?;
    log.store_identity(&cluster.identity(&opts.initial_cluster_token))?;
    Ok(revision)
}

/// Replaces `store`'s whole state with the image in `path`: how a member
/// installs the raft snapshot its leader sent. The image was verified when
/// it arrived; `verify` checks it again, for an image that sat on disk
/// across a restart. The consistent index is written last, after
/// everything else, so a crash half-way leaves a state start-up recognises
/// as unfinished. Returns the image's head.
pub fn install(store: &Store, path: &Path, verify: bool) -> Result<SnapshotHead, SnapshotError> {
    if verify {
        self::verify(path)?;
    }
    let head = if store.backend().can_bulk_replace() {
        install_sorted(store, path)?
    } else {
        install_in_batches(store, path)?
    };
    check_installed(store, &head)?;
    Ok(head)
}

/// [`install`] on an engine that replaces its state in one step (fjall):
/// the image's pairs, put in key order ([`SortedImage`]), become the new
/// state; a crash before the engine's commit point leaves the old one,
/// which start-up recognises (its consistent index is behind the log).
fn install_sorted(store: &Store, path: &Path) -> Result<SnapshotHead, SnapshotError> {
    let prepared = prepare(store, FrameReader::open(path)?)?;
    commit_prepared(store, prepared)
}

/// An image written into the engine beside the current state
/// ([`Store::prepare_sorted`]), not yet the state.
#[derive(Debug)]
pub struct PreparedImage {
    head: SnapshotHead,
    state: PreparedState,
}

impl PreparedImage {
    /// The applied index the image is of.
    pub fn applied_index(&self) -> u64 {
        self.head.applied_index
    }

    /// Makes the prepared image durable and keeps it across a restart as
    /// the image of raft snapshot `index` (see [`commit_recovered`]): what
    /// a restart between raft's persist and the commit installs, instead
    /// of a copy of the image in a file.
    pub fn keep(&mut self, store: &Store, index: u64) -> Result<(), SnapshotError> {
        Ok(store.keep_prepared(&mut self.state, index)?)
    }
}

/// Writes the image `frames` reads into the engine beside the current
/// state (fjall: a new partition), replaying its key index; the member
/// serves and applies meanwhile. A damaged, cut, unsorted or empty image is
/// refused here, and what was written of it removed.
fn prepare(store: &Store, frames: FrameReader) -> Result<PreparedImage, SnapshotError> {
    let mut pairs = SortedImage::new(frames);
    let state = match store.prepare_sorted(&mut pairs) {
        Ok(state) => state,
        Err(e) => return Err(pairs.error.take().unwrap_or(e.into())),
    };
    let head = pairs
        .head
        .take()
        .ok_or_else(|| SnapshotError::Format("no head".into()))?;
    Ok(PreparedImage { head, state })
}

/// How a follower ingests a raft snapshot while it arrives: the image's
/// bytes come through `chunks` (bounded: a slow ingest slows the stream
/// down to the leader's read). Blocking. The result must not be committed
/// before the whole stream's hash checked.
pub fn prepare_stream(
    store: &Store,
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<PreparedImage, SnapshotError> {
    prepare(store, FrameReader::stream(ChunkReader::new(chunks))?)
}

/// Makes a prepared image the member's state (a short step: the engine's
/// commit point, then the in-memory state); returns its head.
pub fn commit_prepared(
    store: &Store,
    prepared: PreparedImage,
) -> Result<SnapshotHead, SnapshotError> {
    // Half-way through: the image is in the engine's files, not yet part
    // of its state.
    crate::failpoint::hit("snapshot-install");
    store.commit_prepared(prepared.state)?;
    check_installed(store, &prepared.head)?;
    Ok(prepared.head)
}

/// The store reads at the revision and index the image says.
fn check_installed(store: &Store, head: &SnapshotHead) -> Result<(), SnapshotError> {
    if store.current_revision() != head.revision || store.applied_index() != head.applied_index {
        return Err(SnapshotError::Restore(format!(
            "installed revision {} at index {}, the image says revision {} at index {}",
            store.current_revision(),
            store.applied_index(),
            head.revision,
            head.applied_index
        )));
    }
    Ok(())
}

/// [`install`] on an engine that takes the records in batches (sled): the
/// store is emptied and filled, and the consistent index is written last,
/// after everything else is durable, so a crash half-way leaves a state
/// start-up recognises as unfinished.
fn install_in_batches(store: &Store, path: &Path) -> Result<SnapshotHead, SnapshotError> {
    let mut head = None;
    store.replace_all(|write| -> Result<(), SnapshotError> {
        let (mut batch, mut tail) = (WriteBatch::new(), None);
        read_frames(path, |frame| {
            match frame {
                Frame::Head(h) => head = Some(h),
                Frame::Tail(t) => tail = Some(t),
                Frame::Pair(k, v) => {
                    if k != META_CONSISTENT_INDEX && k != META_COMPACT_REV {
                        batch.put(k, v);
                    }
                    if batch.len() >= 10_000 {
                        write(std::mem::take(&mut batch))?;
                    }
                }
            }
            Ok(())
        })?;
        let head = head
            .as_ref()
            .ok_or_else(|| SnapshotError::Format("no head".into()))?;
        let tail = tail.ok_or_else(|| SnapshotError::Format("no tail".into()))?;
        if tail.compact_revision != NEVER_COMPACTED {
            // Valid from the compaction at the end of the stream; records
            // it made unreadable go with the compactor's next pass.
            batch.put(
                META_COMPACT_REV,
                tail.compact_revision.to_be_bytes().to_vec(),
            );
        }
        write(batch)?;
        // The image is durable before the consistent index that marks it
        // whole is written (bulk writes are not atomic). A crash here
        // leaves the whole image but no consistent index.
        store.backend().flush()?;
        crate::failpoint::hit("snapshot-install");
        let mut last = WriteBatch::new();
        last.put(
            META_CONSISTENT_INDEX,
            head.applied_index.to_be_bytes().to_vec(),
        );
        write(last)?;
        Ok(())
    })?;
    head.ok_or_else(|| SnapshotError::Format("no head".into()))
}

/// An image's pairs in strictly ascending key order, for
/// [`Store::replace_sorted`]. An image holds the records that change in
/// place (those below the revision records' prefix `k`, then those above
/// it), then the revision records in revision order, which is their key
/// order. The ones above `k` are held back (they are few: meta, leases,
/// members, auth) and come last, with the consistent index and compaction
/// revision the head and tail give. Whether the result is really in order
/// is checked by the engine, which refuses the stream otherwise.
struct SortedImage {
    frames: FrameReader,
    head: Option<SnapshotHead>,
    tail: Option<SnapshotTail>,
    /// Pairs read so far (the tail counts them).
    pairs: u64,
    /// The pairs above the revision records, until the end of the image.
    late: Vec<Pair>,
    /// Set at the end of the image: what is left of `late`.
    draining: Option<std::vec::IntoIter<Pair>>,
    /// Why the stream ended early (the engine sees a storage error).
    error: Option<SnapshotError>,
}

impl SortedImage {
    fn new(frames: FrameReader) -> SortedImage {
        SortedImage {
            frames,
            head: None,
            tail: None,
            pairs: 0,
            late: Vec::new(),
            draining: None,
            error: None,
        }
    }

    /// The next pair in key order, `None` at the end (then `late` is
    /// ready to drain).
    fn next_pair(&mut self) -> Result<Option<Pair>, SnapshotError> {
        let bad = |what: &str| SnapshotError::Format(what.to_string());
        while let Some(frame) = self.frames.next_frame()? {
            match frame {
                Frame::Head(_) if self.head.is_some() => return Err(bad("two heads")),
                Frame::Head(h) => self.head = Some(h),
                Frame::Tail(_) if self.tail.is_some() => return Err(bad("two tails")),
                Frame::Tail(t) => self.tail = Some(t),
                Frame::Pair(..) if self.head.is_none() => {
                    return Err(bad("a pair before the head"))
                }
                Frame::Pair(..) if self.tail.is_some() => return Err(bad("a pair after the tail")),
                Frame::Pair(k, v) => {
                    self.pairs += 1;
                    if k.as_slice() < REV_PREFIX || k.starts_with(REV_PREFIX) {
                        return Ok(Some((k, v)));
                    }
                    if k != META_CONSISTENT_INDEX && k != META_COMPACT_REV {
                        self.late.push((k, v));
                    }
                }
            }
        }
        let head = self.head.as_ref().ok_or_else(|| bad("no head"))?;
        let tail = self.tail.as_ref().ok_or_else(|| bad("no tail"))?;
        if tail.pairs != self.pairs {
            return Err(SnapshotError::Format(format!(
                "{} pairs where the tail says {}: the image is truncated",
                self.pairs, tail.pairs
            )));
        }
        let mut late = std::mem::take(&mut self.late);
        late.push((
            META_CONSISTENT_INDEX.to_vec(),
            head.applied_index.to_be_bytes().to_vec(),
        ));
        if tail.compact_revision != NEVER_COMPACTED {
            // Valid from the compaction at the end of the stream; records
            // it made unreadable go with the compactor's next pass.
            late.push((
                META_COMPACT_REV.to_vec(),
                tail.compact_revision.to_be_bytes().to_vec(),
            ));
        }
        late.sort_by(|a, b| a.0.cmp(&b.0));
        self.draining = Some(late.into_iter());
        Ok(None)
    }
}

impl Iterator for SortedImage {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(late) = self.draining.as_mut() {
            return late.next().map(Ok);
        }
        if self.error.is_some() {
            return None;
        }
        match self.next_pair() {
            Ok(Some(pair)) => Some(Ok(pair)),
            Ok(None) => self.draining.as_mut().and_then(|late| late.next()).map(Ok),
            Err(e) => {
                let storage = StorageError::corrupt("snapshot image", &e);
                self.error = Some(e);
                Some(Err(storage))
            }
        }
    }
}

/// Installs the kept image at `index` of `dir` (see [`install`]), makes the
/// state durable (the log no longer has the entries it covers) and only
/// then removes the image and older ones. Both the Storage actor (right
/// after the image arrived and was verified: `verify` false) and a start-up
/// that finds an unfinished install (`verify` true) come through here.
pub fn install_kept(
    store: &Store,
    dir: &SnapDir,
    index: u64,
    verify: bool,
) -> Result<SnapshotHead, SnapshotError> {
    let head = install(store, &dir.image(index), verify)?;
    store.backend().flush()?;
    dir.prune(|i| i > index);
    Ok(head)
}

/// [`install_kept`] for an image ingested while it arrived
/// ([`prepare_stream`]): committed, made durable, and the kept file (there
/// for a restart before this) removed with older ones.
pub fn commit_kept(
    store: &Store,
    dir: &SnapDir,
    index: u64,
    prepared: PreparedImage,
) -> Result<SnapshotHead, SnapshotError> {
    let head = commit_prepared(store, prepared)?;
    store.backend().flush()?;
    dir.prune(|i| i > index);
    Ok(head)
}

/// [`commit_kept`] for an image prepared and kept ([`PreparedImage::keep`])
/// before a restart: its head was not kept, so the store must come out at
/// applied index `index`.
pub fn commit_recovered(
    store: &Store,
    dir: &SnapDir,
    index: u64,
    state: PreparedState,
) -> Result<(), SnapshotError> {
    store.commit_prepared(state)?;
    if store.applied_index() != index {
        return Err(SnapshotError::Restore(format!(
            "the image kept for index {index} installed index {}",
            store.applied_index()
        )));
    }
    store.backend().flush()?;
    dir.prune(|i| i > index);
    Ok(())
}

/// `<data-dir>/member/snap`: images of the applied state that raft
/// snapshots carry, one file per applied index (`<index:016x>.snap`). A
/// follower receives one there, and removes it once installed and flushed.
/// Clones share what a leader offers (images not written to disk: their
/// heads, the revision records read as they stream, see [`OfferedImage`])
/// and what a follower prepared while receiving ([`PreparedImage`]).
#[derive(Clone)]
pub struct SnapDir {
    path: PathBuf,
    shared: Arc<parking_lot::Mutex<Shared>>,
}

/// What the clones of a [`SnapDir`] share.
#[derive(Default)]
struct Shared {
    /// Images offered to lagging members, by index; the newest two (the
    /// older may still be streaming).
    offered: Vec<(u64, Arc<OfferedImage>)>,
    /// Images a follower ingested while receiving them, by index, for the
    /// installs raft then asks Storage for (raft may have taken one and a
    /// newer arrive before Storage installed it).
    prepared: Vec<(u64, PreparedImage)>,
    /// Tells raft an offered image can no longer be sent (see
    /// [`SnapDir::retract`]).
    retract: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Shared {
    /// Removes the prepared images whose index `which` picks.
    fn take_prepared(&mut self, which: impl Fn(u64) -> bool) -> Vec<PreparedImage> {
        let (taken, kept) = std::mem::take(&mut self.prepared)
            .into_iter()
            .partition(|(i, _)| which(*i));
        self.prepared = kept;
        taken.into_iter().map(|(_, p)| p).collect()
    }
}

impl std::fmt::Debug for SnapDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SnapDir").field(&self.path).finish()
    }
}

impl SnapDir {
    /// Creates the directory if needed and removes partial files a crash
    /// left behind.
    pub fn open(member_dir: &Path) -> std::io::Result<SnapDir> {
        let dir = member_dir.join("snap");
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(SnapDir {
            path: dir,
            shared: Arc::default(),
        })
    }

    /// The image of the applied state at `index`.
    pub fn image(&self, index: u64) -> PathBuf {
        self.path.join(format!("{index:016x}.snap"))
    }

    /// Where an image from member `from` is received before it is verified.
    pub fn receiving(&self, index: u64, from: u64) -> PathBuf {
        self.path.join(format!("{index:016x}-{from:x}.tmp"))
    }

    /// The indexes of the complete images, ascending.
    pub fn images(&self) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".snap")?, 16).ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Removes every image but those `keep` says to keep.
    pub fn prune(&self, keep: impl Fn(u64) -> bool) {
        for index in self.images() {
            if !keep(index) {
                if let Err(e) = std::fs::remove_file(self.image(index)) {
                    tracing::warn!(index, cause = %e, "cannot remove an old snapshot image");
                }
            }
        }
    }

    /// Offers `image` (of the applied state at `index`) to lagging members;
    /// the newest two stay offered.
    pub fn offer(&self, index: u64, image: OfferedImage) {
        let mut s = self.shared.lock();
        s.offered.retain(|(i, _)| *i != index);
        s.offered.push((index, Arc::new(image)));
        s.offered.sort_by_key(|(i, _)| *i);
        let extra = s.offered.len().saturating_sub(2);
        s.offered.drain(..extra);
    }

    /// The image offered at `index`, if any.
    pub fn offered(&self, index: u64) -> Option<Arc<OfferedImage>> {
        let s = self.shared.lock();
        s.offered
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, image)| image.clone())
    }

    /// Every offered image is withdrawn (the state they read is replaced).
    pub fn withdraw_offers(&self) {
        self.shared.lock().offered.clear();
    }

    /// The image offered at `index` can no longer be streamed (a compaction
    /// passed its revision before it was read): it is withdrawn, and raft
    /// told, so that it asks for a new one instead of sending this again.
    pub fn retract(&self, index: u64) {
        let tell = {
            let mut s = self.shared.lock();
            s.offered.retain(|(i, _)| *i != index);
            s.retract.clone()
        };
        if let Some(tell) = tell {
            tell(index);
        }
    }

    /// Who [`SnapDir::retract`] tells (the raft log, which offers images to raft-rs).
    pub fn on_retract(&self, tell: impl Fn(u64) + Send + Sync + 'static) {
        self.shared.lock().retract = Some(Arc::new(tell));
    }

    /// Holds an image ingested while it was received (whole, its hash
    /// checked) for the install at `index`; one held for the same index
    /// before is dropped.
    pub fn set_prepared(&self, index: u64, prepared: PreparedImage) {
        let old = {
            let mut s = self.shared.lock();
            let old = s.take_prepared(|i| i == index);
            s.prepared.push((index, prepared));
            old
        };
        // Dropped outside the lock: this removes their partitions.
        drop(old);
    }

    /// The image prepared for the install at `index`; older ones are
    /// dropped (newer ones stay: raft installs them next).
    pub fn take_prepared(&self, index: u64) -> Option<PreparedImage> {
        let (mut taken, older) = {
            let mut s = self.shared.lock();
            (
                s.take_prepared(|i| i == index),
                s.take_prepared(|i| i < index),
            )
        };
        drop(older);
        taken.pop()
    }

    /// Drops the prepared images at or below `applied`: raft can no longer
    /// install them.
    pub fn drop_prepared_upto(&self, applied: u64) {
        let old = self.shared.lock().take_prepared(|i| i <= applied);
        drop(old);
    }
}

/// An image a leader offers lagging members: the head taken between two
/// applied batches; the revision records are read from the store as the
/// image streams ([`write_image`]), so nothing is written to disk first.
pub struct OfferedImage {
    pub store: Arc<Store>,
    pub head: ImageHead,
    pub cluster_id: u64,
    pub member_id: u64,
}

impl OfferedImage {
    /// Whether the image can still be read whole: a compaction past its
    /// revision removed records it needs.
    pub fn stale(&self) -> bool {
        self.store.compact_revision() > self.head.revision
    }

    /// Streams the image to `emit` (see [`write_image`]); blocking.
    pub fn write(&self, emit: impl FnMut(Vec<u8>, bool) -> bool) -> Result<(), SnapshotError> {
        write_image(
            &self.store,
            self.head.clone(),
            (self.cluster_id, self.member_id),
            ImageHash::Xxh3,
            emit,
        )
    }
}

/// `cairn snapshot …`: the offline snapshot tools (etcdutl's `snapshot
/// restore` and `snapshot status`, with the same flags and outputs).
pub mod cli {
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    /// The variable that names the state engine, as for the server.
    const ENGINE_ENV: &str = "CAIRN_BACKEND_ENGINE";

    use super::{restore, status, RestoreOptions};

    #[derive(Parser)]
    #[command(
        name = "cairn snapshot",
        about = "Restores or inspects a cairn snapshot file"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Builds a new member's data dir from a snapshot file.
        Restore {
            file: PathBuf,
            #[arg(long, default_value = "default")]
            name: String,
            /// Defaults to `<name>.cairn`.
            #[arg(long)]
            data_dir: Option<PathBuf>,
            #[arg(long, default_value = "default=http://localhost:2380")]
            initial_cluster: String,
            #[arg(long, default_value = "etcd-cluster")]
            initial_cluster_token: String,
            #[arg(long, default_value = "http://localhost:2380")]
            initial_advertise_peer_urls: String,
            /// Restore a file whose hash does not check (as etcd's flag).
            #[arg(long)]
            skip_hash_check: bool,
            /// The new data dir's state engine: sled or fjall (cairn only;
            /// also CAIRN_BACKEND_ENGINE) [default: fjall].
            #[arg(long, value_parser = crate::mvcc::Engine::parse)]
            backend_engine: Option<crate::mvcc::Engine>,
        },
        /// Prints a snapshot file's hash, revision, records and size.
        Status {
            file: PathBuf,
            /// simple, table or json (etcdctl's -w).
            #[arg(short = 'w', long = "write-out", default_value = "simple")]
            write_out: String,
        },
    }

    /// go-humanize's Bytes, which etcdctl prints sizes with: SI units.
    pub fn human_bytes(n: u64) -> String {
        const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
        if n < 10 {
            return format!("{n} B");
        }
        let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
        let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
        if val < 10.0 {
            format!("{val:.1} {}", UNITS[e])
        } else {
            format!("{val:.0} {}", UNITS[e])
        }
    }

    /// Runs the tool on `args` (after `cairn snapshot`); returns the exit code.
    pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() { 2 } else { 0 };
            }
        };
        match cli.command {
            Command::Status { file, write_out } => match status(&file) {
                Ok(s) => {
                    let hash = format!("{:x}", s.hash);
                    let size = human_bytes(s.total_size);
                    match write_out.as_str() {
                        "json" => println!(
                            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
                            s.hash, s.revision, s.total_keys, s.total_size
                        ),
                        "table" => {
                            let cells =
                                [hash, s.revision.to_string(), s.total_keys.to_string(), size];
                            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                            let widths: Vec<usize> = heads
                                .iter()
                                .zip(&cells)
                                .map(|(h, c)| h.len().max(c.len()) + 2)
                                .collect();
                            let rule: String = widths
                                .iter()
                                .map(|w| format!("+{}", "-".repeat(*w)))
                                .collect::<String>()
                                + "+";
                            let center = |t: &str, w: usize| {
                                let left = (w - t.len()) / 2;
                                format!(
                                    "{}{}{}",
                                    " ".repeat(left),
                                    t,
                                    " ".repeat(w - t.len() - left)
                                )
                            };
                            println!("{rule}");
                            println!(
                                "|{}|",
                                heads
                                    .iter()
                                    .zip(&widths)
                                    .map(|(h, w)| center(h, *w))
                                    .collect::<Vec<_>>()
                                    .join("|")
                            );
                            println!("{rule}");
                            println!(
                                "|{}|",
                                cells
                                    .iter()
                                    .zip(&widths)
                                    .map(|(c, w)| format!(" {c:<width$} ", width = w - 2))
                                    .collect::<Vec<_>>()
                                    .join("|")
                            );
                            println!("{rule}");
                        }
                        "simple" => println!("{hash}, {}, {}, {size}", s.revision, s.total_keys),
                        other => {
                            eprintln!(
                                "Error: unsupported output format {other:?} (simple, table, json)"
                            );
                            return 2;
                        }
                    }
                    0
                }
                Err(e) => {
                    eprintln!("Error: {}: {e}", file.display());
                    1
                }
            },
            Command::Restore {
                file,
                name,
                data_dir,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                skip_hash_check,
                backend_engine,
            } => {
                let parsed = crate::config::parse_initial_cluster(&initial_cluster)
                    .map_err(|e| format!("--initial-cluster: {e}"))
                    .and_then(|cluster| {
                        crate::config::parse_url_list(&initial_advertise_peer_urls)
                            .map_err(|e| format!("--initial-advertise-peer-urls: {e}"))
                            .map(|urls| (cluster, urls))
                    });
                let (initial_cluster, initial_advertise_peer_urls) = match parsed {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return 2;
                    }
                };
                let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.cairn")));
                // As for the server, the variable stands in for the flag.
                let backend_engine = match (backend_engine, std::env::var(ENGINE_ENV)) {
                    (Some(e), _) => Some(e),
                    (None, Ok(v)) => match crate::mvcc::Engine::parse(&v) {
                        Ok(e) => Some(e),
                        Err(e) => {
                            eprintln!("Error: {ENGINE_ENV}: {e}");
                            return 2;
                        }
                    },
                    (None, Err(_)) => None,
                };
                let opts = RestoreOptions {
                    name,
                    data_dir,
                    initial_cluster,
                    initial_cluster_token,
                    initial_advertise_peer_urls,
                    skip_hash_check,
                    backend_engine,
                };
                match restore(&file, &opts) {
                    Ok(revision) => {
                        println!(
                            "restored snapshot {} (revision {revision}) into {} as member {}",
                            file.display(),
                            opts.data_dir.display(),
                            opts.name
                        );
                        0
                    }
                    Err(e) => {
                        eprintln!("Error: {e}");
                        1
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::human_bytes;

        #[test]
        fn sizes_print_as_etcdctl_prints_them() {
            for (n, want) in [
                (5, "5 B"),
                (25_000, "25 kB"),
                (2_101_248, "2.1 MB"),
                (999, "999 B"),
            ] {
                assert_eq!(human_bytes(n), want);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyRange, MemBackend};
    use crate::proto::etcdserverpb::RangeRequest;

    fn store() -> Store {
        Store::open(Arc::new(MemBackend::new())).expect("open")
    }

    /// Writes an image of `store` to `path` whole (what a leader streams).
    fn save_image(
        store: &Store,
        head: ImageHead,
        cluster_id: u64,
        member_id: u64,
        path: &Path,
    ) -> Result<(), SnapshotError> {
        let mut image = Vec::new();
        let ids = (cluster_id, member_id);
        write_image(store, head, ids, ImageHash::Sha256, |chunk, _| {
            image.extend_from_slice(&chunk);
            true
        })?;
        let (dir, name) = (path.parent().expect("dir"), path.file_name().expect("name"));
        crate::mvcc::replace_file_durably(dir, &name.to_string_lossy(), &image)?;
        Ok(())
    }

    /// One batch, one transaction; deletes when `v` is None.
    fn write(s: &Store, ops: &[(&str, Option<&str>)]) {
        let mut w = BatchWriter::new(s);
        let mut t = w.txn();
        for (k, v) in ops {
            match v {
                Some(v) => {
                    t.put(k.as_bytes(), v.as_bytes(), 0);
                }
                None => {
                    t.delete_range(&KeyRange::new(k.as_bytes(), b""))
                        .expect("delete");
                }
            }
        }
        t.commit();
        w.commit(s.applied_index() + 1).expect("commit");
    }

    fn compact(s: &Store, rev: i64) {
        let mut w = BatchWriter::new(s);
        w.compact(rev).expect("compact");
        w.commit(s.applied_index() + 1).expect("commit");
        s.wait_compacted(rev);
    }

    /// Key, value, create, mod revision and version of each live key.
    type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

    /// `follower` reads as `leader` at every revision from `compacted` on,
    /// and, once its compaction is done, hashes the same.
    fn same_since(follower: &Store, leader: &Store, compacted: i64) {
        for rev in compacted..=leader.current_revision() {
            assert_eq!(all_at(follower, rev), all_at(leader, rev), "at {rev}");
        }
        follower.wait_compacted(compacted);
        assert_eq!(
            follower.hash_kv(0).expect("hash"),
            leader.hash_kv(0).expect("hash")
        );
    }

    fn all_at(s: &Store, rev: i64) -> Vec<Row> {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        s.range(&req)
            .expect("range")
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    kv.value,
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                )
            })
            .collect()
    }

    /// A member far behind its leader installs the leader's image over
    /// its own state: afterwards it reads, hashes and goes on exactly as
    /// the leader, at every revision the leader still serves, and the
    /// records the leader had compacted away are gone from it too.
    #[test]
    fn an_installed_image_replaces_the_whole_state() {
        let leader = store();
        let follower = store();
        // Shared history: the follower applied its first three batches.
        for s in [&leader, &follower] {
            write(s, &[("a", Some("1")), ("b", Some("1"))]);
            write(s, &[("a", Some("2"))]);
            write(s, &[("c", Some("1"))]);
        }
        // The leader goes on: deletes, a compaction, more writes.
        write(&leader, &[("b", None)]);
        write(&leader, &[("a", Some("3")), ("d", Some("1"))]);
        let compacted = leader.current_revision();
        compact(&leader, compacted);
        write(&leader, &[("e", Some("1"))]);
        write(&leader, &[("a", Some("4"))]);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.snap");
        let head = capture_head(&leader).expect("head");
        save_image(&leader, head, 1, 2, &path).expect("save");

        let installed = install(&follower, &path, true).expect("install");
        assert_eq!(installed.revision, leader.current_revision());
        assert_eq!(follower.current_revision(), leader.current_revision());
        assert_eq!(follower.applied_index(), leader.applied_index());
        assert_eq!(follower.compact_revision(), leader.compact_revision());
        same_since(&follower, &leader, compacted);
        let records = |s: &Store| {
            s.backend()
                .scan_prefix(REV_PREFIX)
                .map(|r| r.expect("scan").0)
                .collect::<Vec<_>>()
        };
        assert_eq!(records(&follower), records(&leader));
        // The index the install replayed as the records went in is the one
        // a restart rebuilds by scanning them.
        let reopened = Store::open(follower.backend().clone()).expect("reopen");
        for rev in compacted..=leader.current_revision() {
            assert_eq!(all_at(&reopened, rev), all_at(&follower, rev), "at {rev}");
        }

        // Both go on alike.
        for s in [&leader, &follower] {
            write(s, &[("f", Some("1")), ("a", None)]);
        }
        assert_eq!(all_at(&follower, 0), all_at(&leader, 0));
        assert_eq!(
            follower.hash_kv(0).expect("hash"),
            leader.hash_kv(0).expect("hash")
        );
    }

    /// A damaged image is refused and the state is left as it was.
    #[test]
    fn a_damaged_image_is_not_installed() {
        let leader = store();
        write(&leader, &[("a", Some("1"))]);
        let follower = store();
        write(&follower, &[("z", Some("9"))]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.snap");
        save_image(&leader, capture_head(&leader).expect("head"), 1, 2, &path).expect("save");
        let mut bytes = std::fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        assert!(matches!(
            install(&follower, &path, true),
            Err(SnapshotError::HashMismatch)
        ));
        assert_eq!(all_at(&follower, 0)[0].0, b"z".to_vec());
    }

    /// Both hashes: an image verifies in chunks of any size, and a flipped
    /// byte anywhere (the preamble, the body, the hash) or a cut is caught.
    #[test]
    fn an_image_is_verified_as_it_streams_in_chunks_of_any_size() {
        let leader = store();
        for i in 0..200 {
            write(&leader, &[(&format!("k{i}"), Some("some value"))]);
        }
        let streamed = |bytes: &[u8], sizes: &[usize]| {
            let mut v = StreamVerifier::default();
            let (mut at, mut i) = (0, 0);
            while at < bytes.len() {
                let n = sizes[i % sizes.len()].min(bytes.len() - at);
                v.update(&bytes[at..at + n]);
                at += n;
                i += 1;
            }
            v.finish()
        };
        for hash in [ImageHash::Sha256, ImageHash::Xxh3] {
            let head = capture_head(&leader).expect("head");
            let mut bytes = Vec::new();
            write_image(&leader, head, (1, 2), hash, |chunk, _| {
                bytes.extend_from_slice(&chunk);
                true
            })
            .expect("image");
            assert_eq!(ImageHash::of_preamble(&bytes).expect("preamble"), hash);
            for sizes in [&[1usize][..], &[7, 31, 32, 33], &[4096], &[bytes.len()]] {
                streamed(&bytes, sizes).expect("a whole image verifies");
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("image.snap");
            std::fs::write(&path, &bytes).expect("write");
            verify(&path).expect("the file verifies");
            for at in [0, 9, 11, bytes.len() / 2, bytes.len() - 33, bytes.len() - 1] {
                let mut bad = bytes.clone();
                bad[at] ^= 0x01;
                let refused = streamed(&bad, &[7, 4096]);
                assert!(
                    refused.is_err(),
                    "{hash:?}: a flipped byte at {at} went unnoticed"
                );
                if at >= PREAMBLE_LEN {
                    assert!(
                        matches!(refused, Err(SnapshotError::HashMismatch)),
                        "{hash:?} at {at}"
                    );
                }
                std::fs::write(&path, &bad).expect("write");
                assert!(verify(&path).is_err(), "{hash:?}: the file's byte {at}");
            }
            assert!(streamed(&bytes[..bytes.len() - 1], &[4096]).is_err());
            assert!(streamed(&bytes[..20], &[4096]).is_err());
            assert!(streamed(&bytes[..5], &[4096]).is_err());
        }
    }

    /// A follower on fjall behind the write buffer, as a member runs it.
    fn fjall_store(dir: &Path) -> Store {
        let engine: Arc<dyn Backend> =
            Arc::new(crate::mvcc::FjallBackend::open(dir, 8 << 20).expect("open fjall"));
        let buffered = crate::mvcc::BufferedBackend::new(engine).expect("buffered");
        Store::open(Arc::new(buffered)).expect("open")
    }

    /// The head, pairs and tail of an image file.
    fn decode_image(path: &Path) -> (SnapshotHead, Vec<Pair>, SnapshotTail) {
        let (mut head, mut pairs, mut tail) = (None, Vec::new(), None);
        read_frames(path, |f| {
            match f {
                Frame::Head(h) => head = Some(h),
                Frame::Pair(k, v) => pairs.push((k, v)),
                Frame::Tail(t) => tail = Some(t),
            }
            Ok(())
        })
        .expect("frames");
        (head.expect("head"), pairs, tail.expect("tail"))
    }

    /// Writes an image of these frames, with a matching hash.
    fn encode_image(path: &Path, head: &SnapshotHead, pairs: &[Pair], tail: Option<&SnapshotTail>) {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&ImageHash::Sha256.version().to_be_bytes());
        frame(&mut out, TAG_HEAD, &head.encode_to_vec());
        for (k, v) in pairs {
            pair(&mut out, k, v);
        }
        if let Some(t) = tail {
            frame(&mut out, TAG_TAIL, &t.encode_to_vec());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        std::fs::write(path, out).expect("write image");
    }

    /// On fjall the image is ingested into a new partition that takes the
    /// old one's place: the member then reads and hashes as the leader,
    /// and so does a restart of it, writes after the install included.
    #[test]
    fn on_fjall_an_image_is_ingested_and_survives_a_restart() {
        let leader = store();
        write(&leader, &[("a", Some("1")), ("b", Some("1"))]);
        write(&leader, &[("b", None)]);
        write(&leader, &[("a", Some("2")), ("c", Some("1"))]);
        let compacted = leader.current_revision();
        compact(&leader, compacted);
        write(&leader, &[("d", Some("1"))]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.snap");
        save_image(&leader, capture_head(&leader).expect("head"), 1, 2, &path).expect("save");

        let state = dir.path().join("state-fjall");
        {
            let follower = fjall_store(&state);
            write(&follower, &[("z", Some("old"))]);
            install(&follower, &path, true).expect("install");
            assert_eq!(follower.applied_index(), leader.applied_index());
            assert_eq!(follower.compact_revision(), compacted);
            same_since(&follower, &leader, compacted);
            for s in [&leader, &follower] {
                write(s, &[("e", Some("1"))]);
            }
        }
        let reopened = fjall_store(&state);
        assert_eq!(reopened.current_revision(), leader.current_revision());
        assert_eq!(reopened.applied_index(), leader.applied_index());
        assert_eq!(all_at(&reopened, 0), all_at(&leader, 0));
        assert_eq!(
            reopened.hash_kv(0).expect("hash"),
            leader.hash_kv(0).expect("hash")
        );
    }

    /// On fjall, an image whose pairs are out of order, that ends early
    /// or that is damaged is refused with an error (fjall's ingest would
    /// panic on disorder), and the member's state, in memory and after a
    /// restart, is the one it had.
    #[test]
    fn on_fjall_a_bad_image_is_refused_and_the_old_state_stays() {
        let leader = store();
        for i in 0..20 {
            write(&leader, &[(&format!("k{i:02}"), Some("v"))]);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.snap");
        save_image(&leader, capture_head(&leader).expect("head"), 1, 2, &good).expect("save");
        let (head, pairs, tail) = decode_image(&good);
        let first_rev = pairs
            .iter()
            .position(|(k, _)| k.starts_with(REV_PREFIX))
            .expect("revision records");

        let mut swapped = pairs.clone();
        swapped.swap(first_rev + 3, first_rev + 7);
        // A record that changes in place, below the revision records' prefix,
        // after them.
        let mut late_meta = pairs.clone();
        late_meta.push((b"a/late".to_vec(), Vec::new()));
        let mut doubled = pairs.clone();
        doubled.insert(first_rev + 1, pairs[first_rev].clone());
        let cut = pairs[..pairs.len() - 5].to_vec();
        let counted = |p: &[Pair]| SnapshotTail {
            pairs: p.len() as u64,
            ..tail
        };
        /// An image that must be refused, and a word of the error.
        struct Case {
            what: &'static str,
            why: &'static str,
            pairs: Vec<Pair>,
            tail: Option<SnapshotTail>,
        }
        let cases = [
            Case {
                what: "revision records swapped",
                why: "order",
                tail: Some(counted(&swapped)),
                pairs: swapped,
            },
            Case {
                what: "a meta record last",
                why: "order",
                tail: Some(counted(&late_meta)),
                pairs: late_meta,
            },
            Case {
                what: "a record twice",
                why: "order",
                tail: Some(counted(&doubled)),
                pairs: doubled,
            },
            Case {
                what: "cut before its tail",
                why: "no tail",
                pairs: cut.clone(),
                tail: None,
            },
            Case {
                what: "fewer pairs than its tail says",
                why: "truncated",
                pairs: cut,
                tail: Some(tail),
            },
        ];

        let state = dir.path().join("state-fjall");
        let old = {
            let follower = fjall_store(&state);
            write(&follower, &[("z", Some("old"))]);
            let old = (all_at(&follower, 0), follower.applied_index());
            for Case {
                what,
                why,
                pairs,
                tail,
            } in &cases
            {
                let path = dir.path().join("bad.snap");
                encode_image(&path, &head, pairs, tail.as_ref());
                match install(&follower, &path, true) {
                    Ok(_) => panic!("{what}: installed"),
                    Err(e) => assert!(e.to_string().contains(why), "{what}: {e}"),
                }
                assert_eq!(
                    (all_at(&follower, 0), follower.applied_index()),
                    old,
                    "{what}"
                );
            }
            // A file cut short: its hash is refused, and without the hash
            // check (as after streaming) the frames are.
            let bytes = std::fs::read(&good).expect("read");
            let path = dir.path().join("short.snap");
            std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
            for verify in [true, false] {
                assert!(
                    install(&follower, &path, verify).is_err(),
                    "verify {verify}"
                );
                assert_eq!((all_at(&follower, 0), follower.applied_index()), old);
            }
            // The store still takes writes.
            write(&follower, &[("y", Some("1"))]);
            (all_at(&follower, 0), follower.applied_index())
        };
        let reopened = fjall_store(&state);
        assert_eq!((all_at(&reopened, 0), reopened.applied_index()), old);
        // The good image still installs after all that.
        install(&reopened, &good, true).expect("install");
        assert_eq!(all_at(&reopened, 0), all_at(&leader, 0));
    }

    /// The bytes of an image of `leader`, as a leader streams it.
    fn offered_bytes(leader: &Arc<Store>) -> Vec<u8> {
        let image = OfferedImage {
            store: leader.clone(),
            head: capture_head(leader).expect("head"),
            cluster_id: 1,
            member_id: 2,
        };
        let mut bytes = Vec::new();
        image
            .write(|chunk, _| {
                bytes.extend_from_slice(&chunk);
                true
            })
            .expect("write");
        bytes
    }

    /// Feeds `bytes` to [`prepare_stream`] in chunks of `size`, through a
    /// channel of one slot, as the peer service does.
    fn prepare_from(
        store: &Arc<Store>,
        bytes: &[u8],
        size: usize,
    ) -> Result<PreparedImage, SnapshotError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let s = store.clone();
        let job = std::thread::spawn(move || prepare_stream(&s, rx));
        // As the peer service does: the whole stream is verified too, and
        // what the ingest made is used only if it checks.
        let mut verifier = StreamVerifier::default();
        for chunk in bytes.chunks(size) {
            verifier.update(chunk);
            // A closed channel: the ingest ended (at the padding, or early).
            let _ = tx.blocking_send(chunk.to_vec());
        }
        drop(tx);
        let prepared = job.join().expect("the ingest thread")?;
        verifier.finish()?;
        Ok(prepared)
    }

    /// A leader's image, streamed as it is read from its store, is
    /// ingested by a follower while it arrives, beside the follower's
    /// state: the follower reads its old state (and takes writes) until
    /// the commit, then reads, hashes and restarts as the leader.
    #[test]
    fn a_streamed_image_is_ingested_beside_the_state_and_committed_in_one_step() {
        let leader = Arc::new(store());
        for i in 0..300 {
            write(&leader, &[(&format!("k{:03}", i % 120), Some("value"))]);
        }
        write(&leader, &[("k007", None)]);
        let compacted = leader.current_revision() - 50;
        compact(&leader, compacted);
        write(&leader, &[("z", Some("last"))]);
        let bytes = offered_bytes(&leader);
        let mut verifier = StreamVerifier::default();
        verifier.update(&bytes);
        verifier.finish().expect("the streamed image verifies");

        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state-fjall");
        {
            let follower = Arc::new(fjall_store(&state));
            write(&follower, &[("old", Some("1"))]);
            for size in [1000, 7, 1 << 20] {
                let prepared = prepare_from(&follower, &bytes, size).expect("prepare");
                assert_eq!(prepared.applied_index(), leader.applied_index());
                // Not the state yet: it reads and writes as before.
                assert_eq!(all_at(&follower, 0)[0].0, b"old".to_vec());
                write(&follower, &[("old", Some("2"))]);
                if size != 1 << 20 {
                    // Dropped (a hash that did not check): nothing changes.
                    drop(prepared);
                    continue;
                }
                let head = commit_prepared(&follower, prepared).expect("commit");
                assert_eq!(head.revision, leader.current_revision());
            }
            assert_eq!(follower.applied_index(), leader.applied_index());
            same_since(&follower, &leader, compacted);
        }
        let reopened = fjall_store(&state);
        assert_eq!(reopened.applied_index(), leader.applied_index());
        assert_eq!(all_at(&reopened, 0), all_at(&leader, 0));
    }

    /// A stream cut anywhere, or damaged, is refused (never a panic, never
    /// a huge allocation from a damaged length), the follower keeps its
    /// state, in memory and across a restart, and the whole image then
    /// goes in.
    #[test]
    fn a_cut_or_damaged_stream_leaves_the_old_state_and_a_retry_succeeds() {
        let leader = Arc::new(store());
        for i in 0..200 {
            write(&leader, &[(&format!("k{i:03}"), Some("some value"))]);
        }
        let bytes = offered_bytes(&leader);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state-fjall");
        let old = {
            let follower = Arc::new(fjall_store(&state));
            write(&follower, &[("old", Some("1"))]);
            let old = (all_at(&follower, 0), follower.applied_index());
            for cut in [
                0,
                5,
                12,
                40,
                bytes.len() / 3,
                bytes.len() - 33,
                bytes.len() - 1,
            ] {
                let r = prepare_from(&follower, &bytes[..cut], 4096);
                assert!(
                    r.is_err(),
                    "a stream cut at {cut} of {} was taken",
                    bytes.len()
                );
                assert_eq!((all_at(&follower, 0), follower.applied_index()), old);
            }
            // Cut at a frame boundary (as if the frames were all there
            // and the last 32 bytes the hash): refused for want of a tail.
            let mut boundaries = Vec::new();
            let mut at = 12;
            while at + 5 <= bytes.len() - HASH_LEN {
                let len = u32::from_be_bytes([
                    bytes[at + 1],
                    bytes[at + 2],
                    bytes[at + 3],
                    bytes[at + 4],
                ]);
                at += 5 + len as usize;
                boundaries.push(at);
            }
            for b in [boundaries[1], boundaries[boundaries.len() / 2]] {
                let mut cut = bytes[..b].to_vec();
                cut.extend_from_slice(&[0u8; HASH_LEN]);
                assert!(
                    prepare_from(&follower, &cut, 4096).is_err(),
                    "a stream cut after the frame ending at {b} was taken"
                );
                assert_eq!((all_at(&follower, 0), follower.applied_index()), old);
            }
            // A frame length damaged into a huge one (the first pair's,
            // after the 12-byte preamble and the head frame).
            let head_len =
                u32::from_be_bytes([bytes[13], bytes[14], bytes[15], bytes[16]]) as usize;
            let first_pair = 12 + 5 + head_len;
            let mut huge = bytes.clone();
            huge[first_pair + 1..first_pair + 5].copy_from_slice(&u32::MAX.to_be_bytes());
            assert!(prepare_from(&follower, &huge, 4096).is_err());
            assert_eq!((all_at(&follower, 0), follower.applied_index()), old);
            old
        };
        let follower = Arc::new(fjall_store(&state));
        assert_eq!((all_at(&follower, 0), follower.applied_index()), old);
        let prepared = prepare_from(&follower, &bytes, 4096).expect("the retry");
        commit_prepared(&follower, prepared).expect("commit");
        assert_eq!(all_at(&follower, 0), all_at(&leader, 0));
    }

    /// An offered image a compaction has passed can no longer be read
    /// whole: it says so before a byte is sent, and its stream fails.
    #[test]
    fn an_offered_image_overtaken_by_a_compaction_is_stale() {
        let leader = Arc::new(store());
        write(&leader, &[("a", Some("1"))]);
        write(&leader, &[("a", Some("2"))]);
        let image = OfferedImage {
            store: leader.clone(),
            head: capture_head(&leader).expect("head"),
            cluster_id: 1,
            member_id: 2,
        };
        assert!(!image.stale());
        write(&leader, &[("a", Some("3"))]);
        compact(&leader, leader.current_revision());
        assert!(image.stale());
        assert!(matches!(
            image.write(|_, _| true),
            Err(SnapshotError::Raced { .. })
        ));
        // A SnapDir keeps the newest two offers and drops a retracted one.
        let dir = tempfile::tempdir().expect("tempdir");
        let snaps = SnapDir::open(dir.path()).expect("snap dir");
        let told = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let t = told.clone();
        snaps.on_retract(move |i| t.lock().push(i));
        for index in [3, 1, 2] {
            snaps.offer(
                index,
                OfferedImage {
                    store: leader.clone(),
                    head: capture_head(&leader).expect("head"),
                    cluster_id: 1,
                    member_id: 2,
                },
            );
        }
        assert!(snaps.offered(1).is_none());
        assert!(snaps.offered(2).is_some() && snaps.offered(3).is_some());
        snaps.retract(3);
        assert!(snaps.offered(3).is_none());
        assert_eq!(*told.lock(), vec![3]);
    }
}
