//! Watch: etcd's Watch API behind one actor, the **WatchBroadcaster**.
//!
//! It owns every watcher of the member. It takes [`crate::msg::Applied`]
//! from Storage (the events of each applied batch, in revision order) and the
//! requests of the gRPC Watch streams (open/close a stream, create/cancel a
//! watch, request progress, restart watchers after a sender failure), and it
//! sends [`Outbound`] items into one bounded channel per gRPC stream. It sits
//! *after* the write path: Storage hands it a batch with a non-blocking
//! `do_send` once the batch is applied, so no writer ever waits for a watcher.
//!
//! ```text
//!  Storage ──Applied{revision, events}──▶ WatchBroadcaster (own arbiter)
//!                                           │ Hub: synced / unsynced WatcherGroups
//!                                           │   live: events → synced watchers of each stream
//!                                           │   catch-up: Store::history(next_rev ..= rev) → unsynced
//!                                           ▼ try_send, never blocks; full ⇒ watcher unsynced
//!  gRPC Watch stream ◀── sender task ◀── bounded Outbound channel (one per stream)
//!        │                (fragment, prev_kv, header; restarts watchers if it panics)
//!        └── recv task ──CreateWatch / CancelWatch / RequestProgress──▶ WatchBroadcaster
//! ```
//!
//! * [`group`]: [`group::WatcherGroup`], watchers indexed by key and range.
//! * [`hub`]: [`hub::Hub`], the broadcaster's logic as plain code (tested
//!   without actors or network).
//! * [`broadcaster`]: the actor shell around the hub and its messages.
//! * [`failpoint`]: the test-only hook that makes a sender panic once.
//!
//! The gRPC side (stream protocol, sender supervision) is `grpc::watch`.

pub mod broadcaster;
pub mod failpoint;
pub mod group;
pub mod hub;

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use prost::encoding;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::proto::mvccpb::Event;

pub(crate) use crate::mvcc::history::event_rev;
pub use broadcaster::WatchBroadcaster;

/// Identifies one gRPC Watch stream inside the broadcaster.
pub type StreamId = u64;

/// A map keyed by ids the broadcaster assigns itself ([`StreamId`],
/// [`group::WatcherKey`]): foldhash instead of std's SipHash, which cost
/// half of live dispatch. Keys a client chooses (watch ids, watched keys)
/// keep SipHash.
pub(crate) type IdMap<K, V> = foldhash::HashMap<K, V>;
/// A set of ids the broadcaster assigns itself; see [`IdMap`].
pub(crate) type IdSet<K> = foldhash::HashSet<K>;

/// Items a stream's channel holds for data (events, progress, compaction)
/// before its watchers are moved to the unsynced group: etcd's `chanBufLen`.
pub const STREAM_BUFFER: usize = 128;

/// Control responses (created, canceled, progress) a stream may have queued
/// at once; the gRPC receive loop waits for a permit before it asks the
/// broadcaster for one, as etcd's `ctrlStreamBufLen` makes its recvLoop wait.
pub const CTRL_BUFFER: usize = 16;

/// The channel a stream's sender task reads. Data items only take a slot
/// while more than [`CTRL_BUFFER`] slots are free, so a control response
/// (which holds a permit) always finds room and is never dropped.
pub fn outbound_channel() -> (mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>) {
    mpsc::channel(STREAM_BUFFER + CTRL_BUFFER)
}

/// A control permit: released when the response it paid for is consumed.
pub type CtrlPermit = Option<OwnedSemaphorePermit>;

/// What the broadcaster queues for a stream's sender, in the order the
/// client must see it.
#[derive(Debug)]
pub enum Outbound {
    /// The first response of a watch: `created: true`.
    Created {
        watch_id: i64,
        /// Header revision: the broadcaster's revision at creation.
        revision: i64,
        /// The watcher has seen everything up to here (start revision - 1):
        /// where a restart resumes if nothing was delivered yet.
        delivered: i64,
        _permit: CtrlPermit,
    },
    /// A create that failed: `created` and `canceled`, watch id -1.
    CreateFailed {
        revision: i64,
        reason: String,
        _permit: CtrlPermit,
    },
    /// The answer to a cancel request.
    Canceled {
        watch_id: i64,
        revision: i64,
        _permit: CtrlPermit,
    },
    /// The last response of a watch whose history was compacted.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
    },
    /// A progress notification: watch id -1 answers a RequestProgress
    /// (`generation` = the stream's restart count when it was answered),
    /// a watcher's id is a periodic progress_notify (`epoch` = its epoch).
    Progress {
        watch_id: i64,
        revision: i64,
        epoch: Option<u64>,
        generation: u64,
        _permit: CtrlPermit,
    },
    /// Event responses for watchers of the stream, one per watcher.
    Events(Vec<EventsResponse>),
}

/// The events of one watcher, all revisions whole.
#[derive(Debug, Clone)]
pub struct EventsResponse {
    pub watch_id: i64,
    /// The watcher instance that produced it; a restart starts a new epoch and
    /// the sender drops what older epochs still have queued.
    pub epoch: u64,
    /// Header revision.
    pub revision: i64,
    /// Once delivered, the watcher has seen every event up to this revision.
    pub through: i64,
    /// The events, shared by every watcher that gets the same ones.
    pub selection: Arc<Selection>,
    /// Keep `prev_kv` (else it is cleared).
    pub prev_kv: bool,
    /// Split the response if it exceeds the request size limit.
    pub fragment: bool,
}

impl EventsResponse {
    /// This watcher's events, as they go on the wire.
    pub fn events(&self) -> Vec<Event> {
        self.selection
            .events()
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// Some events of a batch (or history window): what one watcher gets, or
/// every watcher of a range when they all accept the same events (the
/// common case), so that those share one list, and its wire encoding.
#[derive(Debug)]
pub struct Selection {
    /// The events of the batch, shared by every selection of it.
    pub batch: Arc<Vec<Event>>,
    /// Which of `batch` are selected, in order.
    pub indexes: Vec<u32>,
    /// The events encoded without their prev_kv, by the first stream sender
    /// that needs them; the others copy the bytes.
    wire: OnceLock<EncodedEvents>,
    /// The same with prev_kv, or None when no event has one (then the
    /// encoding above serves both).
    wire_prev_kv: OnceLock<Option<EncodedEvents>>,
}

impl Selection {
    pub fn new(batch: Arc<Vec<Event>>, indexes: Vec<u32>) -> Selection {
        Selection {
            batch,
            indexes,
            wire: OnceLock::new(),
            wire_prev_kv: OnceLock::new(),
        }
    }

    /// The selected events, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> + Clone {
        self.indexes
            .iter()
            .filter_map(|&i| self.batch.get(i as usize))
    }

    /// The selected events as a WatchResponse's `events` field carries them,
    /// with their prev_kv only if `prev_kv`: encoded on the first call,
    /// shared by every later one.
    pub fn encoded(&self, prev_kv: bool) -> &EncodedEvents {
        let with = prev_kv
            .then(|| {
                self.wire_prev_kv
                    .get_or_init(|| {
                        let any = self.events().any(|e| e.prev_kv.is_some());
                        any.then(|| EncodedEvents::new(self.events(), true))
                    })
                    .as_ref()
            })
            .flatten();
        with.unwrap_or_else(|| {
            self.wire
                .get_or_init(|| EncodedEvents::new(self.events(), false))
        })
    }
}

/// The field number of `WatchResponse.events` (etcd's `rpc.proto`).
pub const EVENTS_FIELD: u32 = 11;

/// Events encoded as repeated field [`EVENTS_FIELD`] of a WatchResponse:
/// each one's tag, length and bytes, back to back, exactly as prost encodes
/// `WatchResponse.events`, so that a response is its other fields followed
/// by (a slice of) these bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvents {
    pub bytes: Bytes,
    /// Where each event ends in `bytes`.
    pub ends: Vec<usize>,
}

impl EncodedEvents {
    fn new<'a>(events: impl Iterator<Item = &'a Event> + Clone, prev_kv: bool) -> EncodedEvents {
        let len = events
            .clone()
            .map(|e| encoding::message::encoded_len(EVENTS_FIELD, e))
            .sum();
        let mut buf = BytesMut::with_capacity(len);
        let mut ends = Vec::new();
        for e in events {
            if prev_kv || e.prev_kv.is_none() {
                encoding::message::encode(EVENTS_FIELD, e, &mut buf);
            } else {
                let e = Event {
                    r#type: e.r#type,
                    kv: e.kv.clone(),
                    prev_kv: None,
                };
                encoding::message::encode(EVENTS_FIELD, &e, &mut buf);
            }
            ends.push(buf.len());
        }
        EncodedEvents {
            bytes: buf.freeze(),
            ends,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}
