//! History reads: the changes made in a window of revisions, as watch events.
//!
//! The WatchBroadcaster catches a watcher up (a watch with a past start
//! revision, or a slow consumer that fell behind) by reading the revision
//! records between two revisions, in revision order, exactly as etcd's
//! `syncWatchers` scans its key bucket: a record is a PUT event carrying the
//! key-value as written, a tombstone record a DELETE event whose `kv` holds
//! only the key and the mod revision. `prev_kv`, when asked for, is the key as
//! it was at the revision before the event (read through the key index), as
//! etcd's watch server fills it.

use prost::Message;

use crate::error::{EtcdError, StorageError};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

use super::range::ReadError;
use super::revision::Revision;
use super::store::{read_record, rev_key, Committed, Store, REV_PREFIX};

impl Store {
    /// Every change with main revision in `from..=to` to a key `wanted`
    /// accepts, in revision order (and sub-revision order inside a txn).
    ///
    /// Fails with `Compacted` when `from` is below the compact revision (the
    /// records it needs may be gone; reading *at* the compact revision is
    /// allowed, as in etcd) and with `FutureRev` when `to` is above the current
    /// revision. The index lock is held only to check the window and, with
    /// `prev_kv`, to resolve the previous revisions; the records themselves
    /// are read without it. The read is registered below `from`, so the
    /// compactor deletes nothing it reads until it is done; a compaction past
    /// `from` that overtakes it makes it fail with `Compacted`, as if it had
    /// started a moment later. Callers bound the window (the broadcaster
    /// reads at most a thousand revisions at a time).
    pub fn history(
        &self,
        from: i64,
        to: i64,
        prev_kv: bool,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Event>, ReadError> {
        let _gate = self.enter();
        let _read = {
            let c = self.committed.read();
            if from < c.compact_rev {
                return Err(EtcdError::Compacted.into());
            }
            if to > c.current_rev {
                return Err(EtcdError::FutureRev.into());
            }
            if from > to {
                return Ok(Vec::new());
            }
            // A previous value is the key at an event's revision minus one.
            self.compaction.register(from - 1)
        };
        let mut events = Vec::new();
        let start = rev_key(Revision::new(from.max(0), 0), false);
        let end = rev_key(Revision::new(to.saturating_add(1), 0), false);
        for item in self.backend().scan_range(&start, &end) {
            let (k, v) = item?;
            let (rev, tombstone) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
            let mut kv = KeyValue::decode(v.as_slice())
                .map_err(|e| StorageError::corrupt("revision record", e))?;
            if !wanted(&kv.key) {
                continue;
            }
            let kind = if tombstone {
                // A tombstone record holds only the key; the event carries
                // the revision of the delete, as etcd patches it in.
                kv = KeyValue {
                    key: kv.key,
                    mod_revision: rev.main,
                    ..Default::default()
                };
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        if !prev_kv || events.is_empty() {
            return Ok(events);
        }
        let prevs = {
            let c = self.committed.read();
            if from < c.compact_rev {
                return Err(EtcdError::Compacted.into());
            }
            previous_revisions(&c, events.iter())
        };
        self.read_previous(events.iter_mut(), prevs)?;
        Ok(events)
    }

    /// Sets the `prev_kv` of each event to its key as it was at the revision
    /// before the event, as etcd's watch server reads it for a watcher that
    /// asks for it: applying a put does not read the previous value, so a
    /// live event has a `prev_kv` only if its request read one. An event
    /// whose key did not exist just before it, or whose previous record
    /// compaction removed, keeps none.
    pub fn fill_prev_kvs<'e>(
        &self,
        events: impl IntoIterator<Item = &'e mut Event>,
    ) -> Result<(), StorageError> {
        let mut events: Vec<&mut Event> = events.into_iter().collect();
        let Some(from) = events.iter().map(|e| event_rev(e)).min() else {
            return Ok(());
        };
        let _gate = self.enter();
        let (_read, prevs) = {
            let c = self.committed.read();
            // Registered under the lock, so that the compactor removes
            // nothing the index still points at until the reads are done.
            let read = self.compaction.register(from - 1);
            (read, previous_revisions(&c, events.iter().map(|e| &**e)))
        };
        self.read_previous(events.iter_mut().map(|e| &mut **e), prevs)
    }

    /// Reads the records `prevs` names into the events' `prev_kv`.
    fn read_previous<'e>(
        &self,
        events: impl Iterator<Item = &'e mut Event>,
        prevs: Vec<Option<Revision>>,
    ) -> Result<(), StorageError> {
        for (ev, prev) in events.zip(prevs) {
            if let Some(at) = prev {
                ev.prev_kv = Some(read_record(self.backend().as_ref(), at)?);
            }
        }
        Ok(())
    }
}

/// The revision each event's key had just before the event, as the index
/// pruned at the compact revision answers (a record below it may already be
/// gone).
fn previous_revisions<'e>(
    c: &Committed,
    events: impl Iterator<Item = &'e Event>,
) -> Vec<Option<Revision>> {
    events
        .map(|ev| {
            let key = ev.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice());
            c.index
                .get(key)
                .and_then(|ki| ki.get_compacted(event_rev(ev) - 1, c.compact_rev))
                .map(|at| at.modified)
        })
        .collect()
}

/// An event's main revision (its key-value's mod revision).
pub(crate) fn event_rev(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}
