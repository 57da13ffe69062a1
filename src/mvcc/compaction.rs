//! Physical compaction: removing the revision records a compaction made
//! unreadable, and pruning the key index, on a background thread in small
//! steps (etcd's `scheduleCompaction`), so that neither the apply thread nor
//! readers wait for it.
//!
//! Applying a Compaction entry only records the new compact revision (with
//! the applied index, in the batch's one backend write) and publishes it:
//! from then on reads below it fail with `Compacted`, whatever is still on
//! disk. The compactor thread then
//!
//! ```text
//!  kick ─► prune the key index, PRUNE_STEP keys per write-lock hold
//!       ─► delete old records, Batches::limit records examined per backend
//!          batch, Batches::pause between batches; the last batch also writes
//!          m/finished_compact_rev ─► Compact(physical) and HashKV waiters wake
//! ```
//!
//! A record at or below the compact revision C is deleted unless it is the
//! revision its key had at C (what reads at C and later still need); a
//! tombstone at or below C always goes. The records are scanned from the
//! first revision on (at most one kept record per key lies below an earlier
//! compaction), as etcd does. After a restart with `finished < compact`, the
//! pass simply runs again: the key index rebuilt from a partly compacted
//! backend reads the same at C and above (the records left of each key are a
//! suffix of its history), and deleting is idempotent.
//!
//! Readers and deletion: a Range resolves revisions under the index lock and
//! reads the values after letting go of it. Before letting go it registers
//! the revision it reads at ([`Compaction::register`]); a deletion pass for C
//! first waits until no reader registered below C is left. Readers that
//! start later cannot register below C (they see the compact revision and
//! are refused), so the wait is bounded by the reads already in flight.
//! Readers at C or above never need a deleted record: each key's record at
//! such a revision is either above C or the one it had at C, which is kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use prost::Message;

use crate::error::StorageError;

use super::backend::{Backend, WriteBatch};
use super::revision::Revision;
use super::store::{rev_key, Committed, RecordHead, META_FINISHED_COMPACT_REV, REV_PREFIX};

/// How the deletion pass is cut into batches: etcd's
/// `--experimental-compaction-batch-limit` (revision records examined per
/// backend batch) and `--experimental-compaction-sleep-interval` (the pause
/// between two batches, so writes and reads keep their latency). Set at
/// start-up with [`super::Store::set_compaction_batches`]; the compactor
/// reads them before each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batches {
    /// Revision records examined per deletion batch (at least 1).
    pub limit: usize,
    /// Pause after each deletion batch but the last.
    pub pause: Duration,
}

impl Batches {
    /// etcd's defaults: 1,000 records, 10 ms. The deletions no longer go
    /// through the write buffer (the compactor commits them itself,
    /// `Backend::write_batch_background`), so the quarter-size batches of
    /// before (250 every 2.5 ms, same average rate) bought nothing.
    pub const DEFAULT: Batches = Batches {
        limit: 1_000,
        pause: Duration::from_millis(10),
    };
}

impl Default for Batches {
    fn default() -> Self {
        Batches::DEFAULT
    }
}

/// Keys pruned from the in-memory key index per hold of its write lock
/// (measured: 0.2 to 0.7 ms for 2,000 keys of 3 revisions each).
pub const PRUNE_STEP: usize = 2_000;

/// Coordination between the store's readers, the apply thread and the
/// compactor thread. Shared as `Arc` by the store and the thread.
pub(crate) struct Compaction {
    /// Read revision -> number of reads in flight at it (see the module doc).
    readers: Mutex<BTreeMap<i64, usize>>,
    /// Signalled when a reader leaves.
    reader_left: Condvar,
    /// Set while a deletion batch waits for reads in flight.
    waiting_for_readers: AtomicBool,
    /// The compact revision whose deletion pass completed (durably, in the
    /// same backend batch as its last deletions). An atomic, so that readers
    /// can check it under the index lock without taking `stop` (the
    /// compactor takes `stop`, then the index lock).
    finished: AtomicI64,
    /// Set when the store is dropped; waits for the compactor's progress
    /// sleep on it.
    stop: Mutex<bool>,
    /// Signalled, with `stop` held, when `finished` or `stop` changes or a
    /// compaction is applied.
    changed: Condvar,
    /// Held by the compactor for each step, and by [`Compaction::pause`].
    work: Mutex<()>,
    /// Bumped when the store's whole state is replaced: the compactor then
    /// drops the pass it was in and starts over from `finished`.
    epoch: std::sync::atomic::AtomicU64,
    /// The batch size and pause, read by the compactor before each batch.
    batches: Mutex<Batches>,
}

/// A read in flight at some revision; deregisters when dropped.
pub(crate) struct ReadGuard<'a> {
    /// The registry it is counted in.
    compaction: &'a Compaction,
    /// The revision it was registered at.
    at: i64,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let mut readers = self.compaction.readers.lock();
        if let Some(n) = readers.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.at);
                self.compaction.reader_left.notify_all();
            }
        }
    }
}

impl Compaction {
    pub(crate) fn new(finished: i64) -> Compaction {
        Compaction {
            readers: Mutex::new(BTreeMap::new()),
            reader_left: Condvar::new(),
            waiting_for_readers: AtomicBool::new(false),
            finished: AtomicI64::new(finished),
            stop: Mutex::new(false),
            changed: Condvar::new(),
            work: Mutex::new(()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            batches: Mutex::new(Batches::DEFAULT),
        }
    }

    /// Sets how the deletion passes are cut (from the next batch on); a
    /// limit of 0 means etcd's default, as in etcd.
    pub(crate) fn set_batches(&self, batches: Batches) {
        let limit = match batches.limit {
            0 => Batches::DEFAULT.limit,
            n => n,
        };
        *self.batches.lock() = Batches { limit, ..batches };
    }

    /// The batch size and pause in force.
    pub(crate) fn batches(&self) -> Batches {
        *self.batches.lock()
    }

    /// Keeps the compactor between two steps while the guard lives.
    pub(crate) fn pause(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.work.lock()
    }

    /// The store's state was replaced (while paused): its last finished
    /// compaction is `finished`, and any pass under way is void.
    pub(crate) fn restart_from(&self, finished: i64) {
        self.finished.store(finished, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a read at revision `at` until the guard drops: no record it
    /// may need is deleted meanwhile. Must be called with the index lock
    /// held, after checking `at` against the compact revision.
    pub(crate) fn register(&self, at: i64) -> ReadGuard<'_> {
        *self.readers.lock().entry(at).or_default() += 1;
        ReadGuard {
            compaction: self,
            at,
        }
    }

    /// Blocks until no read registered below `rev` is in flight.
    fn wait_readers_below(&self, rev: i64) {
        let mut readers = self.readers.lock();
        let below = |r: &BTreeMap<i64, usize>| r.first_key_value().is_some_and(|(&at, _)| at < rev);
        while below(&readers) {
            self.waiting_for_readers.store(true, Ordering::Release);
            self.reader_left.wait(&mut readers);
        }
        self.waiting_for_readers.store(false, Ordering::Release);
    }

    /// Whether a deletion batch is waiting for reads in flight (tests watch
    /// the compactor stop there).
    #[cfg(test)]
    pub(crate) fn waiting_for_readers(&self) -> bool {
        self.waiting_for_readers.load(Ordering::Acquire)
    }

    /// The compact revision whose old records are all gone.
    pub(crate) fn finished(&self) -> i64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Blocks until the old records of compaction at `rev` (or a later one)
    /// are gone. Returns false if the store shut down first.
    pub(crate) fn wait_finished(&self, rev: i64) -> bool {
        let mut stop = self.stop.lock();
        while self.finished() < rev && !*stop {
            self.changed.wait(&mut stop);
        }
        self.finished() >= rev
    }

    /// Wakes the compactor: a compaction was applied and published.
    pub(crate) fn kick(&self) {
        let _stop = self.stop.lock();
        self.changed.notify_all();
    }

    /// Stops the compactor (at its next step).
    pub(crate) fn stop(&self) {
        *self.stop.lock() = true;
        self.changed.notify_all();
    }

    fn set_finished(&self, rev: i64) {
        self.finished.fetch_max(rev, Ordering::AcqRel);
        // Taking the lock orders this with a waiter's check of `finished`.
        let _stop = self.stop.lock();
        self.changed.notify_all();
    }
}

/// Below this size on disk a store is not worth rewriting after a compaction.
const RECLAIM_MIN_SIZE: u64 = 16 << 20;

/// Starts the compactor thread of a store.
pub(crate) fn spawn(
    backend: Arc<dyn Backend>,
    committed: Arc<RwLock<Committed>>,
    state: Arc<Compaction>,
) -> Result<JoinHandle<()>, StorageError> {
    let finished = state.finished();
    let worker = Worker {
        backend,
        committed,
        epoch: state.epoch.load(Ordering::Acquire),
        state,
        pruned: finished,
        prune: (finished, None),
        pass: (finished, Vec::new()),
        removed: 0,
    };
    Ok(std::thread::Builder::new()
        .name("mvcc-compactor".into())
        .spawn(move || worker.run())?)
}

/// The compactor thread's state.
struct Worker {
    /// Revision records to delete from.
    backend: Arc<dyn Backend>,
    /// The store's index and compact revision.
    committed: Arc<RwLock<Committed>>,
    /// Shared with the store.
    state: Arc<Compaction>,
    /// The store's state epoch this worker's passes belong to.
    epoch: u64,
    /// The compact revision the whole key index is pruned to.
    pruned: i64,
    /// The pruning pass under way: its revision and the last key pruned.
    prune: (i64, Option<Vec<u8>>),
    /// The deletion pass under way: its revision and the first backend key
    /// not examined yet (empty: start from the first record).
    pass: (i64, Vec<u8>),
    /// Bytes (keys and values) the deletion pass under way has removed.
    removed: u64,
}

impl Worker {
    fn run(mut self) {
        while let Some(target) = self.next_target() {
            let state = self.state.clone();
            let _working = state.work.lock();
            let epoch = state.epoch.load(Ordering::Acquire);
            if epoch != self.epoch {
                // The whole state was replaced: start over.
                let finished = state.finished();
                self.epoch = epoch;
                self.pruned = finished;
                self.prune = (finished, None);
                self.pass = (finished, Vec::new());
                continue;
            }
            let step = if self.pruned < target {
                self.prune_step();
                Ok(())
            } else {
                self.delete_step(target)
            };
            if let Err(e) = step {
                crate::error::fatal("removing compacted revisions", &e);
            }
        }
    }

    /// Waits for work: the compact revision, once the index or the backend
    /// lags behind it. None when the store is shutting down.
    fn next_target(&self) -> Option<i64> {
        let mut stop = self.state.stop.lock();
        loop {
            if *stop {
                return None;
            }
            // Lock order: `stop`, then the index. Nobody takes `stop` while
            // holding the index lock (the apply thread kicks after letting
            // go of it), or a waiting writer could wedge the three of us.
            let target = self.committed.read().compact_rev;
            if self.pruned < target || self.state.finished() < target {
                return Some(target);
            }
            self.state.changed.wait(&mut stop);
        }
    }

    /// Prunes the next [`PRUNE_STEP`] keys of the index at the compact
    /// revision; a newer compaction restarts the pass.
    fn prune_step(&mut self) {
        let mut c = self.committed.write();
        let target = c.compact_rev;
        if self.prune.0 != target {
            self.prune = (target, None);
        }
        match c
            .index
            .compact_some(target, self.prune.1.as_deref(), PRUNE_STEP)
        {
            Some(last) => self.prune.1 = Some(last),
            None => {
                self.pruned = target;
                self.prune.1 = None;
            }
        }
    }

    /// Gives the space of what a finished pass removed back to the file
    /// system when that is a large share of the store: sled reuses freed
    /// pages but rarely shrinks its file, so the store rewrites itself
    /// (`Backend::defragment`, mvcc::defrag) here, on the compactor thread,
    /// off the raft and apply threads; the member serves meanwhile.
    fn reclaim_space(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        let size = self.backend.size_on_disk().unwrap_or(0);
        if size < RECLAIM_MIN_SIZE || removed.saturating_mul(4) < size {
            return;
        }
        tracing::info!(
            removed,
            size,
            "compaction removed a large share of the store; defragmenting"
        );
        if let Err(e) = self.backend.defragment() {
            // The old database stays live and whole; a later pass retries.
            tracing::warn!(cause = %e, "defragmenting after compaction failed");
        }
    }

    /// Deletes the old records among the next [`Batches::limit`] at or
    /// below `target`; the last batch of a pass also records it as finished.
    fn delete_step(&mut self, target: i64) -> Result<(), StorageError> {
        crate::failpoint::hit("compact-delete");
        let Batches { limit, pause } = self.state.batches();
        if self.pass.0 != target {
            self.pass = (target, REV_PREFIX.to_vec());
            self.removed = 0;
        }
        let end = rev_key(Revision::new(target.saturating_add(1), 0), false);
        let mut found = Vec::with_capacity(limit.min(4_096));
        for item in self.backend.scan_range(&self.pass.1, &end).take(limit) {
            let (k, v) = item?;
            let (rev, tombstone) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
            let head = RecordHead::decode(v.as_slice())
                .map_err(|e| StorageError::corrupt("revision record", e))?;
            let bytes = (k.len() + v.len()) as u64;
            found.push((k, rev, tombstone, head.key, bytes));
        }
        let last_batch = found.len() < limit;
        let next = found.last().map(|(k, ..)| {
            let mut after = k.clone();
            after.push(0);
            after
        });
        let doomed: Vec<Vec<u8>> = {
            let c = self.committed.read();
            if c.compact_rev != target {
                // A newer compaction: the next step starts its pass.
                return Ok(());
            }
            found
                .into_iter()
                .filter(|(_, rev, tombstone, key, _)| {
                    let kept = c.index.get(key).and_then(|ki| ki.get(target));
                    *tombstone || kept.map(|k| k.modified) != Some(*rev)
                })
                .map(|(k, .., bytes)| {
                    self.removed += bytes;
                    k
                })
                .collect()
        };
        self.state.wait_readers_below(target);
        let mut batch = WriteBatch::new();
        for k in doomed {
            batch.delete(k);
        }
        if last_batch {
            batch.put(META_FINISHED_COMPACT_REV, target.to_be_bytes().to_vec());
        }
        self.backend.write_batch_background(batch)?;
        if last_batch {
            tracing::debug!(revision = target, "compacted revisions removed");
            self.state.set_finished(target);
            self.reclaim_space();
        } else {
            if let Some(next) = next {
                self.pass.1 = next;
            }
            let mut stop = self.state.stop.lock();
            if !*stop && !pause.is_zero() {
                self.state.changed.wait_for(&mut stop, pause);
            }
        }
        Ok(())
    }
}
