//! A write buffer in front of a slower [`Backend`]: cairn's counterpart of
//! etcd's batch transaction plus read buffer.
//!
//! Why: sled's `apply_batch` is expensive per call, not per key. Every call
//! seals sled's current log buffer and hands it to sled's I/O thread pool,
//! whose `notify_all` wakes every pool thread (profiled: with one put per
//! applied batch, those threads took about a quarter of the server's CPU).
//! Applying each raft batch straight into sled made that cost per request.
//!
//! How: [`Backend::write_batch`] lands in an in-memory overlay (`active`)
//! under a lock, atomically, and returns. A committer thread moves the
//! overlay into the inner backend as **one** `write_batch` when it holds
//! [`COMMIT_OPS`] operations or is [`COMMIT_INTERVAL`] old, and
//! [`Backend::flush`] commits whatever is left before flushing the inner
//! backend. Reads look in `active`, then in `frozen` (the overlay being
//! committed), then in the inner backend.
//!
//! ```text
//!  write_batch ─► active ──(committer: ≥ COMMIT_OPS or COMMIT_INTERVAL)──► frozen ──► inner.write_batch
//!  get / scan  ─► active ─► frozen ─► inner                                            flush ─► inner.flush
//! ```
//!
//! Correctness:
//! - **Atomic batches survive.** Each inner `write_batch` is the union of
//!   whole overlay batches, so after a crash the inner backend holds some
//!   prefix of whole batches; with the applied raft index written in every
//!   batch, the store is still exactly at one applied index.
//! - **Durability is unchanged.** Nothing here was durable before `flush`
//!   either (sled makes writes durable only on `flush`); the raft log holds
//!   every applied entry until a flush covers it.
//! - **Readers never miss a write.** An entry leaves `frozen` only after the
//!   inner backend has it, so a reader that finds a key in neither overlay
//!   finds it (or its absence) in the inner backend.
//! - **A failed commit poisons the buffer and never loses a write.** The
//!   overlay that failed stays in `frozen` (readers still see it), every
//!   later write, commit and flush fails, and the poison hook runs; the
//!   server's hook stops the member ([`crate::error::fatal`]). A flush can
//!   therefore never succeed after a lost commit, so the raft log is never
//!   truncated past entries the state store does not hold.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::backend::{Backend, ScanIter, WriteBatch};
use crate::error::StorageError;

/// Overlay operations that make the committer move the overlay at once.
/// Small on purpose: sled's `apply_batch` holds sled's global write lock,
/// and every sled read (a put's previous record, a Range's values) waits
/// for it, so a commit should take about a millisecond, not many. The time
/// sled is locked is the same either way; small commits spread it thinly
/// (put and mixed at 64 clients, 512 ops/5 ms against 4096 ops/20 ms: p99
/// 12-27 ms against 12-43 ms, on a busy machine). Memory too: sled keeps
/// its epoch pinned for a whole batch, so the node copies every insert
/// replaces are freed only after it; loading 100k keys peaked at 173 MiB
/// with 512-op commits and 149 MiB with 256 (etcd: 157 MiB).
pub const COMMIT_OPS: usize = 256;
/// Overlay bytes (keys plus values) that do the same.
pub const COMMIT_BYTES: u64 = 1 << 20;
/// Past this many buffered operations (or [`LIMIT_BYTES`]) the committer
/// has fallen behind, and the writer commits itself: backpressure, so the
/// overlay's memory stays bounded under a bulk load (without it, loading
/// 100k keys took the peak RSS from 89 MiB, before the buffer, to 285).
pub const LIMIT_OPS: usize = 4 * COMMIT_OPS;
/// See [`LIMIT_OPS`].
pub const LIMIT_BYTES: u64 = 8 * COMMIT_BYTES;
/// The longest a write waits in the overlay before the committer moves it
/// (etcd's batch interval is 100 ms; much shorter here for the reason above).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(5);
/// How often a commit asks the inner backend for its size on disk (a
/// directory walk on fjall, hundreds of times a second under load when done
/// after every commit); in between, the size is counted up from the bytes
/// each commit wrote. `flush` always asks.
pub const SIZE_REFRESH: Duration = Duration::from_millis(100);

/// Key → `Some(value)` (put) or `None` (delete), in key order.
type Ops = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// One buffered operation, copied out for a scan.
type Op = (Vec<u8>, Option<Vec<u8>>);

/// The two overlays readers consult.
#[derive(Default)]
struct Overlay {
    /// Writes not yet handed to the committer.
    active: Ops,
    /// Bytes (keys plus values) in `active`.
    active_bytes: u64,
    /// When `active` got its first write (for COMMIT_INTERVAL).
    active_since: Option<Instant>,
    /// The overlay being written to the inner backend (at most one: commits
    /// are serialised by `Shared::commit`).
    frozen: Option<Arc<Ops>>,
    /// Bytes in `frozen`.
    frozen_bytes: u64,
}

/// State shared with the committer thread.
struct Shared {
    inner: Arc<dyn Backend>,
    overlay: RwLock<Overlay>,
    /// Held for a whole commit (committer or flush), so commits apply to the
    /// inner backend in overlay order.
    commit: Mutex<()>,
    /// The committer's wake-up: set when there is something to commit.
    signal: Mutex<Signal>,
    wake: Condvar,
    /// The inner backend's size, counted up by each commit and asked of
    /// the inner backend every [`SIZE_REFRESH`] and on flush (its own
    /// `size_on_disk` lists the directory: too slow for every apply).
    inner_size: AtomicU64,
    /// When a commit last asked the inner backend for its size.
    size_asked: Mutex<Instant>,
    /// The first commit error; every later write, commit or flush returns it.
    failed: Mutex<Option<String>>,
    /// Told of the first commit error (the server's stops the member).
    on_poison: PoisonHook,
}

/// What a [`BufferedBackend`] does when a commit to the inner backend fails.
pub type PoisonHook = Arc<dyn Fn(&StorageError) + Send + Sync>;

#[derive(Default)]
struct Signal {
    /// `active` is non-empty (the committer should commit within
    /// COMMIT_INTERVAL).
    pending: bool,
    /// `active` is over a threshold (commit now).
    urgent: bool,
    /// The backend is being dropped.
    stop: bool,
}

/// A [`Backend`] that buffers writes in memory and commits them to `inner`
/// in large batches from a background thread.
pub struct BufferedBackend {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

impl BufferedBackend {
    /// A write buffer whose first failed commit stops the process
    /// ([`crate::error::fatal`]): the member must not run on with a state
    /// store that lost writes.
    pub fn new(inner: Arc<dyn Backend>) -> Result<BufferedBackend, StorageError> {
        Self::with_poison_hook(
            inner,
            Arc::new(|e| crate::error::fatal("committing buffered writes to the state store", e)),
        )
    }

    /// Like [`BufferedBackend::new`], with another reaction to a failed
    /// commit (tests). The buffer is poisoned either way.
    pub fn with_poison_hook(
        inner: Arc<dyn Backend>,
        on_poison: PoisonHook,
    ) -> Result<BufferedBackend, StorageError> {
        let size = inner.size_on_disk()?;
        let shared = Arc::new(Shared {
            inner,
            overlay: RwLock::new(Overlay::default()),
            commit: Mutex::new(()),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            inner_size: AtomicU64::new(size),
            size_asked: Mutex::new(Instant::now()),
            failed: Mutex::new(None),
            on_poison,
        });
        let s = shared.clone();
        let committer = std::thread::Builder::new()
            .name("state-committer".into())
            .spawn(move || s.run_committer())?;
        Ok(BufferedBackend {
            shared,
            committer: Some(committer),
        })
    }

    /// Moves everything buffered so far into the inner backend (no flush).
    pub fn commit(&self) -> Result<(), StorageError> {
        self.shared.check()?;
        self.shared.commit_once()
    }

    /// Operations waiting in the overlays (for tests and metrics).
    pub fn buffered_ops(&self) -> usize {
        let o = self.shared.overlay.read();
        o.active.len() + o.frozen.as_ref().map_or(0, |f| f.len())
    }
}

impl Shared {
    fn check(&self) -> Result<(), StorageError> {
        match &*self.failed.lock() {
            Some(e) => Err(StorageError::CommitFailed(e.clone())),
            None => Ok(()),
        }
    }

    fn run_committer(&self) {
        loop {
            {
                let mut sig = self.signal.lock();
                while !sig.pending && !sig.stop {
                    self.wake.wait(&mut sig);
                }
                if sig.stop {
                    return;
                }
                if !sig.urgent {
                    let since = self.overlay.read().active_since;
                    if let Some(since) = since {
                        let due = since + COMMIT_INTERVAL;
                        while !sig.urgent && !sig.stop && Instant::now() < due {
                            self.wake.wait_until(&mut sig, due);
                        }
                    }
                }
                sig.pending = false;
                sig.urgent = false;
            }
            if self.commit_once().is_err() {
                // Poisoned (and the hook told): nothing more to commit.
                return;
            }
        }
    }

    /// Freezes `active` and writes it to the inner backend as one batch.
    /// On failure the buffer is poisoned: the frozen overlay stays readable
    /// and is never dropped, and every later commit fails at once.
    fn commit_once(&self) -> Result<(), StorageError> {
        let _serial = self.commit.lock();
        self.check()?;
        let frozen = {
            let mut o = self.overlay.write();
            if o.active.is_empty() {
                return Ok(());
            }
            let ops = Arc::new(std::mem::take(&mut o.active));
            o.frozen_bytes = std::mem::take(&mut o.active_bytes);
            o.active_since = None;
            o.frozen = Some(ops.clone());
            ops
        };
        let mut batch = WriteBatch::new();
        for (k, v) in frozen.iter() {
            match v {
                Some(v) => batch.put(k.as_slice(), v.as_slice()),
                None => batch.delete(k.as_slice()),
            }
        }
        if let Err(e) = self.inner.write_batch(batch) {
            self.poison(&e);
            return Err(e);
        }
        // sled's file size lags the writes it took until it writes its log
        // out, so right after a commit it may even read 0: never let the
        // estimate drop below what it counted with the overlay. `flush`
        // sets the exact size again.
        let committed = self.inner_size.load(Ordering::Relaxed) + self.overlay.read().frozen_bytes;
        let size = {
            let mut asked = self.size_asked.lock();
            if asked.elapsed() >= SIZE_REFRESH {
                *asked = Instant::now();
                self.inner.size_on_disk().unwrap_or(0).max(committed)
            } else {
                committed
            }
        };
        self.inner_size.store(size, Ordering::Relaxed);
        // Only now may readers stop finding these writes in the overlay.
        let mut o = self.overlay.write();
        o.frozen = None;
        o.frozen_bytes = 0;
        Ok(())
    }

    /// Records the first failure and tells the hook, once.
    fn poison(&self, e: &StorageError) {
        {
            let mut failed = self.failed.lock();
            if failed.is_some() {
                return;
            }
            *failed = Some(e.to_string());
        }
        tracing::error!(cause = %e, "committing buffered writes to the state store failed; the write buffer is poisoned");
        (self.on_poison)(e);
    }

    /// The newest buffered state of `key`: `Some(op)` if an overlay has it.
    fn buffered(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let o = self.overlay.read();
        if let Some(op) = o.active.get(key) {
            return Some(op.clone());
        }
        o.frozen.as_ref().and_then(|f| f.get(key).cloned())
    }

    /// The overlays' operations in `[start, end)` (newest wins), copied out
    /// so the scan holds no lock.
    fn buffered_range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<Op> {
        let o = self.overlay.read();
        let mut merged: Ops = BTreeMap::new();
        let layers = o.frozen.iter().map(|f| f.as_ref()).chain([&o.active]);
        for layer in layers {
            for (k, v) in layer.range::<[u8], _>((start, end)) {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged.into_iter().collect()
    }
}

impl Drop for BufferedBackend {
    fn drop(&mut self) {
        {
            let mut sig = self.shared.signal.lock();
            sig.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
        // Best effort: whatever is still buffered is also in the raft log.
        // A poisoned buffer is left as it is.
        if self.shared.check().is_err() {
            return;
        }
        if let Err(e) = self.shared.commit_once() {
            tracing::warn!(cause = %e, "committing buffered writes on close failed");
        }
    }
}

impl Backend for BufferedBackend {
    fn write_bulk(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // Straight into the engine, after what is buffered: no copy into
        // the overlay and out again.
        self.commit()?;
        self.shared
            .inner
            .write_bulk(batch)
            .inspect_err(|e| self.shared.poison(e))
    }
    fn can_bulk_replace(&self) -> bool {
        self.shared.inner.can_bulk_replace()
    }
    fn bulk_replace(&self, pairs: super::backend::BulkPairs<'_>) -> Result<(), StorageError> {
        // What is buffered belongs to the state being replaced: it goes
        // into the engine first, so that nothing of it lands later on top
        // of the new state. A refused replacement leaves the engine as it
        // was, so it poisons nothing.
        self.commit()?;
        self.shared.inner.bulk_replace(pairs)
    }
    fn prepare_replace(
        &self,
        pairs: super::backend::BulkPairs<'_>,
    ) -> Result<super::PreparedReplace, StorageError> {
        // Beside the engine's state: nothing buffered is touched.
        self.shared.inner.prepare_replace(pairs)
    }
    fn commit_replace(&self, prepared: super::PreparedReplace) -> Result<(), StorageError> {
        // As in bulk_replace: what is buffered goes in before the swap.
        self.commit()?;
        self.shared.inner.commit_replace(prepared)
    }
    fn keep_prepared(
        &self,
        prepared: &mut super::PreparedReplace,
        tag: u64,
    ) -> Result<(), StorageError> {
        self.shared.inner.keep_prepared(prepared, tag)
    }
    fn kept_prepared(&self) -> Vec<(u64, super::PreparedReplace)> {
        self.shared.inner.kept_prepared()
    }
    fn has_room(&self, ops: usize) -> bool {
        let o = self.shared.overlay.read();
        o.active.len() + ops < LIMIT_OPS / 2 && o.active_bytes < LIMIT_BYTES / 2
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.shared.buffered(key) {
            Some(op) => Ok(op),
            None => self.shared.inner.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        let buffered: Vec<_> = self
            .shared
            .buffered_range(Bound::Included(prefix), Bound::Unbounded)
            .into_iter()
            .take_while(|(k, _)| k.starts_with(prefix))
            .collect();
        merge(buffered, self.shared.inner.scan_prefix(prefix))
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let buffered = self
            .shared
            .buffered_range(Bound::Included(start), Bound::Excluded(end));
        merge(buffered, self.shared.inner.scan_range(start, end))
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.shared.check()?;
        if batch.is_empty() {
            return Ok(());
        }
        let (first, urgent, over_limit) = {
            let mut o = self.shared.overlay.write();
            let first = o.active.is_empty();
            for (k, v) in batch.into_ops() {
                let bytes = |v: &Option<Vec<u8>>| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
                o.active_bytes += bytes(&v);
                let replaced = o.active.get(&k).map(bytes);
                if let Some(old) = replaced {
                    o.active_bytes = o.active_bytes.saturating_sub(old);
                }
                o.active.insert(k, v);
            }
            if first {
                o.active_since = Some(Instant::now());
            }
            let urgent = o.active.len() >= COMMIT_OPS || o.active_bytes >= COMMIT_BYTES;
            let over_limit = o.active.len() >= LIMIT_OPS || o.active_bytes >= LIMIT_BYTES;
            (first, urgent, over_limit)
        };
        if over_limit {
            // Waits for the committer's current commit, then moves ours
            // (a failure poisons the buffer, as in the committer).
            return self.shared.commit_once();
        }
        if first || urgent {
            let mut sig = self.shared.signal.lock();
            sig.pending = true;
            sig.urgent |= urgent;
            drop(sig);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Buffers the batch, then commits the buffer to the inner backend on
    /// the calling thread. The compactor writes this way: its deletions
    /// arrive faster than the committer moves them into sled (sled deletes
    /// are slow), and when they piled up in the buffer, the apply thread's
    /// next write found it over [`LIMIT_OPS`] and committed them itself,
    /// stalling every write for up to ~100 ms (docs/storage.md, Figures).
    fn write_batch_background(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_batch(batch)?;
        self.shared.commit_once()
    }

    /// Commits what is buffered, lets the inner backend defragment (writes
    /// keep landing in the overlay meanwhile), then flushes, which also
    /// reads the new size.
    fn defragment(&self) -> Result<(), StorageError> {
        self.shared.commit_once()?;
        self.shared.inner.defragment()?;
        self.flush()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.shared.commit_once()?;
        if let Err(e) = self.shared.inner.flush() {
            self.shared.poison(&e);
            return Err(e);
        }
        if let Ok(size) = self.shared.inner.size_on_disk() {
            self.shared.inner_size.store(size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The inner backend's size at its last commit plus the bytes buffered
    /// since: an estimate, as etcd's quota check on bbolt's size is.
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        let o = self.shared.overlay.read();
        Ok(self.shared.inner_size.load(Ordering::Relaxed) + o.active_bytes + o.frozen_bytes)
    }
}

/// Merges buffered operations (sorted, newest state per key) over an inner
/// scan (sorted): buffered puts replace or add pairs, buffered deletes hide them.
fn merge<'a>(buffered: Vec<Op>, inner: ScanIter<'a>) -> ScanIter<'a> {
    if buffered.is_empty() {
        return inner;
    }
    Box::new(Merge {
        buffered: buffered.into_iter().peekable(),
        inner: inner.peekable(),
    })
}

struct Merge<'a> {
    buffered: std::iter::Peekable<std::vec::IntoIter<Op>>,
    inner: std::iter::Peekable<ScanIter<'a>>,
}

impl Iterator for Merge<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_buffered = match (self.buffered.peek(), self.inner.peek()) {
                (None, None) => return None,
                (None, Some(_)) => return self.inner.next(),
                (Some(_), None) => true,
                // An inner error surfaces where it happened.
                (Some(_), Some(Err(_))) => return self.inner.next(),
                (Some((bk, _)), Some(Ok((ik, _)))) => {
                    if bk.as_slice() == ik.as_slice() {
                        // The buffered state is newer: drop the inner pair.
                        self.inner.next();
                        true
                    } else {
                        bk.as_slice() < ik.as_slice()
                    }
                }
            };
            if !take_buffered {
                return self.inner.next();
            }
            match self.buffered.next() {
                Some((k, Some(v))) => return Some(Ok((k, v))),
                Some((_, None)) => continue, // a buffered delete
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::MemBackend;

    fn batch(ops: &[(&str, Option<&str>)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(k.as_bytes(), v.as_bytes()),
                None => b.delete(k.as_bytes()),
            }
        }
        b
    }

    fn keys(it: ScanIter<'_>) -> Vec<(String, String)> {
        it.map(|r| {
            let (k, v) = r.expect("scan");
            (
                String::from_utf8(k).expect("utf8"),
                String::from_utf8(v).expect("utf8"),
            )
        })
        .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// An inner backend with committed data, and a buffered one over it
    /// holding newer writes that are not committed yet.
    fn layered() -> (Arc<MemBackend>, BufferedBackend) {
        let inner = Arc::new(MemBackend::new());
        inner
            .write_batch(batch(&[
                ("a", Some("0")),
                ("b", Some("0")),
                ("c", Some("0")),
                ("e", Some("0")),
            ]))
            .expect("seed");
        let b = BufferedBackend::new(inner.clone()).expect("buffered");
        b.write_batch(batch(&[
            ("b", Some("1")),
            ("c", None),
            ("d", Some("1")),
            ("f", Some("1")),
        ]))
        .expect("write");
        (inner, b)
    }

    #[test]
    fn reads_merge_buffered_writes_over_the_inner_backend() {
        let (inner, b) = layered();
        // Right after the write, before any commit could have happened...
        assert_eq!(b.get(b"a").expect("get"), Some(b"0".to_vec()));
        assert_eq!(b.get(b"b").expect("get"), Some(b"1".to_vec()));
        assert_eq!(
            b.get(b"c").expect("get"),
            None,
            "a buffered delete hides the inner value"
        );
        assert_eq!(b.get(b"d").expect("get"), Some(b"1".to_vec()));
        let want = pairs(&[("a", "0"), ("b", "1"), ("d", "1"), ("e", "0"), ("f", "1")]);
        assert_eq!(keys(b.scan_prefix(b"")), want);
        assert_eq!(keys(b.scan_range(b"b", b"f")), want[1..4].to_vec());
        // ... and the same after the commit, now served by the inner backend.
        b.commit().expect("commit");
        assert_eq!(b.buffered_ops(), 0);
        assert_eq!(inner.get(b"c").expect("get"), None);
        assert_eq!(keys(inner.scan_prefix(b"")), want);
        assert_eq!(keys(b.scan_prefix(b"")), want);
    }

    #[test]
    fn the_committer_moves_writes_within_the_interval() {
        let (inner, b) = layered();
        let deadline = Instant::now() + Duration::from_secs(10);
        while inner.get(b"d").expect("get").is_none() {
            assert!(Instant::now() < deadline, "not committed within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(b.buffered_ops(), 0);
    }

    #[test]
    fn a_full_overlay_is_committed_without_waiting_for_the_interval() {
        let inner = Arc::new(MemBackend::new());
        let b = BufferedBackend::new(inner.clone()).expect("buffered");
        let mut wb = WriteBatch::new();
        for i in 0..COMMIT_OPS {
            wb.put(format!("k{i:06}").into_bytes(), b"v".to_vec());
        }
        b.write_batch(wb).expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.buffered_ops() > 0 {
            assert!(Instant::now() < deadline, "not committed within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(inner.scan_prefix(b"k").count(), COMMIT_OPS);
    }

    #[test]
    fn a_writer_past_the_limit_commits_itself() {
        let inner = Arc::new(MemBackend::new());
        let b = BufferedBackend::new(inner.clone()).expect("buffered");
        for chunk in 0..4 {
            let mut wb = WriteBatch::new();
            for i in 0..LIMIT_OPS {
                wb.put(format!("k{chunk}/{i:06}").into_bytes(), b"v".to_vec());
            }
            b.write_batch(wb).expect("write");
            assert!(
                b.buffered_ops() < LIMIT_OPS,
                "the overlay holds {} ops after a write past the limit",
                b.buffered_ops()
            );
        }
        assert_eq!(inner.scan_prefix(b"k").count(), 4 * LIMIT_OPS);
    }

    /// Background writes (the compactor's) leave nothing in the buffer for
    /// foreground writers to drain: the writer moves them itself, at once.
    #[test]
    fn a_background_write_is_committed_by_its_writer() {
        let inner = Arc::new(MemBackend::new());
        let b = BufferedBackend::new(inner.clone()).expect("buffered");
        for chunk in 0..8 {
            let mut wb = WriteBatch::new();
            for i in 0..COMMIT_OPS - 6 {
                wb.put(format!("k{chunk}/{i:06}").into_bytes(), b"v".to_vec());
            }
            b.write_batch_background(wb).expect("write");
            assert_eq!(
                b.buffered_ops(),
                0,
                "left in the buffer after chunk {chunk}"
            );
        }
        assert_eq!(inner.scan_prefix(b"k").count(), 8 * (COMMIT_OPS - 6));
    }

    #[test]
    fn flush_commits_first_and_size_counts_buffered_bytes() {
        let inner = Arc::new(MemBackend::new());
        let b = BufferedBackend::new(inner.clone()).expect("buffered");
        b.write_batch(batch(&[("ab", Some("cde"))])).expect("write");
        assert_eq!(b.size_on_disk().expect("size"), 5);
        b.write_batch(batch(&[("ab", Some("c"))])).expect("write");
        assert_eq!(
            b.size_on_disk().expect("size"),
            3,
            "a replaced value is not counted twice"
        );
        b.flush().expect("flush");
        assert_eq!(inner.get(b"ab").expect("get"), Some(b"c".to_vec()));
        assert_eq!(b.size_on_disk().expect("size"), 3);
    }

    /// Fails every write, to check that a background failure is not lost.
    struct Broken;

    /// A buffer over `inner` whose poison hook counts calls instead of
    /// stopping the process.
    fn poisonable(inner: Arc<dyn Backend>) -> (BufferedBackend, Arc<AtomicU64>) {
        let poisoned = Arc::new(AtomicU64::new(0));
        let count = poisoned.clone();
        let hook: PoisonHook = Arc::new(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        let b = BufferedBackend::with_poison_hook(inner, hook).expect("buffered");
        (b, poisoned)
    }

    impl Backend for Broken {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            Ok(None)
        }
        fn scan_prefix(&self, _: &[u8]) -> ScanIter<'_> {
            Box::new(std::iter::empty())
        }
        fn scan_range(&self, _: &[u8], _: &[u8]) -> ScanIter<'_> {
            Box::new(std::iter::empty())
        }
        fn write_batch(&self, _: WriteBatch) -> Result<(), StorageError> {
            Err(StorageError::corrupt(
                "test backend",
                "refuses writes".to_string(),
            ))
        }
        fn flush(&self) -> Result<(), StorageError> {
            Ok(())
        }
        fn size_on_disk(&self) -> Result<u64, StorageError> {
            Ok(0)
        }
    }

    #[test]
    fn a_failed_background_commit_poisons_and_keeps_the_writes() {
        let (b, poisoned) = poisonable(Arc::new(Broken));
        b.write_batch(batch(&[("k", Some("v"))]))
            .expect("buffered write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while poisoned.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "commit failure not reported within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(b.write_batch(batch(&[("k2", Some("v"))])).is_err());
        assert!(matches!(b.flush(), Err(StorageError::CommitFailed(_))));
        assert!(matches!(b.commit(), Err(StorageError::CommitFailed(_))));
        // The failed overlay was not thrown away: readers still see it.
        assert_eq!(b.get(b"k").expect("get"), Some(b"v".to_vec()));
        assert_eq!(b.buffered_ops(), 1);
        assert_eq!(poisoned.load(Ordering::SeqCst), 1, "the hook runs once");
    }

    /// Accepts writes but fails `flush` (sled's fsync).
    struct FlushFails(MemBackend);

    impl Backend for FlushFails {
        fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.0.get(k)
        }
        fn scan_prefix(&self, p: &[u8]) -> ScanIter<'_> {
            self.0.scan_prefix(p)
        }
        fn scan_range(&self, s: &[u8], e: &[u8]) -> ScanIter<'_> {
            self.0.scan_range(s, e)
        }
        fn write_batch(&self, b: WriteBatch) -> Result<(), StorageError> {
            self.0.write_batch(b)
        }
        fn flush(&self) -> Result<(), StorageError> {
            Err(StorageError::Io(std::io::Error::other("fsync failed")))
        }
        fn size_on_disk(&self) -> Result<u64, StorageError> {
            self.0.size_on_disk()
        }
    }

    #[test]
    fn a_failed_flush_or_backpressure_commit_poisons() {
        let (b, poisoned) = poisonable(Arc::new(FlushFails(MemBackend::new())));
        b.write_batch(batch(&[("k", Some("v"))])).expect("write");
        assert!(b.flush().is_err(), "the inner flush failed");
        assert_eq!(poisoned.load(Ordering::SeqCst), 1);
        assert!(b.flush().is_err(), "a later flush must not succeed");
        assert!(b.write_batch(batch(&[("k", Some("w"))])).is_err());

        // The writer's own commit past the limit (backpressure) poisons too.
        let (b, poisoned) = poisonable(Arc::new(Broken));
        let mut wb = WriteBatch::new();
        for i in 0..LIMIT_OPS {
            wb.put(format!("k{i:06}").into_bytes(), b"v".to_vec());
        }
        assert!(b.write_batch(wb).is_err());
        assert_eq!(poisoned.load(Ordering::SeqCst), 1);
        assert_eq!(b.get(b"k000000").expect("get"), Some(b"v".to_vec()));
    }
}
