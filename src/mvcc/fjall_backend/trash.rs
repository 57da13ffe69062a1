//! The trash keeper: a second name for every segment file of the fjall
//! keyspace, so that fjall's deletion of a segment only drops a name, and
//! the file's blocks are freed here, holding no fjall lock.
//!
//! Why: when a compaction (fjall's background leveled ones, or the major
//! one [`FjallBackend::defragment`](super::FjallBackend) runs) replaces
//! segments, lsm-tree drops the old ones while it holds the tree's level
//! lock, which every read takes (a Range, and the previous value each put
//! reads). Dropping a segment unlinks its file, then closes its cached
//! descriptors under the descriptor table's lock; the close of a deleted
//! 50-100 MB file frees its blocks in the kernel, tens of ms on a busy disk
//! (docs/storage.md, "Session 7" and "Session 9").
//!
//! How: a thread (`cairn-fjall-trash`) makes a pass every [`PASS_EVERY`]:
//!
//! ```text
//! partitions/<p>/segments/<id>  ──hard link──▶  cairn-trash/<p>.<id>
//!     (fjall's name: fjall            (ours: holds the blocks after
//!      unlinks it when it drops         fjall's unlink and close)
//!      the segment)
//!
//! a pass:  1. link every segment file that has no second name yet
//!          2. free every trash name that is the file's only name
//!             (fjall dropped it) and that no descriptor of this
//!             process holds open (fjall closed it): unlink, the
//!             blocks go back here, 2 ms between files
//! ```
//!
//! A segment created and dropped between two passes is never linked; it
//! is at most what fjall writes in [`PASS_EVERY`] (a memtable or part of a
//! compaction's output), cheap to free. A defragment runs a pass itself
//! before the major compaction (every input then has a second name) and one
//! after it (the replaced files are freed at once, on its thread).
//!
//! Crash safety: the trash names are outside fjall's folders (its recovery
//! never reads them), and [`empty_at_open`] removes the whole trash before
//! fjall opens, so a crash leaves nothing behind after the next open.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Inside the keyspace's directory (fjall's recovery reads only its own
/// folders).
pub(super) const TRASH: &str = "cairn-trash";

/// How often the keeper's thread makes a pass: a readdir of each segment
/// folder and of the trash (about a hundred entries at 5 GB), so cheap;
/// short, so that few segments live and die between two passes.
pub(super) const PASS_EVERY: Duration = Duration::from_millis(100);

/// The pause after freeing a file: freeing takes the file system's journal,
/// which the raft log's fsyncs need too.
const FREE_PAUSE: Duration = Duration::from_millis(2);

/// Removes the trash a previous run left (a crash, or a close: only second
/// names), before fjall opens the keyspace in `root`.
pub(super) fn empty_at_open(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(root.join(TRASH)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pass {
    /// Segment files given a second name.
    pub linked: u64,
    /// Files freed (their last name removed).
    pub freed: u64,
    /// The blocks those files held, in bytes.
    pub freed_bytes: u64,
}

/// The keeper of a keyspace's trash: its thread, stopped and joined when
/// dropped (the trash stays, and is emptied at the next open).
pub(super) struct TrashKeeper {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// The keyspace's directory.
    root: PathBuf,
    /// Serialises passes (the keeper's thread, a defragment's).
    pass: Mutex<()>,
    /// Set to stop the thread; with `wake`, so that a drop does not wait
    /// for the end of a [`PASS_EVERY`].
    stop: Mutex<bool>,
    wake: Condvar,
}

impl TrashKeeper {
    /// Starts keeping the trash of the keyspace in `root` (its first pass
    /// comes [`PASS_EVERY`] later, or with the first [`TrashKeeper::pass`]).
    pub(super) fn start(root: &Path) -> std::io::Result<TrashKeeper> {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            pass: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cairn-fjall-trash".into())
                .spawn(move || shared.run())?
        };
        Ok(TrashKeeper {
            shared,
            thread: Some(thread),
        })
    }

    /// A pass now, on the caller's thread (waits for one the keeper's
    /// thread is making).
    pub(super) fn pass(&self) -> std::io::Result<Pass> {
        self.shared.pass()
    }
}

impl Drop for TrashKeeper {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the fjall trash keeper panicked");
            }
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut failing = false;
        loop {
            {
                let mut stop = self.stop.lock();
                if !*stop {
                    self.wake.wait_for(&mut stop, PASS_EVERY);
                }
                if *stop {
                    return;
                }
            }
            // A failure (a full disk, say) is logged once until a pass
            // succeeds again; fjall then frees its files itself, as
            // without the keeper.
            match self.pass() {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(cause = %e, "fjall trash keeper: a pass failed");
                }
                Err(_) => {}
            }
        }
    }

    fn pass(&self) -> std::io::Result<Pass> {
        let _one_at_a_time = self.pass.lock();
        let trash = self.root.join(TRASH);
        std::fs::create_dir_all(&trash)?;
        let mut done = Pass::default();
        // The names already in the trash: the files this pass may free
        // (the ones it links below have two names, and stay).
        let in_trash = list(&trash)?;
        let named: HashSet<OsString> = in_trash.iter().map(|e| e.file_name()).collect();
        for part in list(&self.root.join("partitions"))? {
            if !part.file_type()?.is_dir() {
                continue;
            }
            for segment in list(&part.path().join("segments"))? {
                let mut name = part.file_name();
                name.push(".");
                name.push(segment.file_name());
                if named.contains(&name) {
                    continue;
                }
                match std::fs::hard_link(segment.path(), trash.join(&name)) {
                    Ok(()) => done.linked += 1,
                    // Dropped by fjall meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut open = None;
        for entry in in_trash {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.nlink() > 1 {
                continue;
            }
            // fjall unlinks a dropped segment before closing its
            // descriptors: one still open is closed by fjall soon, and
            // must not free the blocks there; the next pass frees it.
            let open = open.get_or_insert_with(open_files);
            if open.contains(&(meta.dev(), meta.ino())) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    done.freed += 1;
                    done.freed_bytes += meta.blocks() * 512;
                    std::thread::sleep(FREE_PAUSE);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if done.freed > 0 {
            tracing::debug!(
                linked = done.linked,
                freed = done.freed,
                freed_bytes = done.freed_bytes,
                "fjall trash keeper: segment files freed"
            );
        }
        Ok(done)
    }
}

/// The entries of `dir` (none if it does not exist: a partition being
/// created or deleted).
fn list(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The files this process holds open, as (device, inode) (Linux: from
/// /proc/self/fd; elsewhere none is known, and a file is freed as soon as
/// its last name is ours).
fn open_files() -> HashSet<(u64, u64)> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}
