//! The byte-level storage under the MVCC store: a narrow [`Backend`] trait,
//! [`SledBackend`] for real members and [`MemBackend`] for tests.
//!
//! The store writes each applied raft batch as one [`WriteBatch`], which the
//! backend must apply atomically, also across a crash: the applied raft index
//! travels in the same batch as the data it covers, so after a restart the
//! store is exactly at some applied index, never between two. Durability is
//! separate ([`Backend::flush`]): raft's log already holds everything applied,
//! so the storage actor may flush lazily, off the actor thread.
//!
//! Keeping the trait this small (get, prefix scan, batch, flush, size) is what
//! lets sled be swapped for another engine; [`conformance`] is the suite every
//! implementation must pass.

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::RwLock;

use crate::error::StorageError;

/// A set of puts and deletes applied all-or-nothing by [`Backend::write_batch`].
/// Operations apply in the order they were added, so a later delete of a key
/// wins over an earlier put of it in the same batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// Pending operations in insertion order: `Some(value)` puts, `None` deletes.
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations in the order they were added (`None` = delete), borrowed.
    pub fn ops(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.ops
    }

    /// The operations in the order they were added (`None` = delete).
    pub fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
}

/// The iterator returned by [`Backend::scan_prefix`].
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a>;

/// The sorted stream [`Backend::bulk_replace`] takes: pairs in strictly
/// ascending key order; an `Err` ends it and fails the replacement.
pub type BulkPairs<'a> = &'a mut dyn Iterator<Item = BulkItem>;

/// One item of [`BulkPairs`]: a key and its value, or why the stream broke.
pub type BulkItem = Result<(Vec<u8>, Vec<u8>), StorageError>;

/// A replacement state written by [`Backend::prepare_replace`] and not yet
/// part of the store: [`Backend::commit_replace`] makes it the state;
/// dropped instead, it is removed (and a crash before the commit leaves
/// the old state, which the next open cleans up after). Opaque: only the
/// engine that made it knows what it holds.
pub struct PreparedReplace(pub(crate) Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for PreparedReplace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedReplace")
    }
}

/// An ordered byte key-value store with atomic batches.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// All pairs whose key starts with prefix, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_>;
    /// All pairs with `start <= key < end`, in key order (watch catch-up
    /// reads a window of revision records this way).
    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_>;
    /// Applies all puts/deletes atomically (all or nothing, also across a crash).
    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError>;
    /// The same, for background work (the compactor's deletions): an engine
    /// that buffers writes makes the caller pay for moving the batch into
    /// the engine, so background work can never fill the buffer that
    /// foreground writes then have to drain (see `BufferedBackend`).
    fn write_batch_background(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_batch(batch)
    }
    /// Makes everything written so far durable. Blocking (fsync): callers run it off actor threads.
    fn flush(&self) -> Result<(), StorageError>;
    fn size_on_disk(&self) -> Result<u64, StorageError>;
    /// Gives the space of deleted data back to the file system, if the
    /// engine holds on to it; etcd's Defragment. The member keeps serving
    /// meanwhile. By default, only a flush.
    fn defragment(&self) -> Result<(), StorageError> {
        self.flush()
    }
    /// Writes a large batch of a bulk load (a snapshot install, nothing
    /// reading): an engine with a write buffer may skip it, and the batch
    /// need not be atomic (a crash may keep part of it): the caller marks
    /// the load finished with a write of its own after a flush.
    fn write_bulk(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_batch(batch)
    }
    /// Whether [`Backend::bulk_replace`] is available (else a caller
    /// empties the store and fills it with [`Backend::write_bulk`]).
    fn can_bulk_replace(&self) -> bool {
        false
    }
    /// Replaces every pair with `pairs` (a snapshot install, nothing
    /// reading or writing meanwhile), all or nothing, also across a crash:
    /// afterwards the store holds exactly the stream, durably. A stream that
    /// fails, is empty or is not in strictly ascending key order is refused
    /// with an error and leaves the old state as it was.
    fn bulk_replace(&self, pairs: BulkPairs<'_>) -> Result<(), StorageError> {
        let prepared = self.prepare_replace(pairs)?;
        self.commit_replace(prepared)
    }
    /// The first half of [`Backend::bulk_replace`], which may run while the
    /// store is read and written as usual: writes `pairs` (same rules) as a
    /// state beside the current one, not read by anything yet.
    fn prepare_replace(&self, _pairs: BulkPairs<'_>) -> Result<PreparedReplace, StorageError> {
        Err(StorageError::Io(std::io::Error::other(
            "this state engine cannot replace its state in bulk",
        )))
    }
    /// The second half of [`Backend::bulk_replace`] (nothing reading or
    /// writing meanwhile): the prepared state becomes the state, durably,
    /// in one step; the old one is dropped.
    fn commit_replace(&self, _prepared: PreparedReplace) -> Result<(), StorageError> {
        Err(StorageError::Io(std::io::Error::other(
            "this state engine cannot replace its state in bulk",
        )))
    }
    /// Makes a prepared state durable and keeps it across a restart, tagged
    /// `tag` (a raft snapshot's index): the next open hands it out through
    /// [`Backend::kept_prepared`] instead of removing it. Dropping the
    /// prepared state still removes it.
    fn keep_prepared(
        &self,
        _prepared: &mut PreparedReplace,
        _tag: u64,
    ) -> Result<(), StorageError> {
        Err(StorageError::Io(std::io::Error::other(
            "this state engine cannot keep a prepared state",
        )))
    }
    /// The prepared states kept ([`Backend::keep_prepared`]) when the
    /// engine was opened, with their tags; handed out once. The caller
    /// commits the one it needs and drops the others (which removes them).
    fn kept_prepared(&self) -> Vec<(u64, PreparedReplace)> {
        Vec::new()
    }
    /// Whether a batch of about `ops` operations can be written now without
    /// waiting for the engine (a write buffer's backpressure commit). RaftNode
    /// applies a batch on its own thread only then.
    fn has_room(&self, _ops: usize) -> bool {
        true
    }
}

/// sled's page cache size used by [`SledBackend::open`]: large enough to keep
/// a working set of a few hundred thousand keys hot, small next to sled's
/// 1 GiB default so a laptop running a 3-member cluster stays comfortable.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// Name of the single sled tree holding all of cairn's state-machine data.
/// One tree, because sled only makes a batch atomic within one tree.
const SLED_TREE: &[u8] = b"cairn-mvcc";

/// The production backend: one sled tree.
pub struct SledBackend {
    /// The database handle; kept for `flush` and `size_on_disk`, which are per database.
    db: sled::Db,
    /// The one tree every key lives in, so that `apply_batch` is atomic across all of them.
    tree: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with_cache(path, DEFAULT_SLED_CACHE_BYTES)
    }

    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()?;
        let tree = db.open_tree(SLED_TREE)?;
        // sled writes its log buffers out on its own thread pool, so the
        // file of a new database stays empty until that write lands, and
        // Status.dbSize (etcd: the bolt file's size, never 0) read 0 for the
        // first moments of a member. A flush waits for that write.
        if db.size_on_disk()? == 0 {
            db.flush()?;
        }
        Ok(SledBackend { db, tree })
    }
}

impl SledBackend {
    /// [`Backend::scan_prefix`], as an iterator that borrows nothing (sled's
    /// own iterators hold their tree).
    pub(crate) fn owned_scan_prefix(&self, prefix: &[u8]) -> ScanIter<'static> {
        owned(self.tree.scan_prefix(prefix))
    }

    /// [`Backend::scan_range`], as an iterator that borrows nothing.
    pub(crate) fn owned_scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'static> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        owned(self.tree.range(start..end))
    }
}

fn owned(iter: sled::Iter) -> ScanIter<'static> {
    Box::new(iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)))
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        self.owned_scan_prefix(prefix)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_> {
        self.owned_scan_range(start, end)
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    fn write_bulk(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // One insert at a time: sled's `apply_batch` takes about twice as
        // long per record (measured: 1M records of 300 bytes, 36 s against
        // 18 s on a busy 2-core machine), and a bulk load needs no atomicity.
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => self.tree.insert(k, v)?,
                None => self.tree.remove(k)?,
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// An in-memory backend for tests. `size_on_disk` reports the bytes held
/// (keys plus values), which makes quota behaviour predictable in tests.
#[derive(Default)]
pub struct MemBackend {
    /// The data; a lock because readers and the one writer run on different threads.
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        // Copy out under the lock so the iterator holds no lock.
        let items: Vec<_> = self
            .map
            .read()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let items: Vec<_> = self
            .map
            .read()
            .range::<[u8], _>((
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut map = self.map.write();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => {
                    map.insert(k, v);
                }
                None => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self
            .map
            .read()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum())
    }
}

/// Opens a sled backend in a test, waiting (up to 10 s) for a previous
/// handle on the same directory to let go of its file lock: sled releases it
/// from background threads shortly after the last handle is dropped.
#[cfg(test)]
pub(crate) fn open_sled_for_test(path: &Path) -> SledBackend {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledBackend::open_with_cache(path, 8 << 20) {
            Ok(b) => return b,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("sled did not open within 10 s: {e}"),
        }
    }
}

/// The behaviour every [`Backend`] must show. Each function panics with a
/// message on the first violation; tests call them for each implementation.
#[cfg(test)]
pub(crate) mod conformance {
    /// With keys `k000000`..`k019999` written: deletes all but the first
    /// 100, and checks a defragment gives at least three quarters of the
    /// space back and keeps exactly the 100 pairs.
    pub fn defragment_gives_the_space_back(b: &dyn super::Backend) {
        let kept = b.get(b"k000099").expect("get");
        assert!(kept.is_some());
        let mut wb = super::WriteBatch::new();
        for i in 100..20_000 {
            wb.delete(format!("k{i:06}").into_bytes());
        }
        b.write_batch(wb).expect("delete");
        b.flush().expect("flush");
        let before = b.size_on_disk().expect("size");
        b.defragment().expect("defragment");
        let after = b.size_on_disk().expect("size");
        assert!(after * 4 < before, "{before} -> {after} bytes");
        let keys: Vec<Vec<u8>> = b.scan_prefix(b"k").map(|p| p.expect("scan").0).collect();
        assert_eq!(keys.len(), 100);
        assert_eq!(b.get(b"k000099").expect("get"), kept);
        assert_eq!(b.get(b"k000100").expect("get"), None);
    }

    use super::*;

    fn scan(b: &dyn Backend, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.scan_prefix(prefix)
            .collect::<Result<Vec<_>, _>>()
            .expect("scan")
    }

    pub fn get_put_delete(b: &dyn Backend) {
        assert_eq!(b.get(b"a").expect("get"), None);
        let mut wb = WriteBatch::new();
        wb.put(&b"a"[..], &b"1"[..]);
        wb.put(&b"b"[..], &b"2"[..]);
        b.write_batch(wb).expect("write");
        assert_eq!(b.get(b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(b.get(b"b").expect("get"), Some(b"2".to_vec()));
        let mut wb = WriteBatch::new();
        wb.delete(&b"a"[..]);
        wb.put(&b"b"[..], &b"3"[..]);
        b.write_batch(wb).expect("write");
        assert_eq!(b.get(b"a").expect("get"), None);
        assert_eq!(b.get(b"b").expect("get"), Some(b"3".to_vec()));
    }

    pub fn later_ops_in_a_batch_win(b: &dyn Backend) {
        let mut wb = WriteBatch::new();
        wb.put(&b"k"[..], &b"1"[..]);
        wb.delete(&b"k"[..]);
        wb.put(&b"j"[..], &b"1"[..]);
        wb.put(&b"j"[..], &b"2"[..]);
        b.write_batch(wb).expect("write");
        assert_eq!(b.get(b"k").expect("get"), None);
        assert_eq!(b.get(b"j").expect("get"), Some(b"2".to_vec()));
    }

    pub fn scan_prefix_is_ordered_and_bounded(b: &dyn Backend) {
        let mut wb = WriteBatch::new();
        for k in [&b"p/3"[..], b"p/1", b"q", b"p/2", b"o", b"p", b"p\xff"] {
            wb.put(k, k);
        }
        b.write_batch(wb).expect("write");
        let keys: Vec<Vec<u8>> = scan(b, b"p").into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                b"p".to_vec(),
                b"p/1".to_vec(),
                b"p/2".to_vec(),
                b"p/3".to_vec(),
                b"p\xff".to_vec()
            ]
        );
        assert_eq!(scan(b, b"p/").len(), 3);
        assert!(scan(b, b"zz").is_empty());
        // The value comes back with its key.
        assert!(scan(b, b"p/").iter().all(|(k, v)| k == v));
    }

    pub fn scan_range_is_half_open_and_ordered(b: &dyn Backend) {
        let mut wb = WriteBatch::new();
        for k in [&b"k3"[..], b"k1", b"k2", b"k4", b"j", b"l"] {
            wb.put(k, k);
        }
        b.write_batch(wb).expect("write");
        let keys = |start: &[u8], end: &[u8]| -> Vec<Vec<u8>> {
            b.scan_range(start, end)
                .map(|r| r.expect("scan").0)
                .collect()
        };
        assert_eq!(keys(b"k1", b"k3"), vec![b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!(keys(b"k", b"l"), keys(b"k1", b"k5"));
        assert_eq!(keys(b"k2", b"k2").len(), 0);
        // An inverted range is empty, not a panic.
        assert_eq!(keys(b"l", b"a").len(), 0);
    }

    pub fn empty_batch_is_fine(b: &dyn Backend) {
        b.write_batch(WriteBatch::new()).expect("write");
        b.flush().expect("flush");
        b.size_on_disk().expect("size");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn backends() -> Vec<(&'static str, Box<dyn Backend>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledBackend::open_with_cache(dir.path(), 8 << 20).expect("open sled");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let sled2 = SledBackend::open_with_cache(dir2.path(), 8 << 20).expect("open sled");
        let buffered = |inner: Arc<dyn Backend>| -> Box<dyn Backend> {
            Box::new(crate::mvcc::BufferedBackend::new(inner).expect("buffered"))
        };
        let dir3 = tempfile::tempdir().expect("tempdir");
        let fjall = crate::mvcc::FjallBackend::open(dir3.path(), 8 << 20).expect("open fjall");
        let dir4 = tempfile::tempdir().expect("tempdir");
        let fjall2 = crate::mvcc::FjallBackend::open(dir4.path(), 8 << 20).expect("open fjall");
        vec![
            ("mem", Box::new(MemBackend::new()), None),
            ("sled", Box::new(sled), Some(dir)),
            ("fjall", Box::new(fjall), Some(dir3)),
            ("buffered(mem)", buffered(Arc::new(MemBackend::new())), None),
            ("buffered(sled)", buffered(Arc::new(sled2)), Some(dir2)),
            ("buffered(fjall)", buffered(Arc::new(fjall2)), Some(dir4)),
        ]
    }

    #[test]
    fn conformance_suite() {
        type Check = fn(&dyn Backend);
        let checks: [(&str, Check); 5] = [
            ("get_put_delete", conformance::get_put_delete),
            (
                "later_ops_in_a_batch_win",
                conformance::later_ops_in_a_batch_win,
            ),
            (
                "scan_prefix_is_ordered_and_bounded",
                conformance::scan_prefix_is_ordered_and_bounded,
            ),
            (
                "scan_range_is_half_open_and_ordered",
                conformance::scan_range_is_half_open_and_ordered,
            ),
            ("empty_batch_is_fine", conformance::empty_batch_is_fine),
        ];
        for (check_name, check) in checks {
            for (name, b, _dir) in backends() {
                eprintln!("{name}: {check_name}");
                check(b.as_ref());
            }
        }
    }

    #[test]
    fn sled_data_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = SledBackend::open_with_cache(dir.path(), 8 << 20).expect("open");
            let mut wb = WriteBatch::new();
            wb.put(&b"x"[..], &b"y"[..]);
            b.write_batch(wb).expect("write");
            b.flush().expect("flush");
        }
        let b = open_sled_for_test(dir.path());
        assert_eq!(b.get(b"x").expect("get"), Some(b"y".to_vec()));
        assert!(b.size_on_disk().expect("size") > 0);
    }

    /// Status.dbSize is never 0, even on a member that never flushed.
    #[test]
    fn a_new_sled_store_has_a_size_before_any_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = SledBackend::open_with_cache(dir.path(), 8 << 20).expect("open");
        assert!(b.size_on_disk().expect("size") > 0);
    }

    #[test]
    fn mem_size_counts_bytes() {
        let b = MemBackend::new();
        let mut wb = WriteBatch::new();
        wb.put(&b"ab"[..], &b"cde"[..]);
        b.write_batch(wb).expect("write");
        assert_eq!(b.size_on_disk().expect("size"), 5);
    }
}
