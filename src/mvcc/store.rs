//! [`Store`]: the applied state of the cluster, shared as `Arc<Store>` by one
//! writer (the Storage actor, through [`crate::apply`]) and many readers (gRPC
//! handlers calling [`Store::range`] on their own threads).
//!
//! What it holds: the backend (revision records and meta keys, layout below),
//! the in-memory key index, and the published current revision, compact
//! revision, applied raft index and alarms.
//!
//! Backend layout, all in one tree so one batch covers everything:
//!
//! ```text
//! k<main:8><_><sub:8>[t]   revision record -> mvccpb.KeyValue (t = tombstone, value is {key})
//! m/consistent_index        applied raft index, u64 big-endian
//! m/compact_rev             last compaction revision, i64 big-endian
//! m/finished_compact_rev    last compaction whose old records are all gone
//! a/<member:8><type:4>      an active alarm (empty value)
//! n/<member:8>              a member's published name and client URLs
//! c/<member:8>              a member of the raft configuration -> cairnpb.MemberRecord
//! x/<member:8>              a member removed from the cluster (empty value)
//! l/<id:8>                  a lease -> cairnpb.Lease (see `lease::table`)
//! ```
//!
//! Readers never see half of a batch: a write batch's records land in the
//! backend before the index learns about them and before the new current
//! revision is published, both under the index write lock.
//!
//! Readers hold the index read lock only to choose revisions, never while
//! reading values, so a big Range, a HashKV or a watch catch-up does not
//! hold up the apply thread's publish (which takes the write lock). That is
//! safe because revision records are immutable: a record is written once,
//! before the index points at it, and is only ever removed by the
//! background compactor ([`super::compaction`]), which removes only records
//! below the compact revision that no reader at or above it needs, and waits
//! for reads that started below it (registered under the read lock) before
//! removing anything. A Range walks the index in steps of [`RANGE_STEP`]
//! keys, letting go of the lock in between: the keys live at a fixed past
//! revision do not change when later writes or a compaction at or below that
//! revision land, so the steps add up to one consistent answer (a compaction
//! above the read revision makes the read fail with `Compacted`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use prost::Message;

use crate::auth::state::AuthState;
use crate::error::{EtcdError, StorageError};
use crate::lease::table::{decode_lease, LeaseEntry, LeaseTable, LEASE_PREFIX};
use crate::proto::cairnpb::{Lease, MemberAttributes, MemberRecord};
use crate::proto::etcdserverpb::{AlarmMember, RangeRequest, RangeResponse};
use crate::proto::mvccpb::KeyValue;

use super::backend::{Backend, WriteBatch};
use super::key_index::{IndexTree, KeyIndex, KeyRange};

/// The fields of a revision record (`mvccpb.KeyValue`) that rebuilding the
/// key index needs: the value (field 5) is left out, so prost skips its
/// bytes instead of copying them (restart time grows with the record count).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RecordHead {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}
use super::compaction::{self, Compaction, ReadGuard};
use super::range::{self, ReadError, ReadView};
use super::revision::Revision;

/// Prefix of revision records.
pub(crate) const REV_PREFIX: &[u8] = b"k";
/// Meta key: the raft index of the last applied entry.
pub(crate) const META_CONSISTENT_INDEX: &[u8] = b"m/consistent_index";
/// Meta key: the revision of the last compaction.
pub(crate) const META_COMPACT_REV: &[u8] = b"m/compact_rev";
/// Meta key: the last compaction whose old records are all deleted (etcd's
/// "finished compact revision"); below `m/compact_rev` while the background
/// compactor is at work, also across a restart.
pub(crate) const META_FINISHED_COMPACT_REV: &[u8] = b"m/finished_compact_rev";
/// Prefix of alarm keys.
pub(crate) const ALARM_PREFIX: &[u8] = b"a/";
/// Prefix of published member attributes (etcd's publish).
pub(crate) const MEMBER_PREFIX: &[u8] = b"n/";
/// Prefix of the members of the raft configuration.
pub(crate) const CONF_MEMBER_PREFIX: &[u8] = b"c/";
/// Prefix of removed members' ids (`r/` holds auth roles).
pub(crate) const REMOVED_PREFIX: &[u8] = b"x/";

/// The compact revision of a store that was never compacted (etcd's value,
/// visible to clients in HashKV and watch responses).
pub const NEVER_COMPACTED: i64 = -1;

/// Keys a Range examines per hold of the index read lock (about half a
/// millisecond of index walking).
pub const RANGE_STEP: usize = 10_000;

/// The backend key of a revision record.
pub(crate) fn rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = REV_PREFIX.to_vec();
    k.extend_from_slice(&rev.to_bytes(tombstone));
    k
}

/// The backend key of an alarm.
pub(crate) fn alarm_key(member_id: u64, alarm: i32) -> Vec<u8> {
    let mut k = ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member_id.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// The backend key of a member's published attributes.
pub(crate) fn conf_member_key(member_id: u64) -> Vec<u8> {
    let mut k = CONF_MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&member_id.to_be_bytes());
    k
}

pub(crate) fn removed_key(member_id: u64) -> Vec<u8> {
    let mut k = REMOVED_PREFIX.to_vec();
    k.extend_from_slice(&member_id.to_be_bytes());
    k
}

pub(crate) fn member_key(member_id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&member_id.to_be_bytes());
    k
}

fn decode_alarm_key(k: &[u8]) -> Result<(u64, i32), StorageError> {
    let body = &k[ALARM_PREFIX.len().min(k.len())..];
    if body.len() != 12 {
        return Err(StorageError::corrupt("alarm key", format!("{k:02x?}")));
    }
    let mut m = [0u8; 8];
    let mut t = [0u8; 4];
    m.copy_from_slice(&body[..8]);
    t.copy_from_slice(&body[8..]);
    Ok((u64::from_be_bytes(m), i32::from_be_bytes(t)))
}

fn decode_i64(what: &'static str, v: &[u8]) -> Result<i64, StorageError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StorageError::corrupt(what, format!("{} bytes", v.len())))?;
    Ok(i64::from_be_bytes(b))
}

/// Everything a reader must see together, guarded by one lock.
#[derive(Debug)]
pub(crate) struct Committed {
    /// History of every key with a revision left in the backend.
    pub(crate) index: IndexTree,
    /// Revision of the last applied write; reads default to it.
    pub(crate) current_rev: i64,
    /// Reads below this revision fail with `Compacted`.
    pub(crate) compact_rev: i64,
    /// Active alarms as (member id, alarm type), ordered for stable listings.
    pub(crate) alarms: BTreeSet<(u64, i32)>,
    /// Every lease with its attached keys.
    pub(crate) leases: LeaseTable,
    /// Members' published name and client URLs, by member id.
    pub(crate) members: BTreeMap<u64, MemberAttributes>,
    /// The members of the raft configuration, by id.
    pub(crate) membership: BTreeMap<u64, MemberRecord>,
    /// Ids of members removed from the cluster (never to come back).
    pub(crate) removed: BTreeSet<u64>,
}

/// The result of [`Store::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C (Castagnoli) over the revision records up to the revision, as etcd computes it.
    pub hash: u32,
    /// The store's compact revision when the hash was taken.
    pub compact_revision: i64,
    /// The store's current revision when the hash was taken.
    pub current_revision: i64,
}

/// The MVCC key-value store. See the module documentation.
pub struct Store {
    /// Where revision records and meta keys live.
    backend: Arc<dyn Backend>,
    /// Index, revisions and alarms, published together after each batch.
    /// Shared with the compactor thread, which prunes the index.
    pub(crate) committed: Arc<RwLock<Committed>>,
    /// Copy of `committed.current_rev` readable without the lock (status, metrics).
    current_rev: AtomicI64,
    /// Copy of `committed.compact_rev` readable without the lock.
    compact_rev: AtomicI64,
    /// Raft index of the last applied entry; advanced only after its batch is
    /// written and published, so `applied_index() >= i` means entry i is visible.
    applied_index: AtomicU64,
    /// Held by the one [`super::BatchWriter`] in flight: the write path reads the
    /// committed index without the write lock, which is only safe if nobody
    /// else is writing.
    pub(crate) writer: Mutex<()>,
    /// Reads in flight and the compactor's progress (see [`super::compaction`]).
    pub(crate) compaction: Arc<Compaction>,
    /// Taken (shared) by every read before the index lock, for its whole
    /// length; [`Store::replace_all`] takes it exclusively, so no read ever
    /// sees half of a state being replaced by another.
    gate: RwLock<()>,
    /// The compactor thread; stopped and joined when the store is dropped.
    compactor: Option<JoinHandle<()>>,
    /// The auth store (users, roles, enabled, revision), replaced whole by
    /// each batch that changes it; readers clone the `Arc` (src/auth/).
    pub(crate) auth: RwLock<Arc<AuthState>>,
    /// Copy of the auth store's enabled flag, readable without the lock:
    /// every request asks, and with auth off that is all it asks.
    pub(crate) auth_enabled: std::sync::atomic::AtomicBool,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.compaction.stop();
        if let Some(t) = self.compactor.take() {
            // The thread stops between two steps; a panic there was logged.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("current_revision", &self.current_revision())
            .field("compact_revision", &self.compact_revision())
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store on `backend`, rebuilding the key index from the
    /// revision records. A fresh store is at revision 1 (the first write gets 2).
    pub fn open(backend: Arc<dyn Backend>) -> Result<Store, StorageError> {
        let loaded = load(backend.as_ref())?;
        let (current_rev, compact_rev) =
            (loaded.committed.current_rev, loaded.committed.compact_rev);
        let committed = Arc::new(RwLock::new(loaded.committed));
        let state = Arc::new(Compaction::new(loaded.finished.min(compact_rev)));
        let compactor = compaction::spawn(backend.clone(), committed.clone(), state.clone())?;
        let auth = AuthState::load(&*backend)?;
        let auth_enabled = std::sync::atomic::AtomicBool::new(auth.enabled);
        let auth = RwLock::new(Arc::new(auth));
        Ok(Store {
            backend,
            committed,
            current_rev: AtomicI64::new(current_rev),
            compact_rev: AtomicI64::new(compact_rev),
            applied_index: AtomicU64::new(loaded.applied),
            writer: Mutex::new(()),
            compaction: state,
            gate: RwLock::new(()),
            compactor: Some(compactor),
            auth,
            auth_enabled,
        })
    }

    /// Replaces the whole state with another one (a raft snapshot image
    /// received from the leader): `fill` writes the new state's records
    /// into the emptied backend, in batches, and the index, revisions,
    /// leases, alarms and members are then rebuilt from them as at start-up.
    ///
    /// Nothing else runs meanwhile: the caller is the one writer (the
    /// Storage actor), the compactor is paused between two steps, and reads
    /// of the backend wait at the gate (those in flight finish first), so no
    /// read sees a mix of the two states; the in-memory state (index,
    /// members, leases) is swapped in one step at the end. `fill` must write the consistent index last:
    /// a crash half-way leaves a backend without one, which start-up
    /// recognises and fills again from the image.
    pub fn replace_all<E: From<StorageError>>(
        &self,
        fill: impl FnOnce(&dyn Fn(WriteBatch) -> Result<(), StorageError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let _writer = self.writer.lock();
        let _paused = self.compaction.pause();
        let _gate = self.gate.write();
        let t = std::time::Instant::now();
        clear(self.backend.as_ref())?;
        let cleared = t.elapsed();
        // The key index is rebuilt from the revision records as they go
        // in, rather than by scanning them back out afterwards.
        let replay = std::cell::RefCell::new(Some(Replay::new()));
        fill(&|batch| {
            let mut r = replay.borrow_mut();
            if let Some(replay) = r.as_mut() {
                if let Err(e) = replay.feed_batch(&batch) {
                    tracing::warn!(cause = %e, "rebuilding the index by a scan instead");
                    *r = None;
                }
            }
            self.backend.write_bulk(batch)
        })?;
        let filled = t.elapsed();
        let loaded = load_from(self.backend.as_ref(), replay.into_inner())?;
        tracing::info!(
            clear_ms = cleared.as_millis() as u64,
            fill_ms = (filled - cleared).as_millis() as u64,
            load_ms = (t.elapsed() - filled).as_millis() as u64,
            "state store replaced"
        );
        self.swap_in(loaded)?;
        Ok(())
    }

    /// [`Store::replace_all`] for an engine that replaces its state in one
    /// step ([`Backend::bulk_replace`]): `pairs` is the new state's every
    /// record in key order, the consistent index included. The key index is
    /// replayed from the revision records as they stream past. A failed or
    /// refused stream leaves the old state, on disk and in memory.
    pub fn replace_sorted(&self, pairs: super::BulkPairs<'_>) -> Result<(), StorageError> {
        let prepared = self.prepare_sorted(pairs)?;
        self.commit_prepared(prepared)
    }

    /// The first half of [`Store::replace_sorted`]: writes the new state
    /// beside the current one ([`Backend::prepare_replace`]) and replays
    /// its key index, while the store goes on serving and applying as
    /// usual (a raft snapshot is ingested while it streams in). Nothing
    /// reads the result until [`Store::commit_prepared`]; dropped instead,
    /// it is removed.
    pub fn prepare_sorted(
        &self,
        pairs: super::BulkPairs<'_>,
    ) -> Result<PreparedState, StorageError> {
        let t = std::time::Instant::now();
        let mut replay = Some(Replay::new());
        let mut fed = pairs.inspect(|item| {
            if let (Ok((k, v)), Some(r)) = (item, replay.as_mut()) {
                if k.starts_with(REV_PREFIX) {
                    if let Err(e) = r.record(k, v) {
                        tracing::warn!(cause = %e, "rebuilding the index by a scan instead");
                        replay = None;
                    }
                }
            }
        });
        let prepared = self.backend.prepare_replace(&mut fed)?;
        tracing::info!(
            fill_ms = t.elapsed().as_millis() as u64,
            "replacement state written"
        );
        Ok(PreparedState { prepared, replay })
    }

    /// Makes a prepared state durable and keeps it across a restart, tagged
    /// `tag` ([`Backend::keep_prepared`](super::Backend::keep_prepared)).
    pub fn keep_prepared(
        &self,
        prepared: &mut PreparedState,
        tag: u64,
    ) -> Result<(), StorageError> {
        self.backend.keep_prepared(&mut prepared.prepared, tag)
    }

    /// The prepared states kept across the last restart, with their tags
    /// (handed out once; dropping one removes it). Their key index is
    /// rebuilt by a scan when committed.
    pub fn kept_prepared(&self) -> Vec<(u64, PreparedState)> {
        self.backend
            .kept_prepared()
            .into_iter()
            .map(|(tag, prepared)| {
                (
                    tag,
                    PreparedState {
                        prepared,
                        replay: None,
                    },
                )
            })
            .collect()
    }

    /// The second half of [`Store::replace_sorted`]: the prepared state
    /// becomes the state in one step (the engine's commit point), then the
    /// in-memory state rebuilt from it. Readers of the backend wait at the
    /// gate for this short while only.
    pub fn commit_prepared(&self, prepared: PreparedState) -> Result<(), StorageError> {
        let _writer = self.writer.lock();
        let _paused = self.compaction.pause();
        let _gate = self.gate.write();
        let t = std::time::Instant::now();
        self.backend.commit_replace(prepared.prepared)?;
        let committed = t.elapsed();
        let loaded = load_from(self.backend.as_ref(), prepared.replay)?;
        tracing::info!(
            commit_ms = committed.as_millis() as u64,
            load_ms = (t.elapsed() - committed).as_millis() as u64,
            "state store replaced in one step"
        );
        self.swap_in(loaded)
    }

    /// The end of a replacement: the in-memory state rebuilt from the new
    /// records takes the old one's place in one step (called with the
    /// writer lock, the gate and the compactor's pause held).
    fn swap_in(&self, loaded: Loaded) -> Result<(), StorageError> {
        // The in-memory state is swapped only now: until here, what needs
        // no backend read (membership, removed ids, leases; the peer
        // service checks them on every message) answers from the old state
        // at once instead of waiting seconds for a big image. Backend
        // readers wait at the gate.
        let mut c = self.committed.write();
        *c = loaded.committed;
        let auth = AuthState::load(self.backend.as_ref())?;
        self.auth_enabled.store(auth.enabled, Ordering::Release);
        *self.auth.write() = Arc::new(auth);
        self.compaction
            .restart_from(loaded.finished.min(c.compact_rev));
        self.publish(&c, loaded.applied);
        drop(c);
        self.compaction.kick();
        Ok(())
    }

    /// Taken by a read before the index lock (see `gate`).
    pub(crate) fn enter(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read_recursive()
    }

    /// The last compaction whose old records are all gone from the backend
    /// (at most [`Store::compact_revision`]).
    pub fn compaction_finished(&self) -> i64 {
        self.compaction.finished()
    }

    /// Sets the compactor's batch size and pause (etcd's
    /// `--experimental-compaction-batch-limit` and
    /// `--experimental-compaction-sleep-interval`), from its next batch on.
    pub fn set_compaction_batches(&self, batches: compaction::Batches) {
        self.compaction.set_batches(batches);
    }

    /// Blocks until the old records of compaction at `rev` (or a later one)
    /// are gone from the backend: etcd's `physical` Compact. Blocking: async
    /// callers run it with `spawn_blocking`.
    pub fn wait_compacted(&self, rev: i64) {
        self.compaction.wait_finished(rev);
    }

    /// Revision of the last applied write.
    pub fn current_revision(&self) -> i64 {
        self.current_rev.load(Ordering::Acquire)
    }

    /// Revision of the last compaction, or [`NEVER_COMPACTED`].
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev.load(Ordering::Acquire)
    }

    /// Raft index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The auth store as of the last applied batch.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().clone()
    }

    /// Whether auth is enabled, as of the last applied batch (no lock).
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled.load(Ordering::Acquire)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Publishes a written batch's counters; called with the write lock held.
    pub(crate) fn publish(&self, c: &Committed, applied_index: u64) {
        self.current_rev.store(c.current_rev, Ordering::Release);
        self.compact_rev.store(c.compact_rev, Ordering::Release);
        self.applied_index.store(applied_index, Ordering::Release);
    }

    /// Answers a RangeRequest (already validated) at `req.revision` (<= 0 =
    /// current). The header has only `revision` set: the store's current
    /// revision at read time; the server fills in the other fields.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ReadError> {
        range::range(&self.snapshot(req.revision)?, req)
    }

    /// [`Store::range`], with each record's size told to `meter` as it is
    /// read (see [`range::range_metered`]).
    pub fn range_metered(
        &self,
        req: &RangeRequest,
        meter: &mut dyn range::Meter,
    ) -> Result<RangeResponse, ReadError> {
        range::range_metered(&self.snapshot(req.revision)?, req, meter)
    }

    /// Pins the current and compact revisions for a read at `requested`
    /// (<= 0 = current) and registers the read, so that the records it
    /// resolves stay in the backend until it is done.
    pub(crate) fn snapshot(&self, requested: i64) -> Result<Snapshot<'_>, ReadError> {
        let gate = self.enter();
        let c = self.committed.read();
        let at = range::read_revision(requested, c.current_rev, c.compact_rev)?;
        Ok(Snapshot {
            store: self,
            rev: c.current_rev,
            compact_rev: c.compact_rev,
            _read: self.compaction.register(at),
            _gate: gate,
        })
    }

    /// etcd's HashKV: CRC-32C over the revision records up to `revision` (0 =
    /// current), skipping records at or below the compact revision that a
    /// compaction at `revision` would remove, so that members that compacted
    /// at different moments agree.
    ///
    /// Blocking, and long on a big store: callers run it with
    /// `spawn_blocking`. Like etcd, it first waits for a compaction in
    /// progress to finish, then keeps the next one from deleting anything
    /// until it is done (a registered read at the compact revision), so it
    /// hashes exactly the records a finished compaction leaves. The index
    /// lock is only held in short steps, never across the scan.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, ReadError> {
        let _gate = self.enter();
        let (compact_rev, current_rev, upto, _read) = loop {
            self.compaction.wait_finished(self.compact_revision());
            let c = self.committed.read();
            if self.compaction.finished() < c.compact_rev {
                // Another compaction was applied meanwhile: wait for it too.
                continue;
            }
            if revision > 0 && revision <= c.compact_rev {
                return Err(EtcdError::Compacted.into());
            }
            if revision > 0 && revision > c.current_rev {
                return Err(EtcdError::FutureRev.into());
            }
            let upto = if revision == 0 {
                c.current_rev
            } else {
                revision
            };
            let read = self.compaction.register(c.compact_rev);
            break (c.compact_rev, c.current_rev, upto, read);
        };
        let keep = self.keep(upto)?;
        let mut h = Crc32c::new();
        h.update(b"key");
        let end = rev_key(Revision::new(upto.saturating_add(1), 0), false);
        for item in self.backend.scan_range(REV_PREFIX, &end) {
            let (k, v) = item?;
            let rev_bytes = &k[REV_PREFIX.len()..];
            let (rev, _) = Revision::from_bytes(rev_bytes)?;
            if rev.main <= compact_rev && !keep.is_empty() && !keep.contains(&rev) {
                continue;
            }
            h.update(rev_bytes);
            h.update(&v);
        }
        Ok(HashKv {
            hash: h.finish(),
            compact_revision: compact_rev,
            current_revision: current_rev,
        })
    }

    /// The revision of every key live at `at` (etcd's `keep`), walking the
    /// index in [`RANGE_STEP`] steps; `Compacted` if a compaction above `at`
    /// overtakes the walk.
    fn keep(&self, at: i64) -> Result<std::collections::HashSet<Revision>, ReadError> {
        let mut keep = std::collections::HashSet::new();
        let all = KeyRange::FromKey(Vec::new());
        self.walk(&all, at, |ki| {
            if let Some(k) = ki.get(at) {
                keep.insert(k.modified);
            }
        })?;
        Ok(keep)
    }

    /// Calls `f` on the history of every key in `range`, in key order,
    /// holding the index read lock for [`RANGE_STEP`] keys at a time. Fails
    /// with `Compacted` when the compact revision passes `at` meanwhile (the
    /// index may be pruned above `at` from then on).
    fn walk(
        &self,
        range: &KeyRange,
        at: i64,
        mut f: impl FnMut(&KeyIndex),
    ) -> Result<(), ReadError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let c = self.committed.read();
            if at < c.compact_rev {
                return Err(EtcdError::Compacted.into());
            }
            let (mut more, mut last) = (false, None);
            for (n, (k, ki)) in c.index.range_after(range, after.as_deref()).enumerate() {
                if n == RANGE_STEP {
                    more = true;
                    break;
                }
                f(ki);
                last = Some(k);
            }
            if !more {
                return Ok(());
            }
            after = last.cloned();
        }
    }

    /// Lease `id` with its attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseEntry> {
        self.committed.read().leases.get(id).cloned()
    }

    /// Every lease's record, in id order.
    pub fn leases(&self) -> Vec<Lease> {
        self.committed.read().leases.records()
    }

    /// Every member's published attributes, by member id.
    pub fn member_attributes(&self) -> BTreeMap<u64, MemberAttributes> {
        self.committed.read().members.clone()
    }

    /// The members of the raft configuration, by id.
    pub fn membership(&self) -> BTreeMap<u64, MemberRecord> {
        self.committed.read().membership.clone()
    }

    /// Whether member `id` is a learner (it takes no client writes and
    /// serves no linearizable reads, as in etcd).
    pub fn is_learner(&self, id: u64) -> bool {
        self.committed
            .read()
            .membership
            .get(&id)
            .is_some_and(|m| m.is_learner)
    }

    /// Whether member `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.committed.read().removed.contains(&id)
    }

    /// The raft configuration the applied state describes: the voters and
    /// learners among its members.
    pub fn conf_state(&self) -> raft::eraftpb::ConfState {
        conf_state_of(self.committed.read().membership.values())
    }

    /// Every active alarm, ordered by member id then alarm type.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.committed
            .read()
            .alarms
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }
}

/// A state written beside the current one by [`Store::prepare_sorted`],
/// with the key index replayed from it, waiting for
/// [`Store::commit_prepared`]. Dropped uncommitted, the engine removes it.
pub struct PreparedState {
    prepared: super::PreparedReplace,
    /// `None` if the replay gave up (the commit then scans the records).
    replay: Option<Replay>,
}

impl std::fmt::Debug for PreparedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedState").finish_non_exhaustive()
    }
}

/// What [`load`] rebuilds from a backend.
struct Loaded {
    committed: Committed,
    /// The applied raft index the backend holds (0: none).
    applied: u64,
    /// The last compaction whose old records are all gone.
    finished: i64,
}

/// Rebuilds the in-memory state (key index, revisions, alarms, members,
/// leases) from the records in `backend`.
fn load(backend: &dyn Backend) -> Result<Loaded, StorageError> {
    load_from(backend, None)
}

/// The key index and each live key's lease, replayed from revision records
/// in revision order. Compaction leaves, for each key, a first record
/// carrying its create revision and version; tombstones of keys with no
/// earlier record left are ignored. A compaction cut short by a restart
/// leaves a suffix of each key's history, which replays the same way; the
/// compactor then finishes the job.
struct Replay {
    index: IndexTree,
    last_main: i64,
    /// The lease named by each live key's latest record.
    key_leases: std::collections::HashMap<Vec<u8>, i64>,
}

impl Replay {
    fn new() -> Replay {
        Replay {
            index: IndexTree::new(),
            last_main: 1,
            key_leases: std::collections::HashMap::new(),
        }
    }

    /// Replays one revision record (`k` includes [`REV_PREFIX`]).
    fn record(&mut self, k: &[u8], v: &[u8]) -> Result<(), StorageError> {
        let (rev, tombstone) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
        let kv = RecordHead::decode(v).map_err(|e| StorageError::corrupt("revision record", e))?;
        if rev.main < self.last_main {
            return Err(StorageError::corrupt(
                "revision record",
                "revisions out of order",
            ));
        }
        self.last_main = rev.main;
        if tombstone || kv.lease == 0 {
            // Most stores have no leased key: no hashing then.
            if !self.key_leases.is_empty() {
                self.key_leases.remove(&kv.key);
            }
        } else {
            self.key_leases.insert(kv.key.clone(), kv.lease);
        }
        // One search of the index per record.
        use std::collections::btree_map::Entry;
        match self.index.slot(kv.key) {
            Entry::Occupied(mut ki) if tombstone => {
                ki.get_mut().tombstone(rev);
            }
            Entry::Occupied(mut ki) => ki.get_mut().put(rev),
            Entry::Vacant(_) if tombstone => {}
            Entry::Vacant(slot) => {
                slot.insert(KeyIndex::restored(kv.create_revision, rev, kv.version));
            }
        }
        Ok(())
    }

    /// Replays the revision records a bulk batch puts. It must put them in
    /// revision order and delete none (a snapshot image does).
    fn feed_batch(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        for (k, v) in batch.ops() {
            if !k.starts_with(REV_PREFIX) {
                continue;
            }
            let Some(v) = v else {
                return Err(StorageError::corrupt(
                    "revision record",
                    "deleted in a bulk load",
                ));
            };
            self.record(k, v)?;
        }
        Ok(())
    }
}

/// [`load`], with the revision records already replayed (`replay`) or not.
fn load_from(backend: &dyn Backend, replay: Option<Replay>) -> Result<Loaded, StorageError> {
    let applied = match backend.get(META_CONSISTENT_INDEX)? {
        Some(v) => decode_i64("consistent index", &v)? as u64,
        None => 0,
    };
    let compact_rev = match backend.get(META_COMPACT_REV)? {
        Some(v) => decode_i64("compact revision", &v)?,
        None => NEVER_COMPACTED,
    };
    // Missing in stores written before compaction moved to the
    // background: the pass then runs once more and finds nothing to do.
    let finished = match backend.get(META_FINISHED_COMPACT_REV)? {
        Some(v) => decode_i64("finished compact revision", &v)?,
        None => NEVER_COMPACTED,
    };

    let replay = match replay {
        Some(replay) => replay,
        None => {
            let mut replay = Replay::new();
            for item in backend.scan_prefix(REV_PREFIX) {
                let (k, v) = item?;
                replay.record(&k, &v)?;
            }
            replay
        }
    };
    let Replay {
        index,
        last_main,
        key_leases,
    } = replay;
    // The newest records may all have been compacted away (a delete at the
    // compaction revision): the revision is then the compaction revision.
    let current_rev = last_main.max(compact_rev).max(1);

    let mut alarms = BTreeSet::new();
    for item in backend.scan_prefix(ALARM_PREFIX) {
        let (k, _) = item?;
        alarms.insert(decode_alarm_key(&k)?);
    }

    let mut members = BTreeMap::new();
    for item in backend.scan_prefix(MEMBER_PREFIX) {
        let (_, v) = item?;
        let m = MemberAttributes::decode(v.as_slice())
            .map_err(|e| StorageError::corrupt("member attributes", e))?;
        members.insert(m.id, m);
    }

    let mut membership = BTreeMap::new();
    for item in backend.scan_prefix(CONF_MEMBER_PREFIX) {
        let (_, v) = item?;
        let m = MemberRecord::decode(v.as_slice())
            .map_err(|e| StorageError::corrupt("member record", e))?;
        membership.insert(m.id, m);
    }
    let mut removed = BTreeSet::new();
    for item in backend.scan_prefix(REMOVED_PREFIX) {
        let (k, _) = item?;
        let raw: [u8; 8] = k[REMOVED_PREFIX.len()..]
            .try_into()
            .map_err(|_| StorageError::corrupt("removed member", "key is not 10 bytes"))?;
        removed.insert(u64::from_be_bytes(raw));
    }

    let mut leases = LeaseTable::new();
    for item in backend.scan_prefix(LEASE_PREFIX) {
        let (_, v) = item?;
        leases.upsert(&decode_lease(&v)?);
    }
    for (key, lease) in key_leases {
        leases.attach(lease, &key);
    }

    Ok(Loaded {
        committed: Committed {
            index,
            current_rev,
            compact_rev,
            alarms,
            leases,
            members,
            membership,
            removed,
        },
        applied,
        finished,
    })
}

/// The raft configuration of a set of members.
pub fn conf_state_of<'a>(
    members: impl Iterator<Item = &'a MemberRecord>,
) -> raft::eraftpb::ConfState {
    let mut cs = raft::eraftpb::ConfState::default();
    for m in members {
        if m.is_learner {
            cs.learners.push(m.id);
        } else {
            cs.voters.push(m.id);
        }
    }
    cs
}

/// Writes the members of a new cluster into an empty state store, with the
/// applied index of the raft log's starting point (a new log begins after
/// index `applied`, see `LogStore::bootstrap`).
pub fn seed_membership(
    backend: &dyn Backend,
    members: &[MemberRecord],
    applied: u64,
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    for m in members {
        batch.put(conf_member_key(m.id), m.encode_to_vec());
    }
    batch.put(META_CONSISTENT_INDEX, applied.to_be_bytes().to_vec());
    backend.write_batch(batch)
}

/// Deletes every record of `backend`, in batches.
fn clear(backend: &dyn Backend) -> Result<(), StorageError> {
    const STEP: usize = 10_000;
    loop {
        let mut batch = WriteBatch::new();
        for item in backend.scan_range(b"", &[0xff; 2]).take(STEP) {
            let (k, _) = item?;
            batch.delete(k);
        }
        if batch.is_empty() {
            return Ok(());
        }
        backend.write_batch(batch)?;
    }
}

/// The committed state as a [`ReadView`] for one read: the current and
/// compact revisions when it began, and its registration, which keeps the
/// records it resolves in the backend. It holds no lock.
pub(crate) struct Snapshot<'a> {
    /// Where the index and the records are.
    store: &'a Store,
    /// The current revision when the read began.
    rev: i64,
    /// The compact revision when the read began.
    compact_rev: i64,
    /// Keeps the compactor from deleting records the read may need.
    _read: ReadGuard<'a>,
    /// Keeps the state from being replaced under the read.
    _gate: parking_lot::RwLockReadGuard<'a, ()>,
}

impl ReadView for Snapshot<'_> {
    fn rev(&self) -> i64 {
        self.rev
    }

    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    fn live_revisions(&self, range: &KeyRange, at: i64) -> Result<Vec<Revision>, ReadError> {
        let mut out = Vec::new();
        self.store.walk(range, at, |ki| {
            if let Some(k) = ki.get(at) {
                out.push(k.modified);
            }
        })?;
        Ok(out)
    }

    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        read_record(self.store.backend.as_ref(), rev)
    }
}

/// Fetches and decodes a (non-tombstone) revision record the index points at.
pub(crate) fn read_record(backend: &dyn Backend, rev: Revision) -> Result<KeyValue, StorageError> {
    let v = backend.get(&rev_key(rev, false))?.ok_or_else(|| {
        StorageError::corrupt(
            "revision record",
            format!("index points at missing revision {}.{}", rev.main, rev.sub),
        )
    })?;
    KeyValue::decode(v.as_slice()).map_err(|e| StorageError::corrupt("revision record", e))
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum etcd's
/// HashKV uses. crc32fast only implements the IEEE polynomial, and this is
/// small enough not to warrant another dependency.
struct Crc32c {
    /// Running register, kept inverted as the algorithm requires.
    state: u32,
}

impl Crc32c {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };

    fn new() -> Self {
        Crc32c { state: !0 }
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.state = Self::TABLE[((self.state ^ b as u32) & 0xff) as usize] ^ (self.state >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        struct Case {
            input: &'static [u8],
            want: u32,
        }
        for c in [
            Case {
                input: b"",
                want: 0,
            },
            Case {
                input: b"123456789",
                want: 0xE306_9283,
            },
            Case {
                input: &[0u8; 32],
                want: 0x8A91_36AA,
            },
        ] {
            let mut h = Crc32c::new();
            // Feeding in pieces must equal feeding at once.
            let (a, b) = c.input.split_at(c.input.len() / 2);
            h.update(a);
            h.update(b);
            assert_eq!(h.finish(), c.want, "{:?}", c.input);
        }
    }

    #[test]
    fn alarm_keys_round_trip() {
        let k = alarm_key(0xdead_beef, 2);
        assert_eq!(decode_alarm_key(&k).expect("decode"), (0xdead_beef, 2));
        assert!(decode_alarm_key(b"a/short").is_err());
    }
}

#[cfg(test)]
mod record_head_tests {
    use super::*;

    #[test]
    fn record_head_reads_a_key_value_without_its_value() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            value: vec![b'v'; 300],
            lease: 9,
        };
        let head = RecordHead::decode(kv.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(
            head,
            RecordHead {
                key: b"k".to_vec(),
                create_revision: 3,
                version: 2,
                lease: 9,
            }
        );
    }
}
