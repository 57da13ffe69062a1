//! Micro-benchmark of live watch dispatch (docs/performance.md): one applied
//! Put event handed to `watch::hub::Hub::applied` with 1,000 synced watchers,
//! driven directly (no actor, no network), with the real outbound channels.
//!
//! * `applied/prefix_s10`: 1,000 watchers on one prefix over 10 streams; the
//!   event matches all of them (100 responses per stream).
//! * `applied/prefix_s1000`: the same watchers, one stream each (1,000
//!   channels, one `try_send` per watcher).
//! * `applied/keys_s10`: 1,000 single-key watchers on distinct keys over 10
//!   streams; the event matches one of them.
//! * `drained/prefix_s10`: `applied/prefix_s10` plus receiving the queued
//!   items and dropping them — the whole life of the hub's allocations (a
//!   stream's sender task frees them in production, on another thread).
//! * `to_wire/prefix_s10`: `drained/prefix_s10` plus what the gRPC sender
//!   and tonic's encoder do per watcher: its `WatchReply` built with a
//!   header from the selection's encoded events (encoded by the first
//!   watcher of the selection, copied by the others), then encoded into one
//!   `BytesMut` per stream as tonic does (tonic's 5-byte frame prefix,
//!   HTTP/2 and the socket are not included).
//!
//! Timed: only the calls named above. Building the event (256 B value,
//! revision = the hub's + 1) and, for `applied/*`, draining the channels
//! afterwards (so they never fill and no watcher falls behind) happen
//! between timed sections (`iter_custom`). Throughput is per *registered*
//! watcher (1,000), also for `keys_s10` where only one matches.
//!
//! `cargo bench --bench watch_dispatch`; `cargo bench -- --test` runs each once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn::grpc::watch::{EncodedHeader, WatchReply};
use cairn::mvcc::{MemBackend, Store};
use cairn::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest};
use cairn::proto::mvccpb::{event::EventType, Event, KeyValue};
use cairn::watch::hub::Hub;
use cairn::watch::{outbound_channel, Outbound};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use tokio::sync::mpsc;

/// Watchers registered in every case.
const WATCHERS: usize = 1000;
/// The watched prefix and its range end.
const PREFIX: &[u8] = b"bench/watch/";
const PREFIX_END: &[u8] = b"bench/watch0";
/// Value size of the dispatched Put.
const VALUE: usize = 256;
/// The header the sender puts on each response (etcd's default member and
/// cluster ids; the revision is the response's).
const HEADER: ResponseHeader = ResponseHeader {
    cluster_id: 0xcdf8_1819_4e3a_8c32,
    member_id: 0x8e9e_05c5_2164_694d,
    revision: 0,
    raft_term: 2,
};
/// tonic's encode buffer: its initial size, and the size at which it hands
/// the bytes to HTTP/2.
const ENCODE_BUFFER: usize = 8 * 1024;
const YIELD_THRESHOLD: usize = 32 * 1024;

/// What the watchers watch.
#[derive(Clone, Copy)]
enum Shape {
    /// All on [`PREFIX`]: every event matches every watcher.
    Prefix,
    /// Watcher `i` on `key(i)`: an event matches one watcher.
    Keys,
}

fn key(i: usize) -> Vec<u8> {
    [PREFIX, format!("{i:08}").as_bytes()].concat()
}

/// A hub with [`WATCHERS`] synced watchers and the receiving end of each
/// stream's channel.
struct Fixture {
    hub: Hub,
    rxs: Vec<mpsc::Receiver<Outbound>>,
    /// Events dispatched so far (picks the next event's key).
    sent: usize,
}

impl Fixture {
    fn new(shape: Shape, streams: usize) -> Self {
        let store = Arc::new(Store::open(Arc::new(MemBackend::new())).expect("open store"));
        let mut hub = Hub::new(store);
        let mut sids = Vec::with_capacity(streams);
        let mut rxs = Vec::with_capacity(streams);
        for _ in 0..streams {
            let (tx, rx) = outbound_channel();
            sids.push(hub.open_stream(tx));
            rxs.push(rx);
        }
        for w in 0..WATCHERS {
            let req = match shape {
                Shape::Prefix => WatchCreateRequest {
                    key: PREFIX.to_vec(),
                    range_end: PREFIX_END.to_vec(),
                    ..Default::default()
                },
                Shape::Keys => WatchCreateRequest {
                    key: key(w),
                    ..Default::default()
                },
            };
            let needs_sync = hub.create(sids[w % streams], req, None);
            assert!(!needs_sync, "a watcher from now on starts synced");
        }
        let mut f = Fixture { hub, rxs, sent: 0 };
        // The `created` responses.
        assert_eq!(f.drain(), 0);
        assert_eq!(f.hub.watcher_count(), WATCHERS);
        f
    }

    /// The next Put under the prefix, at the next revision; its key cycles
    /// over the watched keys.
    fn event(&mut self) -> (i64, Arc<Vec<Event>>) {
        let rev = self.hub.revision() + 1;
        let key = key(self.sent % WATCHERS);
        self.sent += 1;
        let kv = KeyValue {
            key,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: vec![b'v'; VALUE],
            lease: 0,
        };
        let event = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        };
        (rev, Arc::new(vec![event]))
    }

    /// Dispatches the next event; panics if a watcher fell behind.
    fn dispatch(&mut self, rev: i64, events: Arc<Vec<Event>>) {
        let needs_sync = self.hub.applied(rev, events);
        assert!(!needs_sync && !self.hub.has_unsynced(), "a stream filled");
    }

    /// Receives and drops everything queued; returns the event responses.
    fn drain(&mut self) -> usize {
        let mut responses = 0;
        for rx in &mut self.rxs {
            while let Ok(item) = rx.try_recv() {
                if let Outbound::Events(rs) = item {
                    responses += rs.len();
                }
            }
        }
        responses
    }

    /// Receives everything queued and encodes each watcher's response as the
    /// gRPC sender builds it; returns the bytes encoded.
    fn encode_all(&mut self) -> usize {
        let mut bytes = 0;
        for rx in &mut self.rxs {
            // Like tonic: one buffer per stream, each reply appended.
            let mut buf = BytesMut::with_capacity(ENCODE_BUFFER);
            // Like the sender: a header is encoded once per revision.
            let mut header = (0, EncodedHeader::new(&HEADER));
            while let Ok(item) = rx.try_recv() {
                let Outbound::Events(rs) = item else { continue };
                for r in rs {
                    if header.0 != r.revision {
                        let h = ResponseHeader {
                            revision: r.revision,
                            ..HEADER
                        };
                        header = (r.revision, EncodedHeader::new(&h));
                    }
                    let reply =
                        WatchReply::events(header.1, r.watch_id, r.selection.encoded(r.prev_kv));
                    reply.encode(&mut buf).expect("BytesMut grows");
                    if buf.len() >= YIELD_THRESHOLD {
                        bytes += black_box(buf.split()).len();
                    }
                }
            }
            bytes += black_box(buf).len();
        }
        bytes
    }

    /// One dispatch, checking every watcher it should reach got one response.
    fn check(&mut self, want: usize) {
        let (rev, events) = self.event();
        self.dispatch(rev, events);
        assert_eq!(self.drain(), want);
    }
}

/// What one timed iteration covers.
#[derive(Clone, Copy)]
enum Step {
    Applied,
    Drained,
    ToWire,
}

fn watch_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch_dispatch");
    g.throughput(Throughput::Elements(WATCHERS as u64));
    let cases = [
        ("applied", "prefix_s10", Shape::Prefix, 10, Step::Applied),
        (
            "applied",
            "prefix_s1000",
            Shape::Prefix,
            1000,
            Step::Applied,
        ),
        ("applied", "keys_s10", Shape::Keys, 10, Step::Applied),
        ("drained", "prefix_s10", Shape::Prefix, 10, Step::Drained),
        ("to_wire", "prefix_s10", Shape::Prefix, 10, Step::ToWire),
    ];
    for (step_name, shape_name, shape, streams, step) in cases {
        let mut f = Fixture::new(shape, streams);
        let matching = match shape {
            Shape::Prefix => WATCHERS,
            Shape::Keys => 1,
        };
        f.check(matching);
        g.bench_function(BenchmarkId::new(step_name, shape_name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let (rev, events) = f.event();
                    let t = Instant::now();
                    let needs_sync = black_box(f.hub.applied(rev, events));
                    match step {
                        Step::Applied => {}
                        Step::Drained => {
                            black_box(f.drain());
                        }
                        Step::ToWire => {
                            black_box(f.encode_all());
                        }
                    }
                    timed += t.elapsed();
                    // Untimed: keep the channels empty (a no-op after a
                    // timed drain) and check nobody fell behind.
                    f.drain();
                    assert!(!needs_sync && !f.hub.has_unsynced(), "a stream filled");
                }
                timed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, watch_dispatch);
criterion_main!(benches);
