//! [`LeaseTable`]: the replicated half of lease state (etcd's `leaseMap` and
//! `itemMap`), identical on every member because only applied entries change
//! it.
//!
//! It holds each lease's granted TTL and the keys attached to it. It lives
//! inside the MVCC store's committed state ([`crate::mvcc::Store`]) and is
//! changed only by [`crate::mvcc::BatchWriter::commit`], in the same atomic
//! backend batch as the key-value changes and the applied index. What is
//! *not* here is when a lease expires: that is local, in-memory time kept by
//! the LeaseKeeper ([`super::keeper`]), as in etcd's lessor.
//!
//! Backend layout: `l/<id: i64 big-endian>` → `cairnpb.Lease {id, ttl,
//! remaining_ttl}`. Attachments are not stored: a key's current revision
//! record names its lease, so [`crate::mvcc::Store::open`] rebuilds them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;

use crate::error::StorageError;
use crate::proto::cairnpb::Lease;
use crate::proto::mvccpb::{event::EventType, Event};

/// Prefix of lease records in the backend.
pub(crate) const LEASE_PREFIX: &[u8] = b"l/";

/// etcd's `MaxLeaseTTL`: a larger requested TTL is refused.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The backend key of lease `id`.
pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Decodes a lease record read from the backend.
pub(crate) fn decode_lease(v: &[u8]) -> Result<Lease, StorageError> {
    Lease::decode(v).map_err(|e| StorageError::corrupt("lease record", e))
}

/// One lease: its record and the keys currently attached to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Granted TTL in seconds (after raising it to the minimum).
    pub ttl: i64,
    /// Last checkpointed remaining TTL (0 = none).
    pub remaining_ttl: i64,
    /// Attached keys, ordered (revoke deletes them in this order, as etcd
    /// sorts them, so every member produces the same sub-revisions).
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every lease, by id. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTable {
    /// Leases by id; ordered so listings are stable.
    leases: BTreeMap<i64, LeaseEntry>,
    /// The lease each attached key is on (etcd's `itemMap`): a put or a
    /// delete detaches its key from its old lease without reading the key's
    /// previous record.
    items: HashMap<Vec<u8>, i64>,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, id: i64) -> Option<&LeaseEntry> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease as its record (id order).
    pub fn records(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(&id, e)| Lease {
                id,
                ttl: e.ttl,
                remaining_ttl: e.remaining_ttl,
            })
            .collect()
    }

    /// Inserts or replaces lease `rec.id`, keeping its attached keys if it
    /// existed (a checkpoint rewrites the record, not the attachments).
    pub fn upsert(&mut self, rec: &Lease) {
        let e = self.leases.entry(rec.id).or_default();
        e.ttl = rec.ttl;
        e.remaining_ttl = rec.remaining_ttl;
    }

    /// Removes lease `id` with its attachments.
    pub fn remove(&mut self, id: i64) -> Option<LeaseEntry> {
        let entry = self.leases.remove(&id)?;
        for key in &entry.keys {
            self.items.remove(key);
        }
        Some(entry)
    }

    /// Attaches `key` to lease `id` (and detaches it from any other); a
    /// lease that does not exist is ignored (the apply layer refused puts
    /// with unknown leases already).
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        let Some(e) = self.leases.get_mut(&id) else {
            return;
        };
        e.keys.insert(key.to_vec());
        if let Some(old) = self.items.insert(key.to_vec(), id) {
            if old != id {
                if let Some(e) = self.leases.get_mut(&old) {
                    e.keys.remove(key);
                }
            }
        }
    }

    /// Detaches `key` from the lease it is on, if any.
    fn detach(&mut self, key: &[u8]) {
        // Most stores have no leased key: no hashing then.
        if self.items.is_empty() {
            return;
        }
        if let Some(old) = self.items.remove(key) {
            if let Some(e) = self.leases.get_mut(&old) {
                e.keys.remove(key);
            }
        }
    }

    /// The lease `key` is attached to, if any.
    #[cfg(test)]
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.items.get(key).copied()
    }

    /// Follows one applied event: the key leaves its previous lease and, on a
    /// put, joins the new one (etcd's Detach/Attach in `storeTxnWrite.put`
    /// and `delete`). Folding a batch's events in order leaves every key
    /// attached to the lease of its latest revision.
    pub fn apply_event(&mut self, ev: &Event) {
        let Some(kv) = &ev.kv else { return };
        self.detach(&kv.key);
        if ev.r#type == EventType::Put as i32 && kv.lease != 0 {
            self.attach(kv.lease, &kv.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn rec(id: i64, ttl: i64) -> Lease {
        Lease {
            id,
            ttl,
            remaining_ttl: 0,
        }
    }

    fn kv(key: &str, lease: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            lease,
            ..Default::default()
        }
    }

    // Events as applying a put makes them: no prev_kv (the table knows
    // which lease a key is on).
    fn put(key: &str, lease: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(key, lease)),
            prev_kv: None,
        }
    }

    fn del(key: &str) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv(key, 0)),
            prev_kv: None,
        }
    }

    fn keys(t: &LeaseTable, id: i64) -> Vec<String> {
        t.get(id)
            .map(|e| {
                e.keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn events_move_keys_between_leases() {
        let mut t = LeaseTable::new();
        t.upsert(&rec(1, 10));
        t.upsert(&rec(2, 10));
        struct Case {
            event: Event,
            on_1: &'static [&'static str],
            on_2: &'static [&'static str],
        }
        let cases = [
            Case {
                event: put("a", 1),
                on_1: &["a"],
                on_2: &[],
            },
            Case {
                event: put("b", 1),
                on_1: &["a", "b"],
                on_2: &[],
            },
            // Re-put with another lease moves it.
            Case {
                event: put("a", 2),
                on_1: &["b"],
                on_2: &["a"],
            },
            // A put without lease detaches.
            Case {
                event: put("b", 0),
                on_1: &[],
                on_2: &["a"],
            },
            // A delete detaches.
            Case {
                event: del("a"),
                on_1: &[],
                on_2: &[],
            },
            // An unknown lease is ignored.
            Case {
                event: put("c", 9),
                on_1: &[],
                on_2: &[],
            },
        ];
        for (i, c) in cases.into_iter().enumerate() {
            t.apply_event(&c.event);
            assert_eq!(keys(&t, 1), c.on_1, "step {i}, lease 1");
            assert_eq!(keys(&t, 2), c.on_2, "step {i}, lease 2");
            for (id, on) in [(1, c.on_1), (2, c.on_2)] {
                for k in on {
                    assert_eq!(t.lease_of(k.as_bytes()), Some(id), "step {i}, {k}");
                }
            }
        }
        assert_eq!(t.lease_of(b"a"), None);
    }

    #[test]
    fn upsert_keeps_attachments_and_remove_drops_them() {
        let mut t = LeaseTable::new();
        t.upsert(&rec(7, 5));
        t.attach(7, b"k");
        t.upsert(&Lease {
            id: 7,
            ttl: 5,
            remaining_ttl: 3,
        });
        assert_eq!(keys(&t, 7), ["k"]);
        assert_eq!(t.get(7).map(|e| e.remaining_ttl), Some(3));
        assert_eq!(t.records().len(), 1);
        assert!(t.remove(7).is_some());
        assert!(!t.contains(7));
        assert_eq!(t.lease_of(b"k"), None);
        t.attach(7, b"k");
        assert!(t.is_empty());
    }

    #[test]
    fn lease_keys_sort_by_id() {
        assert!(lease_key(1) < lease_key(2));
        assert_eq!(lease_key(1).len(), LEASE_PREFIX.len() + 8);
        let r = rec(5, 60);
        assert_eq!(decode_lease(&r.encode_to_vec()).expect("decode"), r);
        assert!(decode_lease(b"\xff\xff").is_err());
    }
}
