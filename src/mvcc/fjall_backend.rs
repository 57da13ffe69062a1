//! The state store on fjall (a maintained, pure-Rust LSM tree), the
//! alternative to sled behind the same [`Backend`] trait, chosen with
//! `--backend-engine fjall` (docs/storage.md, "The engine").
//!
//! One keyspace with one partition holds every pair, so a [`WriteBatch`] is
//! one fjall batch: written to fjall's journal as a unit, so a crash leaves
//! all of it or none (journal recovery drops a torn batch). Each commit
//! hands the journal to the OS (`PersistMode::Buffer`: a kill -9 loses
//! nothing); [`Backend::flush`] fsyncs it.
//!
//! Space: a delete is a tombstone until compaction merges it with what it
//! covers. fjall compacts in the background (leveled); [`Backend::defragment`]
//! writes the memtable out and runs a major compaction, which drops every
//! deleted or overwritten pair and the tombstones, while the member keeps
//! serving (no copy, no swap). Both free the files they replace through the
//! trash keeper ([`trash`]): every segment file has a second name, so
//! fjall's deletion under its locks only drops a name, and the keeper's
//! thread frees the blocks.
//!
//! **Replacing the whole state** (a raft snapshot install,
//! [`Backend::bulk_replace`]): the sorted pairs are ingested straight into
//! SST files of a new, empty partition (fjall's `ingest`: no journal, no
//! memtable), which then takes the old one's place. Partitions are
//! generations, `cairn-mvcc` (0), `cairn-mvcc-1`, `cairn-mvcc-2`, …; an
//! ingest registers all its files in the partition's manifest in one atomic
//! step at its end, so a partition is either empty or holds the whole
//! stream. Opening picks the highest generation that holds anything (else
//! generation 0) and deletes the others: a crash before the ingest ended
//! leaves the old state, after it the complete new one.
//!
//! A prepared generation can also be **kept** across a restart
//! ([`Backend::keep_prepared`]): a raft snapshot ingested while it arrived
//! is made durable and named in a marker file before raft takes it, so a
//! restart between raft's persist and the commit finds it and commits it
//! (no copy of the image is written as a file). Opening keeps every marked
//! generation newer than the current one and hands them out through
//! [`Backend::kept_prepared`].
//!
//! ```text
//! state-fjall/partitions/cairn-mvcc      generation 0, a new member's
//! state-fjall/partitions/cairn-mvcc-<n>  the state after the n-th install
//! state-fjall/cairn-prepared-<n>         generation n is kept: the raft index it is of
//! ```
//!
//! The backend conformance suite (`mvcc::backend::tests`) runs on it alone
//! and behind the write buffer, as on sled.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{AbstractTree as _, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use parking_lot::RwLock;

use super::backend::{Backend, BulkPairs, PreparedReplace, ScanIter, WriteBatch};
use crate::error::StorageError;
use trash::TrashKeeper;

mod trash;

/// The partition holding cairn's state in generation 0 (the name is
/// fjall's directory); generation n > 0 is `cairn-mvcc-<n>`.
const PARTITION: &str = "cairn-mvcc";

/// The partition name of generation `generation`.
fn partition_name(generation: u64) -> String {
    if generation == 0 {
        PARTITION.to_string()
    } else {
        format!("{PARTITION}-{generation}")
    }
}

/// The generation a partition name stands for (`None`: not cairn's).
fn generation_of(name: &str) -> Option<u64> {
    if name == PARTITION {
        return Some(0);
    }
    name.strip_prefix(PARTITION)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|g| *g > 0)
}

/// fjall keeps journals until the memtables they cover are written out; its
/// default allows 512 MiB of them in the state directory. 64 MiB bounds the
/// journals at a few memtables' worth.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// The size of the segment files a major compaction writes. fjall fsyncs
/// each segment once, when it is complete, and until then the kernel holds
/// its pages dirty (writeback starts at 10 % of RAM); so each fsync pushes
/// a whole segment to the disk at once, and a raft log fdatasync that
/// arrives meanwhile waits behind it. At fjall's 64 MiB that is ~100 ms on
/// the benchmark machine's disk, the put stalls of docs/storage.md
/// ("Session 12"); at 16 MiB a quarter of it. The leveled compactions that
/// follow keep their own 64 MiB target.
const MAJOR_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A fjall keyspace holding one partition (of the current generation).
pub struct FjallBackend {
    /// For batches, `persist` and the size (journals included).
    keyspace: Keyspace,
    /// Every key lives here, and its generation. Replaced whole by
    /// [`Backend::bulk_replace`] (the store keeps every reader and writer
    /// out meanwhile); a lock, because readers on other threads clone it.
    part: RwLock<(PartitionHandle, u64)>,
    /// The generation the next install fills (never one used before in
    /// this keyspace, so its partition starts empty, as fjall's ingest
    /// requires).
    next_generation: AtomicU64,
    /// The keyspace's directory, for its size.
    path: PathBuf,
    /// The prepared generations kept across the last restart, with their
    /// tags, until [`Backend::kept_prepared`] hands them out.
    kept: parking_lot::Mutex<Vec<(u64, PreparedReplace)>>,
    /// Keeps a second name for every segment file, so that fjall's
    /// compactions free no file's blocks under its locks (see [`trash`]).
    trash: TrashKeeper,
}

impl FjallBackend {
    /// Opens (or creates) the keyspace in directory `path`, with a block
    /// cache of `cache_bytes` (the same budget sled's page cache gets).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<FjallBackend, StorageError> {
        // Left by the previous run: only second names of files.
        trash::empty_at_open(path)?;
        let keyspace = fjall::Config::new(path)
            .cache_size(cache_bytes)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .open()?;
        let (part, generation, next, kept) = current_generation(&keyspace, path)?;
        // The journal of a new keyspace is empty until the first write;
        // Status.dbSize must never read 0 (as with sled), so force it out.
        keyspace.persist(PersistMode::SyncAll)?;
        Ok(FjallBackend {
            keyspace,
            part: RwLock::new((part, generation)),
            next_generation: AtomicU64::new(next),
            path: path.to_path_buf(),
            kept: parking_lot::Mutex::new(kept),
            trash: TrashKeeper::start(path)?,
        })
    }

    /// The current partition (a cheap handle: fjall's are reference-counted).
    fn part(&self) -> PartitionHandle {
        self.part.read().0.clone()
    }
}

/// The file in the keyspace's directory naming the current generation
/// (decimal; no file: generation 0). Rewriting it is what makes an install
/// take effect.
const GENERATION_FILE: &str = "cairn-generation";

/// The generation the keyspace in `path` names as current.
fn read_generation(path: &Path) -> Result<u64, StorageError> {
    match std::fs::read_to_string(path.join(GENERATION_FILE)) {
        Ok(text) => text.trim().parse().map_err(|_| {
            StorageError::corrupt(
                "fjall state generation",
                format!("{text:?} is not a number"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Names `generation` as current, durably (temporary file, fsync, rename,
/// fsync of the directory): the commit point of an install.
fn write_generation(path: &Path, generation: u64) -> Result<(), StorageError> {
    super::replace_file_durably(path, GENERATION_FILE, generation.to_string().as_bytes())
}

/// Names of the marker files of kept prepared generations: the prefix,
/// then the generation; the file holds the tag (decimal).
const KEPT_PREFIX: &str = "cairn-prepared-";

fn kept_marker(generation: u64) -> String {
    format!("{KEPT_PREFIX}{generation}")
}

/// The tags of the kept generations the markers in `path` name.
fn kept_markers(path: &Path) -> Result<std::collections::HashMap<u64, u64>, StorageError> {
    let mut kept = std::collections::HashMap::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_prefix(KEPT_PREFIX)) else {
            continue;
        };
        if name.ends_with(".tmp") {
            // A marker a crash cut short: its generation is not kept.
            std::fs::remove_file(entry.path())?;
            continue;
        }
        let Ok(generation) = name.parse::<u64>() else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path())?;
        let tag = text.trim().parse().map_err(|_| {
            StorageError::corrupt("fjall kept state", format!("{text:?} is not a number"))
        })?;
        kept.insert(generation, tag);
    }
    Ok(kept)
}

/// What [`current_generation`] found.
type Generations = (PartitionHandle, u64, u64, Vec<(u64, PreparedReplace)>);

/// Opens the partition of the current generation, keeps the newer ones a
/// marker names (see [`Backend::keep_prepared`]) and deletes every other
/// generation of cairn's (what an install that failed or crashed before
/// its commit point left, or the old state one that crashed right after
/// left). Returns it, its generation, the first generation never used and
/// the kept ones with their tags.
fn current_generation(keyspace: &Keyspace, path: &Path) -> Result<Generations, StorageError> {
    let current = read_generation(path)?;
    let found: Vec<u64> = keyspace
        .list_partitions()
        .iter()
        .filter_map(|name| generation_of(name))
        .collect();
    if current > 0 && !found.contains(&current) {
        return Err(StorageError::corrupt(
            "fjall state generation",
            format!("generation {current} is current but its partition is missing"),
        ));
    }
    let next = found.iter().copied().max().unwrap_or(0).max(current) + 1;
    let mut markers = kept_markers(path)?;
    let mut kept = Vec::new();
    for generation in found.into_iter().filter(|g| *g != current) {
        let part = keyspace.open_partition(
            &partition_name(generation),
            PartitionCreateOptions::default(),
        )?;
        match markers.get(&generation).copied() {
            Some(tag) if generation > current => {
                markers.remove(&generation);
                tracing::info!(
                    generation,
                    tag,
                    "keeping a prepared state partition for the install it was kept for"
                );
                let prepared = Prepared {
                    keyspace: keyspace.clone(),
                    part: Some(part),
                    generation,
                    pairs: 0,
                    marker: Some(path.join(kept_marker(generation))),
                };
                kept.push((tag, PreparedReplace(Box::new(prepared))));
            }
            _ => {
                tracing::info!(
                    generation,
                    current,
                    "removing a state partition left by an interrupted snapshot install"
                );
                keyspace.delete_partition(part)?;
            }
        }
    }
    // The markers left name generations gone, deleted above, or committed
    // (a crash right after the commit point).
    for generation in markers.keys() {
        std::fs::remove_file(path.join(kept_marker(*generation)))?;
    }
    let part =
        keyspace.open_partition(&partition_name(current), PartitionCreateOptions::default())?;
    Ok((part, current, next, kept))
}

/// The disk blocks held by the files under `path`, in bytes, each file
/// counted once whatever its number of names. A file removed while it is
/// listed (fjall deletes journals and segments as it goes) counts as nothing.
fn allocated_bytes(path: &Path) -> Result<u64, StorageError> {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => dirs.push(entry.path()),
                Ok(m) if seen.insert((m.dev(), m.ino())) => total += m.blocks() * 512,
                Ok(_) => {}
                Err(_) => {}
            }
        }
    }
    Ok(total)
}

/// fjall's iterators own what they read (they hold the tree's version).
fn owned(iter: impl Iterator<Item = fjall::Result<fjall::KvPair>> + 'static) -> ScanIter<'static> {
    Box::new(iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)))
}

/// A generation ingested by [`Backend::prepare_replace`] and not named
/// current: deleted when dropped uncommitted.
struct Prepared {
    keyspace: Keyspace,
    /// `None` once committed (or never ours).
    part: Option<PartitionHandle>,
    generation: u64,
    /// Pairs ingested.
    pairs: u64,
    /// The marker that keeps it across a restart, once kept.
    marker: Option<PathBuf>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(part) = self.part.take() {
            // Never named current: the old state stays. A crash before
            // this delete lands is cleaned up at the next open.
            if let Err(e) = self.keyspace.delete_partition(part) {
                tracing::warn!(cause = %e, generation = self.generation, "cannot remove an unfinished install's partition");
            }
        }
        // After the partition: a marker without it is removed at open.
        if let Some(marker) = self.marker.take() {
            if let Err(e) = std::fs::remove_file(&marker) {
                tracing::warn!(cause = %e, generation = self.generation, "cannot remove a kept state's marker");
            }
        }
    }
}

impl Backend for FjallBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.part.read().0.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        owned(self.part().prefix(prefix))
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        owned(self.part().range(start.to_vec()..end.to_vec()))
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // A fjall batch applies its items in order into the memtable, so a
        // later operation on a key wins, as the trait requires.
        let part = self.part();
        let mut b = self.keyspace.batch();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => b.insert(&part, k, v),
                None => b.remove(&part, k),
            }
        }
        b.commit()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn can_bulk_replace(&self) -> bool {
        true
    }

    /// Ingests `pairs` into the partition of a new generation, not named
    /// current yet (the old state stays the state; a crash leaves the new
    /// partition unnamed, and the next open deletes it). fjall's ingest
    /// panics on an unsorted stream or a partition that is not empty: both
    /// are checked here first and refused as errors. The stream may be fed
    /// as it arrives: reads and writes of the current partition go on.
    fn prepare_replace(&self, pairs: BulkPairs<'_>) -> Result<PreparedReplace, StorageError> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let name = partition_name(generation);
        let part = self
            .keyspace
            .open_partition(&name, PartitionCreateOptions::default())?;
        // From here on, a failure (or the caller dropping it) deletes it.
        let mut prepared = Prepared {
            keyspace: self.keyspace.clone(),
            part: Some(part.clone()),
            generation,
            pairs: 0,
            marker: None,
        };
        if part.segment_count() != 0
            || part.tree.active_memtable_size() != 0
            || part.tree.sealed_memtable_count() != 0
        {
            // Never ours to delete: keep it, refuse.
            prepared.part = None;
            return Err(StorageError::corrupt(
                "fjall state generation",
                format!("the new partition {name} is not empty"),
            ));
        }
        let mut failed = None;
        let mut last: Option<Vec<u8>> = None;
        let mut count = 0u64;
        let sorted = std::iter::from_fn(|| {
            if failed.is_some() {
                return None;
            }
            match pairs.next()? {
                Ok((k, v)) => {
                    if last.as_ref().is_some_and(|l| k <= *l) {
                        failed = Some(StorageError::corrupt(
                            "bulk load",
                            "keys not in strictly ascending order",
                        ));
                        return None;
                    }
                    let l = last.get_or_insert_with(Vec::new);
                    l.clear();
                    l.extend_from_slice(&k);
                    count += 1;
                    Some((k, v))
                }
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        let ingested = part.ingest(sorted);
        match (failed, ingested) {
            (Some(e), _) => return Err(e),
            (None, Err(e)) => return Err(e.into()),
            (None, Ok(())) if count == 0 => {
                return Err(StorageError::corrupt("bulk load", "nothing to load"))
            }
            (None, Ok(())) => {}
        }
        prepared.pairs = count;
        Ok(PreparedReplace(Box::new(prepared)))
    }

    /// Names the prepared generation current (the commit point), then
    /// drops the old one.
    fn commit_replace(&self, prepared: PreparedReplace) -> Result<(), StorageError> {
        let mut prepared = prepared
            .0
            .downcast::<Prepared>()
            .map_err(|_| StorageError::corrupt("bulk load", "prepared by another engine"))?;
        crate::failpoint::hit("fjall-install-ingested");
        let generation = prepared.generation;
        if let Err(e) = write_generation(&self.path, generation) {
            if prepared.marker.is_some() {
                // Kept: left on disk for the restart to commit.
                prepared.part = None;
                prepared.marker = None;
            }
            return Err(e);
        }
        if let Some(marker) = prepared.marker.take() {
            // Committed: a marker left by a crash here is removed at open.
            if let Err(e) = std::fs::remove_file(&marker) {
                tracing::warn!(cause = %e, generation, "cannot remove a kept state's marker");
            }
        }
        let Some(part) = prepared.part.take() else {
            return Err(StorageError::corrupt("bulk load", "prepared twice"));
        };
        let old = std::mem::replace(&mut *self.part.write(), (part, generation));
        tracing::info!(
            generation,
            pairs = prepared.pairs,
            "state partition replaced (fjall ingest)"
        );
        // Removed on disk once the last handle (a reader's iterator) goes;
        // if this fails, the next open removes it.
        if let Err(e) = self.keyspace.delete_partition(old.0) {
            tracing::warn!(cause = %e, generation = old.1, "cannot remove the replaced state partition");
        }
        Ok(())
    }

    /// Everything the ingest wrote is durable already (fjall syncs each
    /// segment file, the segments folder and the partition's manifest);
    /// what is left is the partition's folder entry, then the marker.
    fn keep_prepared(&self, prepared: &mut PreparedReplace, tag: u64) -> Result<(), StorageError> {
        let prepared = prepared
            .0
            .downcast_mut::<Prepared>()
            .ok_or_else(|| StorageError::corrupt("bulk load", "prepared by another engine"))?;
        if prepared.part.is_none() {
            return Err(StorageError::corrupt("bulk load", "prepared twice"));
        }
        let partitions = self.path.join("partitions");
        super::sync_dir(&partitions.join(partition_name(prepared.generation)))?;
        super::sync_dir(&partitions)?;
        let name = kept_marker(prepared.generation);
        super::replace_file_durably(&self.path, &name, tag.to_string().as_bytes())?;
        prepared.marker = Some(self.path.join(name));
        Ok(())
    }

    fn kept_prepared(&self) -> Vec<(u64, PreparedReplace)> {
        std::mem::take(&mut *self.kept.lock())
    }

    /// The blocks the keyspace's files hold, as `du` counts them: fjall's
    /// own figure counts the active journal at its preallocated length
    /// (32 MiB, a sparse file that mostly takes no space).
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        allocated_bytes(&self.path)
    }

    /// A major compaction: the memtable is written out first, so that its
    /// tombstones meet the data they delete; the member keeps serving.
    fn defragment(&self) -> Result<(), StorageError> {
        let before = allocated_bytes(&self.path).unwrap_or(0);
        let started = std::time::Instant::now();
        let part = self.part();
        part.rotate_memtable_and_wait()?;
        let written_out = started.elapsed();
        // Every input gets its second name (the memtable just written out
        // too), so that fjall's drop of the replaced segments, under its
        // level lock, frees nothing; the pass after it frees them here.
        self.trash.pass()?;
        // fjall's own major_compact keeps every version newer than its GC
        // watermark, which trails the write sequence (by 100 batches, or
        // all of them on a store that took few); cairn opens no fjall
        // snapshot (reads see the latest data), so nothing older than now
        // is needed.
        let compacted = part
            .tree
            .major_compact(MAJOR_SEGMENT_BYTES, self.keyspace.instant())
            .map_err(fjall::Error::from);
        let emptied = self.trash.pass();
        compacted?;
        let freed = emptied?;
        let compacted = started.elapsed();
        self.keyspace.persist(PersistMode::SyncAll)?;
        let after = allocated_bytes(&self.path).unwrap_or(0);
        tracing::info!(
            before,
            after,
            memtable_ms = written_out.as_millis() as u64,
            compaction_ms = (compacted - written_out).as_millis() as u64,
            sync_ms = (started.elapsed() - compacted).as_millis() as u64,
            files_freed = freed.freed,
            "state store compacted (fjall)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> FjallBackend {
        FjallBackend::open(dir, 8 << 20).expect("open fjall")
    }

    #[test]
    fn data_survives_reopen_and_a_new_store_has_a_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = open(dir.path());
            assert!(b.size_on_disk().expect("size") > 0);
            let mut wb = WriteBatch::new();
            wb.put(&b"x"[..], &b"y"[..]);
            wb.put(&b"z"[..], &b"w"[..]);
            b.write_batch(wb).expect("write");
            let mut wb = WriteBatch::new();
            wb.delete(&b"z"[..]);
            b.write_batch(wb).expect("write");
            b.flush().expect("flush");
        }
        let b = open(dir.path());
        assert_eq!(b.get(b"x").expect("get"), Some(b"y".to_vec()));
        assert_eq!(b.get(b"z").expect("get"), None);
    }

    /// Values that do not compress (xorshift), so that sizes mean something.
    struct Noise(u64);

    impl Noise {
        fn value(&mut self) -> Vec<u8> {
            (0..1024)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    self.0 as u8
                })
                .collect()
        }

        /// Keys `k000000`.. with a 1 KiB value each, in batches of 1,000.
        fn fill(&mut self, b: &FjallBackend, keys: usize) {
            for chunk in 0..keys.div_ceil(1000) {
                let mut wb = WriteBatch::new();
                for i in chunk * 1000..((chunk + 1) * 1000).min(keys) {
                    wb.put(format!("k{i:06}").into_bytes(), self.value());
                }
                b.write_batch(wb).expect("write");
            }
        }
    }

    #[test]
    fn defragment_keeps_every_pair_and_gives_space_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = open(dir.path());
        Noise(0x9e37_79b9_7f4a_7c15).fill(&b, 20_000);
        b.defragment().expect("write out");
        crate::mvcc::backend::conformance::defragment_gives_the_space_back(&b);
    }

    /// A major compaction writes its output in segments of
    /// MAJOR_SEGMENT_BYTES, not fjall's 64 MiB: each segment's fsync is
    /// the burst a raft log fdatasync may wait behind.
    #[test]
    fn a_major_compaction_writes_small_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = open(dir.path());
        // 24 MB: two segments at 16 MiB, one at fjall's 64.
        Noise(0x2545_f491_4f6c_dd1d).fill(&b, 24_000);
        b.defragment().expect("defragment");
        let segments = segments_dir(dir.path());
        let sizes: Vec<u64> = segment_files(dir.path())
            .iter()
            .map(|f| std::fs::metadata(segments.join(f)).expect("stat").len())
            .collect();
        // A segment closes after the block that takes it past the target.
        let slack = 1 << 20;
        assert!(sizes.len() >= 2, "{sizes:?}");
        assert!(
            sizes.iter().all(|s| *s <= MAJOR_SEGMENT_BYTES + slack),
            "{sizes:?}"
        );
        assert_eq!(b.scan_prefix(b"k").count(), 24_000);
    }

    /// The files in the trash whose only name is there (fjall dropped
    /// them): the space the keeper has yet to give back.
    fn orphans(dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir.join(trash::TRASH)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| m.nlink() == 1))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The folder of the current partition's segment files.
    fn segments_dir(dir: &Path) -> PathBuf {
        dir.join("partitions").join(PARTITION).join("segments")
    }

    /// The segment files of the current partition.
    fn segment_files(dir: &Path) -> std::collections::HashSet<String> {
        std::fs::read_dir(segments_dir(dir))
            .expect("segments")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Writes `keys` keys of 1 KiB (the same keys each round) and writes
    /// the memtable out: one more level-0 segment, which a pass links.
    fn write_round(b: &FjallBackend, noise: &mut Noise, keys: usize) {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
            let mut wb = WriteBatch::new();
            for i in chunk {
                wb.put(format!("k{i:06}").into_bytes(), noise.value());
            }
            b.write_batch(wb).expect("write");
        }
        b.part().rotate_memtable_and_wait().expect("write out");
        b.trash.pass().expect("pass");
    }

    /// Waits (10 s at most) for `done`.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// fjall's background (leveled) compactions replace the level-0
    /// segments of overwritten keys; each had a second name, so fjall's
    /// deletion left its blocks to the keeper, whose thread gives them back.
    #[test]
    fn the_keeper_gives_back_the_files_background_compactions_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = open(dir.path());
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        let mut written = std::collections::HashSet::new();
        for _ in 0..8 {
            write_round(&b, &mut noise, 2000);
            written.extend(segment_files(dir.path()));
        }
        let trash = dir.path().join(trash::TRASH);
        wait_for("segments dropped by fjall and given back", || {
            let dropped = written.difference(&segment_files(dir.path())).count();
            dropped > 0 && orphans(dir.path()).is_empty()
        });
        // Every live segment keeps its second name, and only those are in
        // the trash: nothing but live data holds blocks.
        let live = segment_files(dir.path());
        let named: std::collections::HashSet<String> = std::fs::read_dir(&trash)
            .expect("trash")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        for segment in &live {
            assert!(
                named.contains(&format!("{PARTITION}.{segment}")),
                "{segment} has one name"
            );
        }
        assert!(named.len() <= live.len(), "{named:?} against {live:?}");
        assert_eq!(all(&b).len(), 2000);
    }

    /// A crash (or a close) leaves the trash; the next open removes it
    /// before fjall opens, so a file fjall dropped meanwhile is freed, and
    /// the keeper gives every live segment its second name again.
    #[test]
    fn a_trash_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut noise = Noise(7);
        {
            let b = open(dir.path());
            write_round(&b, &mut noise, 100);
        }
        let trash = dir.path().join(trash::TRASH);
        assert!(std::fs::read_dir(&trash).expect("trash").next().is_some());
        let left = trash.join(format!("{PARTITION}.999999"));
        std::fs::write(&left, vec![7u8; 64 << 10]).expect("write");
        let b = open(dir.path());
        assert!(!left.exists(), "a dropped file outlived the open");
        assert_eq!(all(&b).len(), 100);
        wait_for("live segments named again", || {
            segment_files(dir.path()).iter().all(|s| {
                std::fs::metadata(trash.join(format!("{PARTITION}.{s}")))
                    .is_ok_and(|m| m.nlink() == 2)
            })
        });
    }

    /// Every pair written survives background compactions, a defragment
    /// and a reopen with the keeper at work: it only ever adds or removes
    /// its own names.
    #[test]
    fn every_pair_survives_the_trash_keeper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut want = std::collections::BTreeMap::new();
        let mut noise = Noise(0xdead_beef);
        {
            let b = open(dir.path());
            for round in 0..10usize {
                let mut wb = WriteBatch::new();
                for i in 0..600 {
                    // Overwrites of a shared range, and keys of this round.
                    let key = if i % 2 == 0 {
                        format!("a{i:04}")
                    } else {
                        format!("r{round:02}-{i:04}")
                    };
                    let value = noise.value();
                    want.insert(key.clone().into_bytes(), value.clone());
                    wb.put(key.into_bytes(), value);
                }
                if round == 6 {
                    for i in 0..100 {
                        let key = format!("r00-{:04}", 2 * i + 1).into_bytes();
                        want.remove(&key);
                        wb.delete(key);
                    }
                }
                b.write_batch(wb).expect("write");
                b.part().rotate_memtable_and_wait().expect("write out");
                b.trash.pass().expect("pass");
                if round == 5 {
                    b.defragment().expect("defragment");
                }
            }
            wait_for("no file left to give back", || {
                orphans(dir.path()).is_empty()
            });
            let got: std::collections::BTreeMap<_, _> = all(&b).into_iter().collect();
            assert!(got == want, "{} pairs, {} written", got.len(), want.len());
        }
        let b = open(dir.path());
        let got: std::collections::BTreeMap<_, _> = all(&b).into_iter().collect();
        assert!(
            got == want,
            "after reopen: {} pairs, {} written",
            got.len(),
            want.len()
        );
    }

    /// The pairs `("k0", "v0")`… in order, as a bulk stream.
    fn stream(n: usize) -> Vec<crate::mvcc::BulkItem> {
        (0..n)
            .map(|i| {
                Ok((
                    format!("k{i:04}").into_bytes(),
                    format!("v{i}").into_bytes(),
                ))
            })
            .collect()
    }

    fn all(b: &FjallBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.scan_prefix(b"").map(|p| p.expect("scan")).collect()
    }

    /// The names in directory `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        names.sort();
        names
    }

    fn partitions(dir: &Path) -> Vec<String> {
        names(&dir.join("partitions"))
    }

    /// A bulk replacement takes the old state's place, on disk too; one
    /// that is unsorted, empty or fails part-way is refused (fjall's
    /// ingest would panic on the first two) and leaves the old state.
    #[test]
    fn a_bulk_replace_swaps_the_state_or_leaves_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = open(dir.path());
            let mut wb = WriteBatch::new();
            wb.put(&b"old"[..], &b"1"[..]);
            b.write_batch(wb).expect("write");
            let before = all(&b);
            let unsorted = vec![
                Ok((b"b".to_vec(), b"1".to_vec())),
                Ok((b"a".to_vec(), b"1".to_vec())),
            ];
            let duplicate = vec![
                Ok((b"a".to_vec(), b"1".to_vec())),
                Ok((b"a".to_vec(), b"2".to_vec())),
            ];
            let mut failing = stream(100);
            failing.push(Err(StorageError::corrupt("test", "the stream broke")));
            for (what, bad) in [
                ("unsorted", unsorted),
                ("duplicate", duplicate),
                ("empty", vec![]),
                ("failing", failing),
            ] {
                assert!(
                    b.bulk_replace(&mut bad.into_iter()).is_err(),
                    "{what} accepted"
                );
                assert_eq!(all(&b), before, "{what}");
            }
            b.bulk_replace(&mut stream(1000).into_iter())
                .expect("replace");
            assert_eq!(all(&b).len(), 1000);
            assert_eq!(b.get(b"old").expect("get"), None);
            let mut wb = WriteBatch::new();
            wb.put(&b"later"[..], &b"2"[..]);
            b.write_batch(wb).expect("write");
        }
        let b = open(dir.path());
        assert_eq!(b.get(b"k0999").expect("get"), Some(b"v999".to_vec()));
        assert_eq!(b.get(b"later").expect("get"), Some(b"2".to_vec()));
        assert_eq!(b.get(b"old").expect("get"), None);
        assert_eq!(all(&b).len(), 1001);
        assert_eq!(
            partitions(dir.path()).len(),
            1,
            "{:?}",
            partitions(dir.path())
        );
    }

    /// What a crash leaves: a generation filled but never named current
    /// (a crash before the commit point) is dropped at open and the old
    /// state stays; a generation named current wins over the old one a
    /// crash right after the commit point left behind.
    #[test]
    fn open_keeps_the_generation_named_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |part: &PartitionHandle, v: &str| {
            part.insert("x", v).expect("insert");
        };
        {
            let ks = fjall::Config::new(dir.path()).open().expect("keyspace");
            let opts = PartitionCreateOptions::default;
            put(&ks.open_partition(PARTITION, opts()).expect("p0"), "old");
            put(
                &ks.open_partition("cairn-mvcc-3", opts()).expect("p3"),
                "partial",
            );
            ks.persist(PersistMode::SyncAll).expect("persist");
        }
        {
            let b = open(dir.path());
            assert_eq!(b.get(b"x").expect("get"), Some(b"old".to_vec()));
        }
        assert_eq!(partitions(dir.path()), vec![PARTITION.to_string()]);
        {
            let ks = fjall::Config::new(dir.path()).open().expect("keyspace");
            let p = ks
                .open_partition("cairn-mvcc-4", PartitionCreateOptions::default())
                .expect("p4");
            put(&p, "new");
            ks.persist(PersistMode::SyncAll).expect("persist");
        }
        write_generation(dir.path(), 4).expect("commit");
        {
            let b = open(dir.path());
            assert_eq!(b.get(b"x").expect("get"), Some(b"new".to_vec()));
            // The next install uses a generation never seen before.
            assert_eq!(b.next_generation.load(Ordering::Relaxed), 5);
        }
        assert_eq!(partitions(dir.path()), vec!["cairn-mvcc-4".to_string()]);
    }

    fn markers(dir: &Path) -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| n.starts_with(KEPT_PREFIX))
            .collect()
    }

    /// A prepared state that was kept survives a restart (an unkept one
    /// does not), is handed out once with its tag, and commits as the
    /// state; its marker goes with the commit. A kept state dropped instead
    /// is removed with its marker.
    #[test]
    fn a_kept_prepared_state_survives_a_restart_and_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = open(dir.path());
            let mut wb = WriteBatch::new();
            wb.put(&b"old"[..], &b"1"[..]);
            b.write_batch(wb).expect("write");
            let mut kept = b
                .prepare_replace(&mut stream(1000).into_iter())
                .expect("prepare");
            b.keep_prepared(&mut kept, 77).expect("keep");
            let unkept = b
                .prepare_replace(&mut stream(10).into_iter())
                .expect("prepare");
            // A crash: neither is dropped, nothing is committed.
            std::mem::forget((kept, unkept));
            b.flush().expect("flush");
        }
        {
            let b = open(dir.path());
            assert_eq!(b.get(b"old").expect("get"), Some(b"1".to_vec()));
            assert_eq!(partitions(dir.path()).len(), 2, "the unkept one is gone");
            let mut kept = b.kept_prepared();
            assert!(b.kept_prepared().is_empty(), "handed out twice");
            assert_eq!(kept.len(), 1);
            let (tag, prepared) = kept.remove(0);
            assert_eq!(tag, 77);
            b.commit_replace(prepared).expect("commit");
            assert_eq!(all(&b).len(), 1000);
            assert_eq!(b.get(b"old").expect("get"), None);
            assert!(markers(dir.path()).is_empty(), "{:?}", markers(dir.path()));
        }
        {
            let b = open(dir.path());
            assert_eq!(all(&b).len(), 1000);
            assert!(b.kept_prepared().is_empty());
            let mut kept = b
                .prepare_replace(&mut stream(5).into_iter())
                .expect("prepare");
            b.keep_prepared(&mut kept, 78).expect("keep");
            assert_eq!(markers(dir.path()).len(), 1);
            drop(kept);
            assert!(markers(dir.path()).is_empty(), "{:?}", markers(dir.path()));
        }
        let b = open(dir.path());
        assert!(b.kept_prepared().is_empty());
        assert_eq!(all(&b).len(), 1000);
        assert_eq!(
            partitions(dir.path()).len(),
            1,
            "{:?}",
            partitions(dir.path())
        );
    }

    /// A commit that cannot name the kept generation current leaves it on
    /// disk, still kept, for the restart to commit.
    #[test]
    fn a_failed_commit_leaves_a_kept_state_for_the_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = open(dir.path());
            let mut kept = b
                .prepare_replace(&mut stream(100).into_iter())
                .expect("prepare");
            b.keep_prepared(&mut kept, 9).expect("keep");
            // The generation file cannot be replaced: a directory is in
            // the way of its temporary file.
            std::fs::create_dir(dir.path().join(format!("{GENERATION_FILE}.tmp")))
                .expect("block the commit");
            assert!(b.commit_replace(kept).is_err());
            std::fs::remove_dir(dir.path().join(format!("{GENERATION_FILE}.tmp")))
                .expect("unblock");
        }
        let b = open(dir.path());
        let mut kept = b.kept_prepared();
        assert_eq!(kept.len(), 1);
        let (tag, prepared) = kept.remove(0);
        assert_eq!(tag, 9);
        b.commit_replace(prepared).expect("commit");
        assert_eq!(all(&b).len(), 100);
    }
}
