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
use super::store::{read_record, rev_key, Store, REV_PREFIX};

impl Store {
    /// Every change with main revision in `from..=to` to a key `wanted`
    /// accepts, in revision order (and sub-revision order inside a txn).
    ///
    /// Fails with `Compacted` when `from` is below the compact revision (the
    /// records it needs may be gone; reading *at* the compact revision is
    /// allowed, as in etcd) and with `FutureRev` when `to` is above the current
    /// revision. The index read lock is held for the whole scan, so a
    /// compaction cannot remove records halfway through: callers bound the
    /// window (the broadcaster reads at most a thousand revisions at a time).
    pub fn history(
        &self,
        from: i64,
        to: i64,
        prev_kv: bool,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Event>, ReadError> {
        let c = self.committed.read();
        if from < c.compact_rev {
            return Err(EtcdError::Compacted.into());
        }
        if to > c.current_rev {
            return Err(EtcdError::FutureRev.into());
        }
        let mut events = Vec::new();
        if from > to {
            return Ok(events);
        }
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
            let prev = if prev_kv {
                match c.index.get(&kv.key).and_then(|ki| ki.get(rev.main - 1)) {
                    Some(at) => Some(read_record(self.backend().as_ref(), at.modified)?),
                    None => None,
                }
            } else {
                None
            };
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
                prev_kv: prev,
            });
        }
        Ok(events)
    }
}
