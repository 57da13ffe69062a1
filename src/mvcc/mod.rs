//! The multi-version key-value store behind the KV API, modelled on etcd's
//! `mvcc` package.
//!
//! Every change is kept as a *revision record* (the key-value as it was after
//! that change) until compaction removes it, so a Range can read the store as
//! it was at any revision since the last compaction. An in-memory key index
//! (per key: its generations of revisions) maps "key K at revision R" to the
//! record to read.
//!
//! Where it sits:
//!
//! ```text
//!  write path: Storage actor ─► apply::apply_batch ─► BatchWriter/WriteTxn ─► Backend (sled)
//!                                                           └─► publish index + revision
//!  read path:  gRPC handler ─► Store::range ─► key index (read lock, in steps)
//!                                             └─► Backend (values, no lock held)
//!  watch:      WatchBroadcaster ─► Store::history ─► revision records in a window
//!  compaction: apply (compact revision) ─► compactor thread ─► prune index,
//!                                          delete old records in batches
//! ```
//!
//! * [`revision`]: the (main, sub) clock and its byte encoding.
//! * [`backend`]: the narrow storage trait, sled and in-memory implementations.
//! * [`buffered`]: the write buffer in front of sled (batched commits).
//! * [`engine`]: `--backend-engine` (sled or fjall) and the data dir's memory
//!   of it; [`fjall_backend`]: the fjall engine.
//! * [`key_index`]: per-key generations; compaction of the index.
//! * [`compaction`]: the background compactor (old records, index pruning)
//!   and the registry of reads in flight it waits for.
//! * [`range`]: RangeRequest semantics over any read view.
//! * [`store`]: [`Store`], open/restore, concurrent reads, HashKV, alarms.
//! * [`history`]: [`Store::history`], the changes in a window of revisions as
//!   watch events (the WatchBroadcaster's catch-up read).
//! * [`writer`]: the batch overlay and per-request write transactions.

pub mod backend;
pub mod buffered;
pub mod compaction;
pub mod defrag;
pub mod engine;
pub mod fjall_backend;
pub mod history;
pub mod key_index;
pub mod range;
pub mod revision;
pub mod store;
pub mod writer;

pub use backend::{
    Backend, BulkItem, BulkPairs, MemBackend, PreparedReplace, SledBackend, WriteBatch,
};
pub use buffered::BufferedBackend;
pub use defrag::DefraggableSled;
pub use engine::Engine;
pub use fjall_backend::FjallBackend;
pub use key_index::KeyRange;
pub use range::{ReadError, ReadView};
pub use revision::Revision;
pub use store::{HashKv, PreparedState, Store, NEVER_COMPACTED};
pub use writer::{BatchWriter, WriteTxn};

/// Writes `contents` as file `name` in `dir`, durably and all at once: a
/// temporary file, fsynced, renamed over `name`, then the directory
/// fsynced. The data dir's small pointer files (`state.current`,
/// `state.engine`, fjall's `cairn-generation`) are written this way, so a
/// crash leaves the old contents or the new, never a torn file.
pub(crate) fn replace_file_durably(
    dir: &std::path::Path,
    name: &str,
    contents: &[u8],
) -> Result<(), crate::error::StorageError> {
    use std::io::Write as _;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes the entries of directory `dir` durable (its new files' names).
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), crate::error::StorageError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests;
