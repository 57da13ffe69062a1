//! Range: etcd's RangeRequest semantics (revision checks, limit and `more`,
//! `count`, sorting, revision filters, keys_only, count_only) over any
//! [`ReadView`].
//!
//! Two views exist: the committed store, read concurrently by gRPC handlers
//! through [`crate::mvcc::Store::range`], and the apply layer's write
//! transaction, which also sees the writes made earlier in the same raft
//! batch and the same txn. Both answer a range identically because both go
//! through [`range`] here.

use std::cmp::Ordering;

use crate::error::{EtcdError, StorageError};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

use super::key_index::KeyRange;
use super::revision::Revision;

/// Why a read failed: the client asked for something etcd refuses
/// (compacted or future revision), or the member's storage is broken.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Client(#[from] EtcdError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A consistent picture of the store at one current revision.
pub trait ReadView {
    /// The revision reads default to (and the upper bound for `revision`).
    fn rev(&self) -> i64;
    /// Reads below this revision fail with `Compacted`.
    fn compact_rev(&self) -> i64;
    /// The record revision of every key in `range` that existed at `at`, in
    /// key order. Fails with `Compacted` if a compaction above `at` overtook
    /// the walk (the committed store lets go of its lock between steps).
    fn live_revisions(&self, range: &KeyRange, at: i64) -> Result<Vec<Revision>, ReadError>;
    /// The key-value stored at a revision that [`ReadView::live_revisions`] returned.
    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError>;

    /// The key-values of every key in `range` at the view's revision.
    fn range_kvs(&self, range: &KeyRange) -> Result<Vec<KeyValue>, ReadError> {
        self.live_revisions(range, self.rev())?
            .into_iter()
            .map(|r| self.record(r).map_err(ReadError::from))
            .collect()
    }
}

/// The revision a read asking for `requested` (<= 0 = current) reads at, as
/// etcd checks it: above the current revision is `FutureRev`, below the
/// compact revision `Compacted` (the compact revision itself is readable).
pub fn read_revision(requested: i64, current: i64, compact: i64) -> Result<i64, EtcdError> {
    let at = match requested {
        r if r > current => return Err(EtcdError::FutureRev),
        r if r <= 0 => current,
        r => r,
    };
    if at < compact {
        return Err(EtcdError::Compacted);
    }
    Ok(at)
}

/// A header carrying only the revision; the server fills in the rest.
pub fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Records read to estimate a response's size before the rest are read.
pub const SAMPLE: usize = 16;

/// Answers a (validated) RangeRequest against `view`, as etcd's applier does.
///
/// The header revision is the view's current revision, also for reads at an
/// older revision. `count` is the number of keys in the range at the read
/// revision, before the min/max revision filters (as etcd reports it).
pub fn range<V: ReadView + ?Sized>(
    view: &V,
    req: &RangeRequest,
) -> Result<RangeResponse, ReadError> {
    range_metered(view, req, &mut Unmetered)
}

/// What a metered read tells its caller about its size, so that the caller
/// can refuse a response that would not fit a memory budget
/// (`grpc::budget::Charge`). The first error ends the read and is returned.
pub trait Meter {
    /// Once, before the records past the sample are read: the estimated
    /// size of everything the read will fetch.
    fn reserve(&mut self, estimate: u64) -> Result<(), EtcdError>;
    /// Each record's approximate encoded size, as it is read.
    fn add(&mut self, bytes: usize) -> Result<(), EtcdError>;
}

/// A meter that accepts everything.
pub struct Unmetered;

impl Meter for Unmetered {
    fn reserve(&mut self, _: u64) -> Result<(), EtcdError> {
        Ok(())
    }
    fn add(&mut self, _: usize) -> Result<(), EtcdError> {
        Ok(())
    }
}

/// [`range`], under a [`Meter`]. Admission is decided before the values
/// are read: the read first fetches [`SAMPLE`] records spread evenly over
/// the ones it will return, tells `meter` the size they extrapolate to
/// (sample bytes × records / sampled), and only then reads the rest (the
/// sampled records are kept, not read twice). So a refused read has read
/// the index and at most [`SAMPLE`] records. Each record is then also told
/// to `meter` as it is read, which catches an estimate that was too low.
pub fn range_metered<V: ReadView + ?Sized>(
    view: &V,
    req: &RangeRequest,
    meter: &mut dyn Meter,
) -> Result<RangeResponse, ReadError> {
    crate::io_metrics::MVCC_RANGE.inc();
    let cur = view.rev();
    let at = read_revision(req.revision, cur, view.compact_rev())?;
    let revs = view.live_revisions(&KeyRange::new(&req.key, &req.range_end), at)?;
    let count = revs.len() as i64;
    if req.count_only {
        return Ok(RangeResponse {
            header: header(cur),
            kvs: vec![],
            more: false,
            count,
        });
    }

    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Like etcd: with an explicit sort order or a filter, fetch everything and
    // truncate afterwards; otherwise fetch one more than the limit to learn
    // `more`. Note the default ascending sort for a non-key target (below)
    // does not count as explicit, so it sorts only the fetched prefix.
    let fetch = if req.sort_order != SortOrder::None as i32 || filtered || req.limit <= 0 {
        revs.len()
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(revs.len())
    };
    let revs = &revs[..fetch];
    let sampled = SAMPLE.min(fetch);
    let mut sample = Vec::with_capacity(sampled);
    let mut sample_bytes = 0u64;
    for j in 0..sampled {
        // Strictly increasing, since fetch >= sampled.
        let i = j * fetch / sampled;
        let kv = view.record(revs[i])?;
        sample_bytes += record_size(&kv) as u64;
        sample.push((i, kv));
    }
    if sampled > 0 {
        meter.reserve(sample_bytes.saturating_mul(fetch as u64) / sampled as u64)?;
    }
    let mut sample = sample.into_iter().peekable();
    let mut kvs = Vec::with_capacity(fetch);
    for (i, r) in revs.iter().enumerate() {
        let kv = match sample.next_if(|(j, _)| *j == i) {
            Some((_, kv)) => kv,
            None => view.record(*r)?,
        };
        meter.add(record_size(&kv))?;
        kvs.push(kv);
    }

    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }

    sort(&mut kvs, req.sort_order, req.sort_target);

    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(cur),
        kvs,
        more,
        count,
    })
}

/// About the bytes a record takes in a RangeResponse (and in memory while
/// it is built): key, value and the fixed fields with their tags.
pub fn record_size(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len() + RECORD_OVERHEAD
}

/// Tags, lengths and the five integer fields of an encoded KeyValue, at most.
const RECORD_OVERHEAD: usize = 64;

/// Sorts as etcd does: a non-KEY target with order NONE sorts ascending; KEY
/// with NONE keeps the index's key order. Unknown enum values leave the order
/// untouched. The sort is stable, so ties stay in key order.
fn sort(kvs: &mut [KeyValue], order: i32, target: i32) {
    let Ok(target) = SortTarget::try_from(target) else {
        return;
    };
    let order = match SortOrder::try_from(order) {
        Ok(SortOrder::None) if target != SortTarget::Key => SortOrder::Ascend,
        Ok(o) => o,
        Err(_) => return,
    };
    let cmp: fn(&KeyValue, &KeyValue) -> Ordering = match target {
        SortTarget::Key => |a, b| a.key.cmp(&b.key),
        SortTarget::Version => |a, b| a.version.cmp(&b.version),
        SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => |a, b| a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
}
