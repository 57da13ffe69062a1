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
//! a/<member:8><type:4>      an active alarm (empty value)
//! l/<id:8>                  a lease -> cairnpb.Lease (see `lease::table`)
//! ```
//!
//! Readers never see half of a batch: a write batch's records land in the
//! backend before the index learns about them and before the new current
//! revision is published, both under the index write lock. A reader holds the
//! index read lock from choosing revisions to fetching their records, so a
//! compaction (which deletes records, and therefore takes the write lock
//! before touching the backend) cannot pull records out from under it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use prost::Message;

use crate::error::{EtcdError, StorageError};
use crate::lease::table::{decode_lease, LeaseEntry, LeaseTable, LEASE_PREFIX};
use crate::proto::cairnpb::Lease;
use crate::proto::etcdserverpb::{AlarmMember, RangeRequest, RangeResponse};
use crate::proto::mvccpb::KeyValue;

use super::backend::Backend;
use super::key_index::{IndexTree, KeyIndex, KeyRange};

/// The fields of a revision record (`mvccpb.KeyValue`) that rebuilding the
/// key index needs: the value (field 5) is left out, so prost skips its
/// bytes instead of copying them (restart time grows with the record count).
#[derive(Clone, PartialEq, prost::Message)]
struct RecordHead {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}
use super::range::{self, ReadError, ReadView};
use super::revision::Revision;

/// Prefix of revision records.
pub(crate) const REV_PREFIX: &[u8] = b"k";
/// Meta key: the raft index of the last applied entry.
pub(crate) const META_CONSISTENT_INDEX: &[u8] = b"m/consistent_index";
/// Meta key: the revision of the last compaction.
pub(crate) const META_COMPACT_REV: &[u8] = b"m/compact_rev";
/// Prefix of alarm keys.
pub(crate) const ALARM_PREFIX: &[u8] = b"a/";

/// The compact revision of a store that was never compacted (etcd's value,
/// visible to clients in HashKV and watch responses).
pub const NEVER_COMPACTED: i64 = -1;

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
    pub(crate) committed: RwLock<Committed>,
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
        let applied = match backend.get(META_CONSISTENT_INDEX)? {
            Some(v) => decode_i64("consistent index", &v)? as u64,
            None => 0,
        };
        let compact_rev = match backend.get(META_COMPACT_REV)? {
            Some(v) => decode_i64("compact revision", &v)?,
            None => NEVER_COMPACTED,
        };

        // Replay history in revision order. Compaction leaves, for each key,
        // a first record carrying its create revision and version; tombstones
        // of keys with no earlier record left are ignored.
        let mut index = IndexTree::new();
        let mut last_main = 1;
        // The lease named by each live key's latest record.
        let mut key_leases: std::collections::HashMap<Vec<u8>, i64> =
            std::collections::HashMap::new();
        for item in backend.scan_prefix(REV_PREFIX) {
            let (k, v) = item?;
            let (rev, tombstone) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
            let kv = RecordHead::decode(v.as_slice())
                .map_err(|e| StorageError::corrupt("revision record", e))?;
            last_main = rev.main;
            if tombstone || kv.lease == 0 {
                key_leases.remove(&kv.key);
            } else {
                key_leases.insert(kv.key.clone(), kv.lease);
            }
            match index.get_mut(&kv.key) {
                Some(ki) if tombstone => {
                    ki.tombstone(rev);
                }
                Some(ki) => ki.put(rev),
                None if tombstone => {}
                None => index.insert(
                    kv.key,
                    KeyIndex::restored(kv.create_revision, rev, kv.version),
                ),
            }
        }
        // The newest records may all have been compacted away (a delete at the
        // compaction revision): the revision is then the compaction revision.
        let current_rev = last_main.max(compact_rev).max(1);

        let mut alarms = BTreeSet::new();
        for item in backend.scan_prefix(ALARM_PREFIX) {
            let (k, _) = item?;
            alarms.insert(decode_alarm_key(&k)?);
        }

        let mut leases = LeaseTable::new();
        for item in backend.scan_prefix(LEASE_PREFIX) {
            let (_, v) = item?;
            leases.upsert(&decode_lease(&v)?);
        }
        for (key, lease) in key_leases {
            leases.attach(lease, &key);
        }

        Ok(Store {
            backend,
            committed: RwLock::new(Committed {
                index,
                current_rev,
                compact_rev,
                alarms,
                leases,
            }),
            current_rev: AtomicI64::new(current_rev),
            compact_rev: AtomicI64::new(compact_rev),
            applied_index: AtomicU64::new(applied),
            writer: Mutex::new(()),
        })
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

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Publishes a written batch's counters; called with the write lock held.
    pub(crate) fn publish(&self, c: &Committed, applied_index: u64) {
        self.current_rev.store(c.current_rev, Ordering::Release);
        self.compact_rev.store(c.compact_rev, Ordering::Release);
        self.applied_index.store(applied_index, Ordering::Release);
    }

    /// A consistent read view of the committed state; holds the read lock.
    pub(crate) fn view(&self) -> CommittedView<'_> {
        CommittedView {
            committed: self.committed.read(),
            backend: self.backend.as_ref(),
        }
    }

    /// Answers a RangeRequest (already validated) at `req.revision` (<= 0 =
    /// current). The header has only `revision` set: the store's current
    /// revision at read time; the server fills in the other fields.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ReadError> {
        range::range(&self.view(), req)
    }

    /// etcd's HashKV: CRC-32C over the revision records up to `revision` (0 =
    /// current), skipping records at or below the compact revision that a
    /// compaction at `revision` would remove, so that members that compacted
    /// at different moments agree.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, ReadError> {
        let c = self.committed.read();
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
        let keep = c.index.keep(upto);
        let mut h = Crc32c::new();
        h.update(b"key");
        for item in self.backend.scan_prefix(REV_PREFIX) {
            let (k, v) = item?;
            let rev_bytes = &k[REV_PREFIX.len()..];
            let (rev, _) = Revision::from_bytes(rev_bytes)?;
            if rev.main > upto {
                break;
            }
            if rev.main <= c.compact_rev && !keep.is_empty() && !keep.contains(&rev) {
                continue;
            }
            h.update(rev_bytes);
            h.update(&v);
        }
        Ok(HashKv {
            hash: h.finish(),
            compact_revision: c.compact_rev,
            current_revision: c.current_rev,
        })
    }

    /// Lease `id` with its attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseEntry> {
        self.committed.read().leases.get(id).cloned()
    }

    /// Every lease's record, in id order.
    pub fn leases(&self) -> Vec<Lease> {
        self.committed.read().leases.records()
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

/// The committed state as a [`ReadView`], holding the index read lock for as
/// long as it lives (so records cannot be compacted away mid-read).
pub(crate) struct CommittedView<'a> {
    /// The read lock; index and revisions stay consistent while it is held.
    committed: RwLockReadGuard<'a, Committed>,
    /// Where the records are fetched from.
    backend: &'a dyn Backend,
}

impl ReadView for CommittedView<'_> {
    fn rev(&self) -> i64 {
        self.committed.current_rev
    }

    fn compact_rev(&self) -> i64 {
        self.committed.compact_rev
    }

    fn live_revisions(&self, range: &KeyRange, at: i64) -> Vec<Revision> {
        self.committed
            .index
            .range(range)
            .filter_map(|(_, ki)| ki.get(at).map(|k| k.modified))
            .collect()
    }

    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        read_record(self.backend, rev)
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
