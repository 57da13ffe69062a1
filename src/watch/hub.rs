//! [`Hub`]: the WatchBroadcaster's logic as plain code — watchers, streams,
//! the synced/unsynced groups, live dispatch and catch-up — so that it is
//! tested with no actor, thread or network (the actor in
//! [`super::broadcaster`] only forwards messages and schedules passes).
//!
//! Guarantees, and how the hub keeps them:
//!
//! * **Ordered, never duplicated, never skipped.** `rev` is the last revision
//!   whose events were dispatched. A *synced* watcher has had every matching
//!   event up to `rev` queued; an *unsynced* one has had everything below its
//!   `next_rev` queued. Live events go only to synced watchers; catch-up reads
//!   `next_rev ..= min(rev, next_rev + 999)` from [`Store::history`] and
//!   advances `next_rev` past what it queued. A watcher rejoins the synced
//!   group exactly when its catch-up reaches `rev`, so the hand-over from
//!   history to live events has neither a gap nor an overlap.
//! * **Whole revisions.** A response carries every matching event of each
//!   revision it covers (a batch or a history window is never split inside a
//!   revision).
//! * **A slow consumer blocks nobody.** Items are queued with `try_send`;
//!   when a stream's channel is full, its watchers that had events are moved
//!   to the unsynced group at the first revision they missed, and catch up
//!   from history once the stream drains (etcd's unsynced group and victims).
//!   If compaction removed that history meanwhile, the watcher gets a final
//!   response with `compact_revision` and is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::{fatal, EtcdError};
use crate::mvcc::{KeyRange, ReadError, Store};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::proto::mvccpb::{event::EventType, Event};

use super::group::{WatcherGroup, WatcherKey};
use super::{
    event_rev, CtrlPermit, EventsResponse, IdMap, IdSet, Outbound, Selection, StreamId, CTRL_BUFFER,
};

/// Most revisions one catch-up pass reads (etcd's `watchBatchMaxRevs`).
pub const MAX_REVS_PER_SYNC: i64 = 1000;

/// etcd's `AutoWatchID`: a create request with this id gets one assigned.
const AUTO_WATCH_ID: i64 = 0;

/// etcd's cancel reasons for a create it refuses (mvcc's error strings).
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What a catch-up pass achieved, so the actor knows when to run the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// No watcher is unsynced.
    Done,
    /// Unsynced watchers remain and this pass queued something: go again soon.
    Progressed,
    /// Unsynced watchers remain but their streams are full: retry later.
    Blocked,
}

/// One gRPC stream as the hub sees it.
struct Stream {
    /// Where the stream's sender task reads from.
    tx: mpsc::Sender<Outbound>,
    /// Client-visible watch id → watcher.
    ids: HashMap<i64, WatcherKey>,
    /// The next id to try for an auto-assigned watch (etcd starts at 0).
    next_id: i64,
    /// RequestProgress calls waiting for every watcher of the stream to be synced.
    pending_progress: Vec<CtrlPermit>,
    /// Restarts the sender asked for so far; stamped on progress answers so
    /// the sender can tell ones given before a restart.
    generation: u64,
}

impl Stream {
    /// Whether a data item may take a slot (keeping [`CTRL_BUFFER`] free).
    fn has_room(&self) -> bool {
        self.tx.capacity() > CTRL_BUFFER
    }

    /// Queues a data item if there is room; never waits.
    fn push_data(&self, item: Outbound) -> bool {
        self.has_room() && self.tx.try_send(item).is_ok()
    }

    /// Queues a control response; it holds a permit, so a slot is free
    /// (unless the sender is gone, and then nobody is listening anyway).
    fn push_ctrl(&self, item: Outbound) {
        if let Err(e) = self.tx.try_send(item) {
            tracing::debug!(cause = %e, "watch stream gone; control response dropped");
        }
    }
}

/// One watch.
#[derive(Debug)]
struct Watcher {
    stream: StreamId,
    /// The id the client knows it by (unique within its stream).
    id: i64,
    /// Changes when the watcher is restarted after a sender failure.
    epoch: u64,
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events below this revision are not for this watcher (its start revision).
    min_rev: i64,
    /// Unsynced: the first revision not queued yet. Synced: unused (it is `rev + 1`).
    next_rev: i64,
    /// In the synced group (else the unsynced one).
    synced: bool,
    /// No events queued since the last progress tick (etcd elides the
    /// periodic progress notification otherwise).
    quiet: bool,
}

impl Watcher {
    /// Whether this event goes to this watcher: its range, its start
    /// revision, its filters.
    fn accepts(&self, e: &Event) -> bool {
        e.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key)) && self.accepts_in_range(e)
    }

    /// [`Watcher::accepts`] for an event already known to be in the range.
    fn accepts_in_range(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else {
            return false;
        };
        if kv.mod_revision < self.min_rev {
            return false;
        }
        match EventType::try_from(e.r#type) {
            Ok(EventType::Put) => !self.no_put,
            Ok(EventType::Delete) => !self.no_delete,
            Err(_) => false,
        }
    }

    /// Whether this watcher accepts every event of a selection in its range
    /// (so it can share the selection rather than get its own).
    fn accepts_all(&self, kinds: &Kinds) -> bool {
        kinds.first_rev >= self.min_rev
            && kinds.valid
            && !(self.no_put && kinds.put)
            && !(self.no_delete && kinds.delete)
    }

    fn response(&self, selection: Arc<Selection>, rev: i64) -> EventsResponse {
        EventsResponse {
            watch_id: self.id,
            epoch: self.epoch,
            revision: rev,
            through: rev,
            selection,
            prev_kv: self.prev_kv,
            fragment: self.fragment,
        }
    }
}

/// What a selection holds, for [`Watcher::accepts_all`].
struct Kinds {
    /// The revision of its first event (they are in revision order).
    first_rev: i64,
    /// Some event is a Put.
    put: bool,
    /// Some event is a Delete.
    delete: bool,
    /// Every event has a key-value and a known type.
    valid: bool,
}

impl Kinds {
    fn of(selection: &Selection) -> Kinds {
        let mut kinds = Kinds {
            first_rev: selection.events().next().map_or(0, event_rev),
            put: false,
            delete: false,
            valid: true,
        };
        for e in selection.events() {
            match EventType::try_from(e.r#type) {
                Ok(EventType::Put) => kinds.put = true,
                Ok(EventType::Delete) => kinds.delete = true,
                Err(_) => kinds.valid = false,
            }
            kinds.valid &= e.kv.is_some();
        }
        kinds
    }
}

/// Event responses bound for one stream, and whose they are.
#[derive(Default)]
struct Outgoing {
    keys: Vec<WatcherKey>,
    responses: Vec<EventsResponse>,
}

impl Outgoing {
    fn with_capacity(n: usize) -> Outgoing {
        Outgoing {
            keys: Vec::with_capacity(n),
            responses: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, key: WatcherKey, response: EventsResponse) {
        self.keys.push(key);
        self.responses.push(response);
    }
}

/// Whether an event could have a `prev_kv` it does not carry: a put of a
/// key that existed before it (version above 1), or a delete.
fn lacks_prev_kv(e: &Event) -> bool {
    e.prev_kv.is_none()
        && match EventType::try_from(e.r#type) {
            Ok(EventType::Put) => e.kv.as_ref().is_some_and(|kv| kv.version > 1),
            Ok(EventType::Delete) => true,
            Err(_) => false,
        }
}

/// Every watcher of the member. See the module documentation.
pub struct Hub {
    /// Where catch-up reads history.
    store: Arc<Store>,
    /// The last revision whose events were dispatched to synced watchers.
    rev: i64,
    streams: IdMap<StreamId, Stream>,
    watchers: IdMap<WatcherKey, Watcher>,
    /// Watchers that get live events.
    synced: WatcherGroup,
    /// Watchers catching up from history.
    unsynced: WatcherGroup,
    next_stream: StreamId,
    next_key: WatcherKey,
    next_epoch: u64,
}

impl Hub {
    /// A hub with no watchers, at the store's current revision.
    pub fn new(store: Arc<Store>) -> Hub {
        let rev = store.current_revision();
        Hub {
            store,
            rev,
            streams: IdMap::default(),
            watchers: IdMap::default(),
            synced: WatcherGroup::new(),
            unsynced: WatcherGroup::new(),
            next_stream: 1,
            next_key: 1,
            next_epoch: 1,
        }
    }

    /// The last revision dispatched (what progress notifications report).
    pub fn revision(&self) -> i64 {
        self.rev
    }

    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Number of watchers (both groups).
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Sets the watch gauges of `/metrics` (watchers, unsynced watchers,
    /// streams) to what this hub holds.
    pub fn publish_gauges(&self) {
        let gauges = &crate::io_metrics::WATCH;
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauges.watchers.set(to_i64(self.watchers.len()));
        gauges.slow_watchers.set(to_i64(self.unsynced.len()));
        gauges.streams.set(to_i64(self.streams.len()));
    }

    /// Registers a stream whose sender reads `tx`'s channel.
    pub fn open_stream(&mut self, tx: mpsc::Sender<Outbound>) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            Stream {
                tx,
                ids: HashMap::new(),
                next_id: 0,
                pending_progress: Vec::new(),
                generation: 0,
            },
        );
        id
    }

    /// Forgets a stream and all its watchers.
    pub fn close_stream(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.remove(&stream) {
            for key in s.ids.into_values() {
                self.forget(key);
            }
        }
    }

    /// Removes a watcher from its group and the watcher table.
    fn forget(&mut self, key: WatcherKey) -> Option<Watcher> {
        let w = self.watchers.remove(&key)?;
        let group = if w.synced {
            &mut self.synced
        } else {
            &mut self.unsynced
        };
        group.remove(key, &w.range);
        Some(w)
    }

    /// Puts a watcher that has seen everything below `next` in the right
    /// group: synced if that is beyond the dispatched revision.
    fn place(&mut self, key: WatcherKey, next: i64) {
        let Some(w) = self.watchers.get_mut(&key) else {
            return;
        };
        let next = next.max(w.min_rev);
        if next > self.rev {
            w.synced = true;
            self.synced.add(key, &w.range);
        } else {
            w.synced = false;
            w.next_rev = next;
            self.unsynced.add(key, &w.range);
        }
    }

    /// Moves a synced watcher to the unsynced group at `next`.
    fn desync(&mut self, key: WatcherKey, next: i64) {
        if let Some(w) = self.watchers.get(&key) {
            if w.synced {
                self.synced.remove(key, &w.range);
                self.place(key, next);
            }
        }
    }

    /// Handles a create request: queues the `created` response (or etcd's
    /// created-and-canceled answer to a bad request) and registers the
    /// watcher. Returns whether it needs a catch-up pass.
    pub fn create(
        &mut self,
        stream: StreamId,
        req: WatchCreateRequest,
        permit: CtrlPermit,
    ) -> bool {
        let rev = self.rev;
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        let fail = |s: &Stream, reason: String, permit| {
            s.push_ctrl(Outbound::CreateFailed {
                revision: rev,
                reason,
                _permit: permit,
            })
        };
        // etcd: an empty key is "\0", the smallest key.
        let key = if req.key.is_empty() { vec![0] } else { req.key };
        let range = KeyRange::new(&key, &req.range_end);
        if matches!(&range, KeyRange::Between(k, end) if k >= end) {
            fail(s, ERR_EMPTY_RANGE.into(), permit);
            return false;
        }
        if req.start_revision < 0 {
            fail(s, EtcdError::Compacted.to_string(), permit);
            return false;
        }
        let id = if req.watch_id != AUTO_WATCH_ID {
            if s.ids.contains_key(&req.watch_id) {
                fail(s, ERR_DUPLICATE_ID.into(), permit);
                return false;
            }
            req.watch_id
        } else {
            while s.ids.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        };
        let start = req.start_revision;
        let min_rev = if start == 0 { rev + 1 } else { start };
        s.push_ctrl(Outbound::Created {
            watch_id: id,
            revision: rev,
            delivered: min_rev - 1,
            _permit: permit,
        });
        let key = self.next_key;
        self.next_key += 1;
        s.ids.insert(id, key);
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        let epoch = self.new_epoch();
        self.watchers.insert(
            key,
            Watcher {
                stream,
                id,
                epoch,
                range,
                no_put: has(FilterType::Noput),
                no_delete: has(FilterType::Nodelete),
                prev_kv: req.prev_kv,
                fragment: req.fragment,
                progress_notify: req.progress_notify,
                min_rev,
                next_rev: min_rev,
                synced: false,
                quiet: true,
            },
        );
        self.place(key, min_rev);
        let synced = self.watchers.get(&key).is_some_and(|w| w.synced);
        if synced {
            self.answer_progress(stream);
        }
        !synced
    }

    fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Handles a cancel request. Like etcd, an unknown id gets no answer.
    pub fn cancel(&mut self, stream: StreamId, watch_id: i64, permit: CtrlPermit) {
        let rev = self.rev;
        let Some(key) = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.ids.remove(&watch_id))
        else {
            return;
        };
        self.forget(key);
        if let Some(s) = self.streams.get(&stream) {
            s.push_ctrl(Outbound::Canceled {
                watch_id,
                revision: rev,
                _permit: permit,
            });
        }
        self.answer_progress(stream);
    }

    /// Handles a RequestProgress: answered (watch id -1, the dispatched
    /// revision) as soon as every watcher of the stream is synced, so the
    /// answer never claims a revision the client has not seen all of.
    pub fn request_progress(&mut self, stream: StreamId, permit: CtrlPermit) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.pending_progress.push(permit);
            self.answer_progress(stream);
        }
    }

    fn answer_progress(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.pending_progress.is_empty() {
            return;
        }
        let all_synced = s
            .ids
            .values()
            .all(|k| self.watchers.get(k).is_none_or(|w| w.synced));
        if !all_synced {
            return;
        }
        for permit in std::mem::take(&mut s.pending_progress) {
            s.push_ctrl(Outbound::Progress {
                watch_id: -1,
                revision: self.rev,
                epoch: None,
                generation: s.generation,
                _permit: permit,
            });
        }
    }

    /// Dispatches an applied batch to the synced watchers. Returns whether a
    /// catch-up pass is needed (a stream was full, or revisions were missed).
    pub fn applied(&mut self, revision: i64, events: Arc<Vec<Event>>) -> bool {
        let start = self.rev;
        if revision <= start {
            return false;
        }
        let first = events
            .iter()
            .position(|e| event_rev(e) > start)
            .unwrap_or(events.len());
        if events.get(first).is_none_or(|e| event_rev(e) != start + 1) {
            // Revisions we never saw (published before we listened): let
            // every synced watcher read them from history.
            self.rev = revision;
            let keys: Vec<WatcherKey> = self
                .watchers
                .iter()
                .filter(|(_, w)| w.synced)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                self.desync(k, start + 1);
            }
            tracing::warn!(
                from = start + 1,
                to = revision,
                "watch feed skipped revisions; catching up from history"
            );
            return self.has_unsynced();
        }

        // One pass over the watchers each event concerns, set by set (a
        // range's watchers share its selection unless a filter or a start
        // revision makes one's events differ), building each stream's item.
        let sets = self.synced.select(&events, first);
        let events = self.with_prev_kvs(events, &sets);
        let matched: usize = sets.iter().map(|(ws, _)| ws.len()).sum();
        let mut by_stream: IdMap<StreamId, Outgoing> = IdMap::default();
        for (ws, indexes) in sets {
            let shared = Arc::new(Selection::new(events.clone(), indexes));
            let kinds = Kinds::of(&shared);
            for k in ws {
                let Some(w) = self.watchers.get(k) else {
                    continue;
                };
                let selection = if w.accepts_all(&kinds) {
                    shared.clone()
                } else {
                    let indexes: Vec<u32> = shared
                        .indexes
                        .iter()
                        .copied()
                        .filter(|&i| {
                            events
                                .get(i as usize)
                                .is_some_and(|e| w.accepts_in_range(e))
                        })
                        .collect();
                    if indexes.is_empty() {
                        continue;
                    }
                    Arc::new(Selection::new(events.clone(), indexes))
                };
                let streams = &self.streams;
                by_stream
                    .entry(w.stream)
                    .or_insert_with(|| {
                        let watchers = streams.get(&w.stream).map_or(0, |s| s.ids.len());
                        Outgoing::with_capacity(watchers.min(matched))
                    })
                    .push(*k, w.response(selection, revision));
            }
        }
        self.rev = revision;

        let mut need_sync = false;
        for (sid, Outgoing { keys, responses }) in by_stream {
            let pushed = self
                .streams
                .get(&sid)
                .is_some_and(|s| s.push_data(Outbound::Events(responses)));
            if !pushed {
                tracing::debug!(
                    stream = sid,
                    watchers = keys.len(),
                    from = start + 1,
                    "watch stream full; its watchers fall behind and catch up from history"
                );
            }
            for k in keys {
                if pushed {
                    if let Some(w) = self.watchers.get_mut(&k) {
                        w.quiet = false;
                    }
                } else {
                    self.desync(k, start + 1);
                    need_sync = true;
                }
            }
        }
        need_sync
    }

    /// `events` with the `prev_kv` of every event that a watcher asking for
    /// it gets in `sets`: applying a put does not read the key's previous
    /// record, so, as etcd's watch server does, the hub reads it when a
    /// watcher wants it (once per event, whatever the number of watchers).
    fn with_prev_kvs(
        &self,
        events: Arc<Vec<Event>>,
        sets: &[(&IdSet<WatcherKey>, Vec<u32>)],
    ) -> Arc<Vec<Event>> {
        let mut wanted: Vec<usize> = sets
            .iter()
            .filter(|(ws, _)| {
                ws.iter()
                    .any(|k| self.watchers.get(k).is_some_and(|w| w.prev_kv))
            })
            .flat_map(|(_, indexes)| indexes.iter().map(|&i| i as usize))
            .filter(|&i| events.get(i).is_some_and(lacks_prev_kv))
            .collect();
        if wanted.is_empty() {
            return events;
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut events = Arc::unwrap_or_clone(events);
        let picked = events
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| wanted.binary_search(i).is_ok())
            .map(|(_, e)| e);
        if let Err(e) = self.store.fill_prev_kvs(picked) {
            fatal("reading the previous values of watch events", &e);
        }
        Arc::new(events)
    }

    /// One catch-up pass over the unsynced watchers whose streams have room:
    /// cancels the compacted ones, reads one window of history from the
    /// smallest `next_rev`, queues each watcher its part, and moves the
    /// watchers that reached the dispatched revision to the synced group.
    pub fn sync(&mut self) -> SyncOutcome {
        if self.unsynced.is_empty() {
            return SyncOutcome::Done;
        }
        let compact = self.store.compact_revision();
        let mut progressed = false;
        let unsynced: Vec<WatcherKey> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(k, _)| *k)
            .collect();
        let mut chosen = Vec::new();
        for k in unsynced {
            let Some(w) = self.watchers.get(&k) else {
                continue;
            };
            let Some(s) = self.streams.get(&w.stream) else {
                continue;
            };
            if w.next_rev < compact {
                let item = Outbound::Compacted {
                    watch_id: w.id,
                    compact_revision: compact,
                };
                if s.push_data(item) {
                    let (sid, id) = (w.stream, w.id);
                    self.forget(k);
                    if let Some(s) = self.streams.get_mut(&sid) {
                        s.ids.remove(&id);
                    }
                    self.answer_progress(sid);
                    progressed = true;
                }
            } else if s.has_room() {
                chosen.push(k);
            }
        }
        let Some(from) = chosen
            .iter()
            .filter_map(|k| self.watchers.get(k))
            .map(|w| w.next_rev)
            .min()
        else {
            return self.outcome(progressed);
        };
        let to = self.rev.min(from + MAX_REVS_PER_SYNC - 1);
        let prev_kv = chosen
            .iter()
            .any(|k| self.watchers.get(k).is_some_and(|w| w.prev_kv));
        let unsynced = &self.unsynced;
        let events = match self.store.history(from, to, prev_kv, |k| unsynced.wants(k)) {
            Ok(events) => Arc::new(events),
            // Compacted meanwhile: the next pass cancels who needs it.
            Err(ReadError::Client(e)) => {
                tracing::debug!(cause = %e, from, to, "watch catch-up read refused; retrying");
                return self.outcome(true);
            }
            Err(ReadError::Storage(e)) => fatal("reading watch history", &e),
        };

        let mut by_stream: IdMap<StreamId, Outgoing> = IdMap::default();
        let mut caught_up = Vec::new();
        for k in chosen {
            let Some(w) = self.watchers.get(&k) else {
                continue;
            };
            if w.next_rev > to {
                continue;
            }
            let indexes: Vec<u32> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| event_rev(e) >= w.next_rev && w.accepts(e))
                .map(|(i, _)| i as u32)
                .collect();
            if indexes.is_empty() {
                caught_up.push(k);
            } else {
                let selection = Arc::new(Selection::new(events.clone(), indexes));
                by_stream
                    .entry(w.stream)
                    .or_default()
                    .push(k, w.response(selection, to));
            }
        }
        for (sid, Outgoing { keys, responses }) in by_stream {
            let pushed = self
                .streams
                .get(&sid)
                .is_some_and(|s| s.push_data(Outbound::Events(responses)));
            if pushed {
                for k in &keys {
                    if let Some(w) = self.watchers.get_mut(k) {
                        w.quiet = false;
                    }
                }
                caught_up.extend(keys);
            }
        }
        let mut streams = Vec::new();
        for k in caught_up {
            progressed = true;
            let Some(w) = self.watchers.get_mut(&k) else {
                continue;
            };
            w.next_rev = to + 1;
            streams.push(w.stream);
            if to == self.rev {
                self.unsynced.remove(k, &w.range);
                self.place(k, to + 1);
            }
        }
        streams.sort_unstable();
        streams.dedup();
        for sid in streams {
            self.answer_progress(sid);
        }
        self.outcome(progressed)
    }

    fn outcome(&self, progressed: bool) -> SyncOutcome {
        match (self.has_unsynced(), progressed) {
            (false, _) => SyncOutcome::Done,
            (true, true) => SyncOutcome::Progressed,
            (true, false) => SyncOutcome::Blocked,
        }
    }

    /// The periodic progress notification (`progress_notify`): each synced
    /// watcher that asked for it and had no events since the last tick gets
    /// an empty response at the dispatched revision.
    pub fn progress_tick(&mut self) {
        let rev = self.rev;
        for w in self.watchers.values_mut() {
            if !w.progress_notify {
                continue;
            }
            if w.quiet && w.synced {
                if let Some(s) = self.streams.get(&w.stream) {
                    s.push_data(Outbound::Progress {
                        watch_id: w.id,
                        revision: rev,
                        epoch: Some(w.epoch),
                        generation: s.generation,
                        _permit: None,
                    });
                }
            }
            w.quiet = true;
        }
    }

    /// A stream's sender failed while delivering to these watchers: each
    /// (watch id, epoch it failed in, first revision not delivered) restarts
    /// in a new epoch from that revision. `generation` is the sender's count
    /// of restarts. Returns whether a catch-up pass is needed.
    pub fn restart(
        &mut self,
        stream: StreamId,
        generation: u64,
        failed: &[(i64, u64, i64)],
    ) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        s.generation = s.generation.max(generation);
        let keys: Vec<(WatcherKey, u64, i64)> = failed
            .iter()
            .filter_map(|(id, epoch, from)| s.ids.get(id).map(|k| (*k, *epoch, *from)))
            .collect();
        for (k, epoch, from) in keys {
            if self.watchers.get(&k).is_none_or(|w| w.epoch != epoch) {
                continue;
            }
            let new_epoch = self.new_epoch();
            let Some(w) = self.watchers.get_mut(&k) else {
                continue;
            };
            w.epoch = new_epoch;
            let group = if w.synced {
                &mut self.synced
            } else {
                &mut self.unsynced
            };
            group.remove(k, &w.range);
            self.place(k, from);
        }
        self.has_unsynced()
    }
}

#[cfg(test)]
mod tests;
