//! The write path: [`BatchWriter`] collects the effects of one raft batch in
//! memory, and [`WriteTxn`] is one request's write transaction inside it
//! (etcd's `storeTxnWrite`).
//!
//! ```text
//!  apply_batch ──► BatchWriter ──► WriteTxn (one per Put / DeleteRange / Txn)
//!                   │  overlay: touched key indexes, new records, events,
//!                   │           pending compaction, alarms and lease records
//!                   └─ commit(applied index) ──► ONE backend WriteBatch
//!                                               then publish index + revision
//! ```
//!
//! Reads made while applying (a txn's compares and ranges, a put's previous
//! value) go through the overlay first, so requests see the effects of the
//! requests before them in the same batch. A `WriteTxn` that is dropped
//! without [`WriteTxn::commit`] undoes its changes to the overlay, which is
//! how a txn that fails halfway changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use parking_lot::MutexGuard;
use prost::Message;

use crate::auth::state::AuthState;
use crate::error::{EtcdError, StorageError};
use crate::lease::table::lease_key;
use crate::proto::cairnpb::{Lease, MemberAttributes, MemberRecord};
use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

use super::backend::WriteBatch;
use super::key_index::{KeyAt, KeyIndex, KeyRange};
use super::range::{ReadError, ReadView};
use super::revision::Revision;
use super::store::{
    alarm_key, conf_member_key, member_key, read_record, removed_key, rev_key, Committed, Store,
    META_COMPACT_REV, META_CONSISTENT_INDEX,
};

/// The in-memory effects of one raft batch, not yet in the backend.
pub struct BatchWriter<'s> {
    /// The store the batch will be committed to.
    store: &'s Store,
    /// Proof that this is the only writer; see [`Store`]'s `writer` field.
    _writer: MutexGuard<'s, ()>,
    /// The current revision when the batch began: every change in the
    /// overlay is newer, so reads below it go to the committed index alone.
    start_rev: i64,
    /// For each key written in this batch, the tail of its committed history
    /// ([`KeyIndex::tail`]) continued with this batch's changes. Shadows the
    /// committed index for reads at or above `start_rev`; replayed onto it
    /// at commit.
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    /// Revision records created in this batch, with their tombstone flag.
    records: BTreeMap<Revision, (KeyValue, bool)>,
    /// Current revision including this batch's writes so far.
    rev: i64,
    /// Compact revision including compactions earlier in this batch.
    compact_rev: i64,
    /// Whether this batch compacts (then commit records the compact
    /// revision and wakes the background compactor).
    compacted: bool,
    /// Active alarms including this batch's changes.
    alarms: BTreeSet<(u64, i32)>,
    /// Every change in revision order, returned to the caller for watchers.
    events: Vec<Event>,
    /// Lease records granted (Some) or revoked (None) in this batch; they
    /// shadow the committed lease table. Attachments are not tracked here:
    /// they follow from `events` at commit.
    leases: BTreeMap<i64, Option<Lease>>,
    /// Member attributes published in this batch, by member id.
    members: BTreeMap<u64, MemberAttributes>,
    /// Raft configuration changes in this batch: a member added or updated
    /// (Some) or removed (None), by member id.
    membership: BTreeMap<u64, Option<MemberRecord>>,
    /// The auth store with this batch's changes, once one touched it.
    auth: Option<AuthState>,
}

impl<'s> BatchWriter<'s> {
    /// Starts a batch; blocks while another batch is in flight.
    pub fn new(store: &'s Store) -> Self {
        let writer = store.writer.lock();
        let c = store.committed.read();
        let (rev, compact_rev, alarms) = (c.current_rev, c.compact_rev, c.alarms.clone());
        drop(c);
        BatchWriter {
            store,
            _writer: writer,
            start_rev: rev,
            keys: BTreeMap::new(),
            records: BTreeMap::new(),
            rev,
            compact_rev,
            compacted: false,
            alarms,
            events: Vec::new(),
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            membership: BTreeMap::new(),
            auth: None,
        }
    }

    /// Adds a member to the raft configuration, or updates one (its peer
    /// URLs, or a learner promoted); not an MVCC change.
    pub fn set_conf_member(&mut self, m: MemberRecord) {
        self.membership.insert(m.id, Some(m));
    }

    /// Removes a member from the raft configuration for good (its id is
    /// remembered as removed, its published attributes go).
    pub fn remove_conf_member(&mut self, id: u64) {
        self.membership.insert(id, None);
        self.members.remove(&id);
    }

    /// Whether auth is enabled as this batch has left it so far; one atomic
    /// load while the batch has not changed the auth store.
    pub fn auth_enabled(&self) -> bool {
        match &self.auth {
            Some(auth) => auth.enabled,
            None => self.store.auth_enabled(),
        }
    }

    /// Runs `f` on the auth store as this batch has left it so far (the
    /// applier's permission checks).
    pub fn with_auth<R>(&self, f: impl FnOnce(&AuthState) -> R) -> R {
        match &self.auth {
            Some(auth) => f(auth),
            None => f(&self.store.auth.read()),
        }
    }

    /// The auth store with this batch's changes so far, for an auth change.
    pub fn auth_mut(&mut self) -> &mut AuthState {
        let store = self.store;
        self.auth
            .get_or_insert_with(|| AuthState::clone(&store.auth.read()))
    }

    /// Records a member's published name and client URLs (etcd's publish);
    /// not an MVCC change (no revision).
    pub fn set_member_attributes(&mut self, m: MemberAttributes) {
        self.members.insert(m.id, m);
    }

    /// The store this batch writes to.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// Current revision, counting this batch's writes.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// Compact revision, counting this batch's compactions.
    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// The backend's size on disk (before this batch is written).
    pub fn backend_size(&self) -> Result<u64, StorageError> {
        self.store.backend().size_on_disk()
    }

    /// Begins one request's write transaction at the current revision.
    pub fn txn(&mut self) -> WriteTxn<'_, 's> {
        let begin_rev = self.rev;
        let events_len = self.events.len();
        WriteTxn {
            w: self,
            begin_rev,
            changes: 0,
            undo: Vec::new(),
            undo_keys: HashSet::new(),
            events_len,
            done: false,
        }
    }

    /// Compacts history up to `rev` (etcd's checks: at or below the current
    /// compaction -> Compacted, above the current revision -> FutureRev).
    /// Reads below `rev` fail from now on; the old records are removed in the
    /// background once the batch has committed.
    pub fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if rev > self.rev {
            return Err(EtcdError::FutureRev);
        }
        self.compact_rev = rev;
        self.compacted = true;
        Ok(())
    }

    /// Alarms of type `alarm`, or all of them for `AlarmType::None`.
    pub fn alarms(&self, alarm: i32) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .filter(|(_, t)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether any member has raised `alarm`.
    pub fn alarm_active(&self, alarm: AlarmType) -> bool {
        self.alarms.iter().any(|(_, t)| *t == alarm as i32)
    }

    /// Raises an alarm (idempotent) and returns it.
    pub fn activate_alarm(&mut self, member_id: u64, alarm: i32) -> AlarmMember {
        self.alarms.insert((member_id, alarm));
        AlarmMember { member_id, alarm }
    }

    /// Clears an alarm; returns it if it was active.
    pub fn deactivate_alarm(&mut self, member_id: u64, alarm: i32) -> Option<AlarmMember> {
        self.alarms
            .remove(&(member_id, alarm))
            .then_some(AlarmMember { member_id, alarm })
    }

    /// Lease `id`'s record, seeing this batch's grants and revokes.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        match self.leases.get(&id) {
            Some(overlay) => *overlay,
            None => {
                let c = self.store.committed.read();
                let e = c.leases.get(id)?;
                Some(Lease {
                    id,
                    ttl: e.ttl,
                    remaining_ttl: e.remaining_ttl,
                })
            }
        }
    }

    /// Records a granted (or checkpointed) lease.
    pub fn put_lease(&mut self, rec: Lease) {
        self.leases.insert(rec.id, Some(rec));
    }

    /// Removes lease `id` (its keys must have been deleted already).
    pub fn remove_lease(&mut self, id: i64) {
        self.leases.insert(id, None);
    }

    /// The keys attached to lease `id` now, seeing this batch's writes, in
    /// key order: the committed attachments and every key written in this
    /// batch, kept if their current record names the lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut candidates: BTreeSet<Vec<u8>> = self.keys.keys().cloned().collect();
        if let Some(e) = self.store.committed.read().leases.get(id) {
            candidates.extend(e.keys.iter().cloned());
        }
        let mut out = Vec::new();
        for key in candidates {
            if let Some(at) = self.key_at(&key, self.rev) {
                if self.record(at.modified)?.lease == id {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }

    /// The key's state at `at`, seeing this batch's writes.
    fn key_at(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        match self.keys.get(key) {
            Some(ki) if at >= self.start_rev => ki.get(at),
            _ => self.store.committed.read().index.get(key)?.get(at),
        }
    }

    /// Calls `f(key, record revision)` for every key in `range` live at `at`,
    /// in key order, merging this batch's key histories over the committed ones.
    fn for_each_live(&self, range: &KeyRange, at: i64, mut f: impl FnMut(&[u8], Revision)) {
        let committed = self.store.committed.read();
        // Below the batch's start the overlay has nothing to add.
        let overlay = (at >= self.start_rev).then_some(&self.keys);
        let mut base = committed
            .index
            .range(range)
            .filter(|(k, _)| overlay.is_none_or(|o| !o.contains_key(k.as_slice())))
            .filter_map(|(k, ki)| ki.get(at).map(|a| (k.as_slice(), a.modified)))
            .peekable();
        let mut ours = overlay
            .zip(range.bounds())
            .map(|(o, b)| o.range::<[u8], _>(b))
            .into_iter()
            .flatten()
            .filter_map(|(k, ki)| ki.get(at).map(|a| (k.as_slice(), a.modified)))
            .peekable();
        loop {
            let take_base = match (base.peek(), ours.peek()) {
                (Some(b), Some(o)) => b.0 < o.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_base { base.next() } else { ours.next() };
            if let Some((k, r)) = next {
                f(k, r);
            }
        }
    }

    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        match self.records.get(&rev) {
            Some((kv, _)) => Ok(kv.clone()),
            None => read_record(self.store.backend().as_ref(), rev),
        }
    }

    /// Writes everything in ONE backend batch (with `applied_index`), then
    /// publishes the new index, revisions, alarms and applied index to
    /// readers. Returns the batch's events in revision order.
    ///
    /// On error nothing has been published and the in-memory state is the
    /// one before the batch; the member must stop (the error is fatal).
    pub fn commit(mut self, applied_index: u64) -> Result<Vec<Event>, StorageError> {
        let store = self.store;
        let mut batch = WriteBatch::new();
        for (rev, (kv, tombstone)) in &self.records {
            batch.put(rev_key(*rev, *tombstone), kv.encode_to_vec());
        }
        batch.put(META_CONSISTENT_INDEX, applied_index.to_be_bytes().to_vec());
        for (&id, rec) in &self.leases {
            match rec {
                Some(rec) => batch.put(lease_key(id), rec.encode_to_vec()),
                None => batch.delete(lease_key(id)),
            }
        }
        for (&id, m) in &self.members {
            batch.put(member_key(id), m.encode_to_vec());
        }
        for (&id, m) in &self.membership {
            match m {
                Some(m) => batch.put(conf_member_key(id), m.encode_to_vec()),
                None => {
                    batch.delete(conf_member_key(id));
                    batch.delete(member_key(id));
                    batch.put(removed_key(id), Vec::new());
                }
            }
        }
        if let Some(auth) = &self.auth {
            auth.write_changes(&store.auth.read(), &mut batch);
        }
        {
            let c = store.committed.read();
            for &(m, t) in c.alarms.difference(&self.alarms) {
                batch.delete(alarm_key(m, t));
            }
            for &(m, t) in self.alarms.difference(&c.alarms) {
                batch.put(alarm_key(m, t), Vec::new());
            }
        }

        if self.compacted {
            // Only the compact revision is recorded here, with the applied
            // index; the old records are removed later, in small batches, by
            // the background compactor (see `compactor`), which also prunes
            // the key index.
            batch.put(META_COMPACT_REV, self.compact_rev.to_be_bytes().to_vec());
        }
        // New records are invisible to readers until the index learns of
        // them, so write first and lock only to publish.
        store.backend().write_batch(batch)?;
        {
            let mut c = store.committed.write();
            self.publish_into(&mut c, applied_index);
        }
        if let Some(auth) = self.auth.take() {
            let enabled = auth.enabled;
            *store.auth.write() = std::sync::Arc::new(auth);
            store
                .auth_enabled
                .store(enabled, std::sync::atomic::Ordering::Release);
        }
        if self.compacted {
            store.compaction.kick();
        }
        Ok(self.events)
    }

    fn publish_into(&self, c: &mut Committed, applied_index: u64) {
        for (k, tail) in &self.keys {
            replay(c.index.entry(k), tail, self.start_rev);
        }
        c.current_rev = self.rev;
        c.compact_rev = self.compact_rev;
        c.alarms = self.alarms.clone();
        for (&id, m) in &self.members {
            c.members.insert(id, m.clone());
        }
        for (&id, m) in &self.membership {
            match m {
                Some(m) => {
                    c.membership.insert(id, m.clone());
                }
                None => {
                    c.membership.remove(&id);
                    c.members.remove(&id);
                    c.removed.insert(id);
                }
            }
        }
        // Lease records first, then attachments: the events leave each key
        // on the lease of its latest revision (revoked leases ignore them).
        for (&id, rec) in &self.leases {
            match rec {
                Some(rec) => c.leases.upsert(rec),
                None => {
                    c.leases.remove(id);
                }
            }
        }
        for ev in &self.events {
            c.leases.apply_event(ev);
        }
        self.store.publish(c, applied_index);
    }
}

/// Appends to `full` the changes `tail` holds beyond `start_rev`.
fn replay(full: &mut KeyIndex, tail: &KeyIndex, start_rev: i64) {
    for (rev, tombstone) in tail.revisions().filter(|(r, _)| r.main > start_rev) {
        if tombstone {
            full.tombstone(rev);
        } else {
            full.put(rev);
        }
    }
}

impl ReadView for BatchWriter<'_> {
    fn rev(&self) -> i64 {
        self.rev
    }

    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    fn live_revisions(&self, range: &KeyRange, at: i64) -> Result<Vec<Revision>, ReadError> {
        let mut out = Vec::new();
        self.for_each_live(range, at, |_, r| out.push(r));
        Ok(out)
    }

    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        BatchWriter::record(self, rev)
    }
}

/// One request's changes: every change gets main revision `begin_rev + 1`
/// and sub revisions 0, 1, 2... Dropped without [`WriteTxn::commit`], it
/// undoes its changes.
pub struct WriteTxn<'w, 's> {
    /// The batch this transaction writes into.
    w: &'w mut BatchWriter<'s>,
    /// The revision the transaction started at; it writes `begin_rev + 1`.
    begin_rev: i64,
    /// Changes made so far: the next sub revision.
    changes: i64,
    /// For each key touched, its overlay history before this transaction
    /// (None = was not in the overlay), to restore on rollback.
    undo: Vec<(Vec<u8>, Option<KeyIndex>)>,
    /// Keys already saved in `undo`.
    undo_keys: HashSet<Vec<u8>>,
    /// Number of batch events before this transaction, to truncate on rollback.
    events_len: usize,
    /// Set by commit; otherwise Drop rolls back.
    done: bool,
}

impl WriteTxn<'_, '_> {
    /// The revision the transaction started at.
    pub fn begin_rev(&self) -> i64 {
        self.begin_rev
    }

    /// Whether the transaction changed anything so far.
    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    /// The revision reads inside the transaction see: its own writes included.
    pub fn read_rev(&self) -> i64 {
        self.begin_rev + i64::from(self.has_changes())
    }

    /// Lease `id`'s record, seeing the batch's grants and revokes.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.w.lease(id)
    }

    /// The current value of `key`, seeing this transaction's writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        match self.w.key_at(key, self.read_rev()) {
            Some(k) => self.w.record(k.modified).map(Some),
            None => Ok(None),
        }
    }

    /// The overlay history of `key`: on its first write in the batch, the
    /// tail of its committed history; saved for rollback on its first write
    /// in this transaction.
    fn touch(&mut self, key: &[u8]) -> &mut KeyIndex {
        use std::collections::btree_map::Entry;
        let first_in_txn = !self.undo_keys.contains(key);
        if first_in_txn {
            self.undo_keys.insert(key.to_vec());
        }
        match self.w.keys.entry(key.to_vec()) {
            Entry::Occupied(e) => {
                if first_in_txn {
                    self.undo.push((key.to_vec(), Some(e.get().clone())));
                }
                e.into_mut()
            }
            Entry::Vacant(e) => {
                if first_in_txn {
                    self.undo.push((key.to_vec(), None));
                }
                let base = self
                    .w
                    .store
                    .committed
                    .read()
                    .index
                    .get(key)
                    .map(KeyIndex::tail)
                    .unwrap_or_default();
                e.insert(base)
            }
        }
    }

    /// Puts `key` = `value` with `lease`; returns the new revision.
    ///
    /// Like etcd's, a put reads only the key index, not the key's previous
    /// record: its event has no `prev_kv` (the WatchBroadcaster reads it for
    /// a watcher that asks, [`crate::mvcc::Store::fill_prev_kvs`]), and the
    /// lease table knows which lease the key leaves.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> i64 {
        crate::io_metrics::MVCC_PUT.inc();
        let rev = self.begin_rev + 1;
        let at = Revision::new(rev, self.changes);
        let history = self.touch(key);
        // The batch's history of the key covers every revision since the
        // batch began, so it answers for the key as it is now.
        let prev = history.get(rev);
        history.put(at);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(rev, |p| p.created.main),
            mod_revision: rev,
            version: prev.map_or(0, |p| p.version) + 1,
            value: value.to_vec(),
            lease,
        };
        self.w.records.insert(at, (kv.clone(), false));
        self.w.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        self.changes += 1;
        rev
    }

    /// Deletes every key in `range`; returns (number deleted, header revision
    /// as etcd reports it: the new revision if this transaction changed
    /// anything so far, else the revision it started at).
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<(i64, i64), StorageError> {
        crate::io_metrics::MVCC_DELETE.inc();
        let rev = self.begin_rev + 1;
        let mut victims = Vec::new();
        self.w
            .for_each_live(range, self.read_rev(), |k, r| victims.push((k.to_vec(), r)));
        for (key, modified) in &victims {
            let prev = self.w.record(*modified)?;
            let at = Revision::new(rev, self.changes);
            if !self.touch(key).tombstone(at) {
                return Err(StorageError::corrupt(
                    "key index",
                    "live key has no open generation",
                ));
            }
            let tomb = KeyValue {
                key: key.clone(),
                ..Default::default()
            };
            self.w.records.insert(at, (tomb, true));
            self.w.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(prev),
            });
            self.changes += 1;
        }
        let header_rev = if self.has_changes() {
            rev
        } else {
            self.begin_rev
        };
        Ok((victims.len() as i64, header_rev))
    }

    /// Keeps the changes; the batch's revision advances if there were any.
    pub fn commit(mut self) {
        if self.has_changes() {
            self.w.rev = self.begin_rev + 1;
        }
        self.done = true;
    }

    fn rollback(&mut self) {
        for (key, prev) in self.undo.drain(..).rev() {
            match prev {
                Some(ki) => {
                    self.w.keys.insert(key, ki);
                }
                None => {
                    self.w.keys.remove(&key);
                }
            }
        }
        let _discarded = self
            .w
            .records
            .split_off(&Revision::new(self.begin_rev + 1, 0));
        self.w.events.truncate(self.events_len);
        self.changes = 0;
    }
}

impl Drop for WriteTxn<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollback();
        }
    }
}

impl ReadView for WriteTxn<'_, '_> {
    fn rev(&self) -> i64 {
        self.read_rev()
    }

    fn compact_rev(&self) -> i64 {
        self.w.compact_rev
    }

    fn live_revisions(&self, range: &KeyRange, at: i64) -> Result<Vec<Revision>, ReadError> {
        self.w.live_revisions(range, at)
    }

    fn record(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        self.w.record(rev)
    }
}
