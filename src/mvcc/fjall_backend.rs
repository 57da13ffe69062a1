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
//! serving (no copy, no swap).
//!
//! The backend conformance suite (`mvcc::backend::tests`) runs on it alone
//! and behind the write buffer, as on sled.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use fjall::{AbstractTree as _, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::backend::{Backend, ScanIter, WriteBatch};
use crate::error::StorageError;

/// The one partition holding cairn's state (the name is fjall's directory).
const PARTITION: &str = "cairn-mvcc";

/// fjall keeps journals until the memtables they cover are written out; its
/// default allows 512 MiB of them in the state directory. 64 MiB bounds the
/// journals at a few memtables' worth.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// Inside the keyspace's directory (fjall's recovery reads only its own
/// folders): second names of the segment files a defragment replaces (see
/// [`FjallBackend::pin_segments`]).
const TRASH: &str = "cairn-trash";

/// A fjall keyspace holding one partition.
pub struct FjallBackend {
    /// For batches, `persist` and the size (journals included).
    keyspace: Keyspace,
    /// Every key lives here.
    part: PartitionHandle,
    /// The keyspace's directory, for its size.
    path: PathBuf,
}

impl FjallBackend {
    /// Opens (or creates) the keyspace in directory `path`, with a block
    /// cache of `cache_bytes` (the same budget sled's page cache gets).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<FjallBackend, StorageError> {
        // Left by a crash during a defragment: only second names of files.
        match std::fs::remove_dir_all(path.join(TRASH)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let keyspace = fjall::Config::new(path)
            .cache_size(cache_bytes)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .open()?;
        let part = keyspace.open_partition(PARTITION, PartitionCreateOptions::default())?;
        // The journal of a new keyspace is empty until the first write;
        // Status.dbSize must never read 0 (as with sled), so force it out.
        keyspace.persist(PersistMode::SyncAll)?;
        Ok(FjallBackend {
            keyspace,
            part,
            path: path.to_path_buf(),
        })
    }
}

impl FjallBackend {
    /// The partition's segment files (lsm-tree's layout).
    fn segments_dir(&self) -> PathBuf {
        self.path
            .join("partitions")
            .join(PARTITION)
            .join("segments")
    }

    /// Gives every segment file a second name in [`TRASH`] before a major
    /// compaction. fjall drops the segments a compaction replaced while it
    /// holds the tree's level lock, which every read (a Range, and the
    /// previous value a put reads) waits for; dropping a segment unlinks its
    /// file and closes it, and freeing a large file's blocks took 20-30 ms
    /// each on a busy disk (strace: 11 files, 195 ms, with every read and
    /// put waiting). With a second name, fjall's unlink only removes a name;
    /// [`FjallBackend::empty_trash`] frees the blocks afterwards, holding no
    /// fjall lock.
    fn pin_segments(&self) -> Result<(), StorageError> {
        let trash = self.path.join(TRASH);
        std::fs::create_dir_all(&trash)?;
        for entry in std::fs::read_dir(self.segments_dir())? {
            let entry = entry?;
            match std::fs::hard_link(entry.path(), trash.join(entry.file_name())) {
                // Removed meanwhile by a background compaction, or pinned
                // already by an earlier defragment that failed.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists
                    ) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Removes the second names [`FjallBackend::pin_segments`] made: the
    /// files fjall dropped meanwhile are freed here, one at a time (freeing
    /// takes the file system's journal, which the raft log's fsyncs need
    /// too); the ones still in use only lose a name.
    fn empty_trash(&self) -> Result<(), StorageError> {
        let trash = self.path.join(TRASH);
        for entry in std::fs::read_dir(&trash)? {
            std::fs::remove_file(entry?.path())?;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::fs::remove_dir(&trash)?;
        Ok(())
    }
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

impl Backend for FjallBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.part.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        owned(self.part.prefix(prefix))
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> ScanIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        owned(self.part.range(start.to_vec()..end.to_vec()))
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // A fjall batch applies its items in order into the memtable, so a
        // later operation on a key wins, as the trait requires.
        let mut b = self.keyspace.batch();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => b.insert(&self.part, k, v),
                None => b.remove(&self.part, k),
            }
        }
        b.commit()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.keyspace.persist(PersistMode::SyncAll)?;
        Ok(())
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
        self.part.rotate_memtable_and_wait()?;
        let written_out = started.elapsed();
        // fjall's own major_compact keeps every version newer than its GC
        // watermark, which trails the write sequence (by 100 batches, or
        // all of them on a store that took few); cairn opens no fjall
        // snapshot (reads see the latest data), so nothing older than now
        // is needed.
        let target = match &self.part.config.compaction_strategy {
            fjall::compaction::Strategy::Leveled(l) => u64::from(l.target_size),
            _ => u64::MAX,
        };
        self.pin_segments()?;
        let compacted = self
            .part
            .tree
            .major_compact(target, self.keyspace.instant())
            .map_err(fjall::Error::from);
        // The old files are freed now, or (if the compaction failed) only
        // lose their second name.
        let emptied = self.empty_trash();
        compacted?;
        emptied?;
        let compacted = started.elapsed();
        self.keyspace.persist(PersistMode::SyncAll)?;
        let after = allocated_bytes(&self.path).unwrap_or(0);
        tracing::info!(
            before,
            after,
            memtable_ms = written_out.as_millis() as u64,
            compaction_ms = (compacted - written_out).as_millis() as u64,
            sync_ms = (started.elapsed() - compacted).as_millis() as u64,
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

    #[test]
    fn defragment_keeps_every_pair_and_gives_space_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = open(dir.path());
        // Values that do not compress, so the sizes mean something.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut value = || -> Vec<u8> {
            (0..1024)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        for chunk in 0..20 {
            let mut wb = WriteBatch::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                wb.put(format!("k{i:06}").into_bytes(), value());
            }
            b.write_batch(wb).expect("write");
        }
        b.defragment().expect("write out");
        crate::mvcc::backend::conformance::defragment_gives_the_space_back(&b);
    }

    #[test]
    fn a_trash_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()));
        let trash = dir.path().join(TRASH);
        std::fs::create_dir_all(&trash).expect("mkdir");
        std::fs::write(trash.join("1"), vec![7u8; 64 << 10]).expect("write");
        let b = open(dir.path());
        assert!(!trash.exists(), "the trash outlived the open");
        assert!(b.size_on_disk().expect("size") < 64 << 10);
    }
}
