//! The Watch API against the real binary: the stream protocol through a
//! tonic client (`WatchClient`), and `etcdctl watch`.
//!
//! Expectations about etcd's exact behaviour (response sequences, ids,
//! headers, etcdctl's output) were checked by running this file with
//! `CAIRN_TEST_SERVER=etcd` against etcd 3.4.23; the one cairn-only test (the
//! sender failpoint) skips itself there. Every wait is a condition with a
//! deadline.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::request_op::Request as Op;
use cairn::proto::etcdserverpb::watch_client::WatchClient;
use cairn::proto::etcdserverpb::watch_create_request::FilterType;
use cairn::proto::etcdserverpb::watch_request::RequestUnion;
use cairn::proto::etcdserverpb::*;
use cairn::proto::mvccpb::event::EventType;
use cairn::proto::mvccpb::Event;
use common::{etcdctl_ok, etcdctl_path, wait_until, Kind, Server};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long a test waits for a response it expects.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a test waits to be sure a response does not come.
const QUIET: Duration = Duration::from_millis(500);

/// Runs an async test body on a multi-threaded runtime.
fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

async fn channel(server: &Server) -> Channel {
    tonic::transport::Endpoint::from_shared(server.client_url())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

async fn kv(server: &Server) -> KvClient<Channel> {
    KvClient::new(channel(server).await).max_decoding_message_size(64 << 20)
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> i64 {
    let resp = kv
        .put(PutRequest {
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    resp.header.expect("header").revision
}

/// One txn putting every (key, value): one revision, several events.
async fn txn_put(kv: &mut KvClient<Channel>, kvs: &[(String, String)]) -> i64 {
    let success = kvs
        .iter()
        .map(|(k, v)| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.clone().into_bytes(),
                value: v.clone().into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    let resp = kv
        .txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .expect("txn")
        .into_inner();
    resp.header.expect("header").revision
}

async fn delete(kv: &mut KvClient<Channel>, key: &str) -> i64 {
    let resp = kv
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    resp.header.expect("header").revision
}

type Opening =
    tokio::task::JoinHandle<Result<tonic::Response<Streaming<WatchResponse>>, tonic::Status>>;

/// One client Watch stream.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    /// The call in flight until the server's response headers arrive (etcd
    /// sends them with its first message), then the response stream.
    opening: Option<Opening>,
    rx: Option<Streaming<WatchResponse>>,
}

impl Stream {
    async fn open(server: &Server) -> Stream {
        let mut client =
            WatchClient::new(channel(server).await).max_decoding_message_size(64 << 20);
        let (tx, req_rx) = mpsc::channel(64);
        let opening = tokio::spawn(async move {
            client
                .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
                .await
        });
        Stream {
            tx,
            opening: Some(opening),
            rx: None,
        }
    }

    async fn send(&self, req: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(req),
            })
            .await
            .expect("send watch request");
    }

    async fn create(&self, req: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(req)).await;
    }

    /// Creates a watch and returns its `created` response.
    async fn watch(&mut self, req: WatchCreateRequest) -> WatchResponse {
        self.create(req).await;
        let resp = self.next().await;
        assert!(resp.created, "expected a created response, got {resp:?}");
        resp
    }

    /// The next response; fails the test after [`DEADLINE`].
    async fn next(&mut self) -> WatchResponse {
        self.next_within(DEADLINE)
            .await
            .expect("no watch response within the deadline")
    }

    async fn next_within(&mut self, wait: Duration) -> Option<WatchResponse> {
        let deadline = tokio::time::Instant::now() + wait;
        if let Some(opening) = self.opening.take() {
            let opened = tokio::time::timeout_at(deadline, opening)
                .await
                .expect("watch stream not open within the deadline")
                .expect("watch call task");
            self.rx = Some(opened.expect("watch stream").into_inner());
        }
        let rx = self.rx.as_mut().expect("open stream");
        match tokio::time::timeout_at(deadline, rx.message()).await {
            Ok(Ok(Some(resp))) => Some(resp),
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(status)) => panic!("watch stream failed: {status}"),
            Err(_) => None,
        }
    }

    /// Reads responses until `done` holds for the events gathered per watch
    /// id; returns them with every response seen.
    async fn gather(
        &mut self,
        mut done: impl FnMut(&HashMap<i64, Vec<Event>>) -> bool,
    ) -> (HashMap<i64, Vec<Event>>, Vec<WatchResponse>) {
        let mut events: HashMap<i64, Vec<Event>> = HashMap::new();
        let mut seen = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !done(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(resp) = self.next_within(left).await else {
                let counts: BTreeMap<i64, usize> =
                    events.iter().map(|(k, v)| (*k, v.len())).collect();
                panic!("watch events incomplete at the deadline: {counts:?}");
            };
            events
                .entry(resp.watch_id)
                .or_default()
                .extend(resp.events.iter().cloned());
            seen.push(resp);
        }
        (events, seen)
    }
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

/// (type, key, value, mod revision) of each event.
fn summary(events: &[Event]) -> Vec<(EventType, String, String, i64)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                EventType::try_from(e.r#type).expect("event type"),
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn mod_revs(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect()
}

#[test]
fn create_cancel_ids_filters_and_prev_kv() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        let base = put(&mut kv, "other", b"x").await;
        let mut s = Stream::open(&server).await;

        // Server-assigned ids start at 0; the created header is complete.
        let created = s.watch(create("foo", "", 0)).await;
        assert_eq!((created.watch_id, created.canceled), (0, false));
        let h = created.header.expect("header");
        assert_eq!(h.revision, base);
        assert!(
            h.cluster_id != 0 && h.member_id != 0 && h.raft_term != 0,
            "{h:?}"
        );

        // A client-chosen id; then the same id again: created and canceled,
        // watch id -1 and mvcc's reason, as etcd.
        let mine = s
            .watch(WatchCreateRequest {
                watch_id: 7,
                prev_kv: true,
                ..create("foo/", "foo0", 0)
            })
            .await;
        assert_eq!(mine.watch_id, 7);
        let dup = s
            .watch(WatchCreateRequest {
                watch_id: 7,
                ..create("bar", "", 0)
            })
            .await;
        assert_eq!(
            (dup.watch_id, dup.canceled, dup.cancel_reason.as_str()),
            (
                -1,
                true,
                "mvcc: duplicate watch ID provided on the WatchStream"
            )
        );
        // An empty range is refused the same way.
        let empty = s.watch(create("b", "a", 0)).await;
        assert_eq!(
            (empty.watch_id, empty.canceled, empty.cancel_reason.as_str()),
            (-1, true, "mvcc: watcher range is empty")
        );
        // Auto ids go on from where they were.
        let nodelete = s
            .watch(WatchCreateRequest {
                filters: vec![FilterType::Nodelete as i32],
                ..create("foo", "\0", 0)
            })
            .await;
        assert_eq!(nodelete.watch_id, 1);
        let noput = s
            .watch(WatchCreateRequest {
                filters: vec![FilterType::Noput as i32],
                ..create("foo", "\0", 0)
            })
            .await;
        assert_eq!(noput.watch_id, 2);

        let r1 = put(&mut kv, "foo", b"1").await;
        let r2 = put(&mut kv, "foo/a", b"1").await;
        let r3 = put(&mut kv, "foo/a", b"2").await;
        let r4 = delete(&mut kv, "foo/a").await;
        let r5 = put(&mut kv, "fop", b"1").await;
        let (events, responses) = s
            .gather(|e| {
                e.get(&0).map_or(0, Vec::len) == 1
                    && e.get(&7).map_or(0, Vec::len) == 3
                    && e.get(&1).map_or(0, Vec::len) == 4
                    && e.get(&2).map_or(0, Vec::len) == 1
            })
            .await;
        for r in &responses {
            assert!(!r.events.is_empty(), "unexpected empty response {r:?}");
            let rev = r.header.as_ref().expect("header").revision;
            assert_eq!(rev, mod_revs(&r.events)[0], "live header revision");
        }
        assert_eq!(mod_revs(&events[&0]), vec![r1]);
        assert_eq!(mod_revs(&events[&7]), vec![r2, r3, r4]);
        assert_eq!(mod_revs(&events[&1]), vec![r1, r2, r3, r5]);
        assert_eq!(mod_revs(&events[&2]), vec![r4]);
        // prev_kv only where asked, none on a create.
        let prev: Vec<Option<String>> = events[&7]
            .iter()
            .map(|e| {
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            })
            .collect();
        assert_eq!(prev, vec![None, Some("1".into()), Some("2".into())]);
        assert!(events[&1].iter().all(|e| e.prev_kv.is_none()));
        // A delete event carries the key and its revision only.
        let del = events[&2][0].kv.clone().expect("kv");
        assert_eq!(
            (del.key, del.mod_revision, del.version),
            (b"foo/a".to_vec(), r4, 0)
        );

        // Cancel: answered once; nothing more for that watch.
        s.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        }))
        .await;
        let canceled = s.next().await;
        assert_eq!((canceled.watch_id, canceled.canceled), (0, true));
        put(&mut kv, "foo", b"2").await;
        let (events, _) = s.gather(|e| e.get(&1).map_or(0, Vec::len) == 1).await;
        assert!(!events.contains_key(&0), "events after cancel: {events:?}");
    });
}

#[test]
fn history_then_live_and_a_future_start_revision() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        let first = put(&mut kv, "h", b"0").await;
        for i in 1..5 {
            put(&mut kv, "h", i.to_string().as_bytes()).await;
        }
        let mut s = Stream::open(&server).await;
        let now = put(&mut kv, "h", b"5").await;
        s.watch(WatchCreateRequest {
            watch_id: 1,
            ..create("h", "", first)
        })
        .await;
        // Watch 1's history may come before or after this one's created
        // response: gather both.
        s.create(WatchCreateRequest {
            watch_id: 2,
            ..create("h", "", now + 2)
        })
        .await;
        let next = put(&mut kv, "h", b"6").await;
        let later = put(&mut kv, "h", b"7").await;
        let (events, responses) = s
            .gather(|e| e.get(&1).map_or(0, Vec::len) == 8 && e.get(&2).map_or(0, Vec::len) == 1)
            .await;
        assert!(responses.iter().any(|r| r.created && r.watch_id == 2));
        assert_eq!(mod_revs(&events[&1]), (first..=later).collect::<Vec<_>>());
        assert_eq!(next + 1, later);
        // The future watch waited for its revision.
        assert_eq!(mod_revs(&events[&2]), vec![later]);
    });
}

#[test]
fn compacted_start_revision_is_created_then_canceled() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        let first = put(&mut kv, "c", b"0").await;
        let mut rev = first;
        for i in 1..4 {
            rev = put(&mut kv, "c", i.to_string().as_bytes()).await;
        }
        kv.compact(CompactionRequest {
            revision: rev - 1,
            physical: true,
        })
        .await
        .expect("compact");
        let mut s = Stream::open(&server).await;
        let created = s.watch(create("c", "", first)).await;
        assert!(!created.canceled);
        assert_eq!(created.header.expect("header").revision, rev);
        let canceled = s.next().await;
        assert_eq!(
            (
                canceled.watch_id,
                canceled.created,
                canceled.canceled,
                canceled.compact_revision,
                canceled.events.len()
            ),
            (created.watch_id, false, true, rev - 1, 0)
        );
        // etcd sends it with no revision in the header.
        assert_eq!(canceled.header.expect("header").revision, 0);
        // At the compact revision itself the watch works.
        let ok = s.watch(create("c", "", rev - 1)).await;
        let (events, _) = s
            .gather(|e| e.get(&ok.watch_id).map_or(0, Vec::len) == 2)
            .await;
        assert_eq!(mod_revs(&events[&ok.watch_id]), vec![rev - 1, rev]);
    });
}

#[test]
fn request_progress_answers_with_the_current_revision() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        let mut s = Stream::open(&server).await;
        s.watch(create("p", "", 0)).await;
        let rev = put(&mut kv, "p", b"1").await;
        let (_, _) = s.gather(|e| e.get(&0).map_or(0, Vec::len) == 1).await;
        let unrelated = put(&mut kv, "q", b"1").await;
        s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
        let progress = s.next().await;
        assert_eq!(
            (
                progress.watch_id,
                progress.created,
                progress.canceled,
                progress.events.len()
            ),
            (-1, false, false, 0)
        );
        assert_eq!(progress.header.expect("header").revision, unrelated);
        assert_eq!(rev + 1, unrelated);
    });
}

#[test]
fn progress_notify_comes_at_the_configured_interval() {
    let flag = if std::env::var("CAIRN_TEST_SERVER").as_deref() == Ok("etcd") {
        "--experimental-watch-progress-notify-interval=300ms"
    } else {
        "--watch-progress-notify-interval=300ms"
    };
    let server = Server::start_with(Kind::Cairn, &[flag]);
    run(async {
        let mut kv = kv(&server).await;
        let rev = put(&mut kv, "n", b"1").await;
        let mut s = Stream::open(&server).await;
        let plain = s.watch(create("n", "", 0)).await.watch_id;
        let notified = s
            .watch(WatchCreateRequest {
                progress_notify: true,
                ..create("n", "", 0)
            })
            .await
            .watch_id;
        let progress = s.next().await;
        assert_eq!(
            (progress.watch_id, progress.events.len()),
            (notified, 0),
            "{progress:?}"
        );
        assert_eq!(progress.header.expect("header").revision, rev);
        assert_ne!(plain, notified);
    });
}

#[test]
fn fragmented_responses_reassemble_to_the_whole() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        // Four 600 KB values: together above --max-request-bytes (1.5 MiB)
        // plus gRPC's 512 KiB, so one catch-up response must be split.
        let value = vec![b'v'; 600 * 1024];
        let mut revs = Vec::new();
        for i in 0..4 {
            revs.push(put(&mut kv, &format!("big/{i}"), &value).await);
        }
        let mut s = Stream::open(&server).await;
        let w = s
            .watch(WatchCreateRequest {
                fragment: true,
                ..create("big/", "big0", revs[0])
            })
            .await
            .watch_id;
        let (events, responses) = s.gather(|e| e.get(&w).map_or(0, Vec::len) == 4).await;
        assert_eq!(mod_revs(&events[&w]), revs);
        let flags: Vec<(bool, usize)> = responses
            .iter()
            .map(|r| (r.fragment, r.events.len()))
            .collect();
        assert_eq!(flags, vec![(true, 3), (false, 1)]);

        // Without `fragment` the same history comes whole.
        let whole = s.watch(create("big/", "big0", revs[0])).await.watch_id;
        let (_, responses) = s.gather(|e| e.get(&whole).map_or(0, Vec::len) == 4).await;
        assert_eq!(responses.len(), 1);
        assert!(!responses[0].fragment);
    });
}

#[test]
fn a_watcher_that_disconnects_resumes_from_its_last_revision() {
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut kv = kv(&server).await;
        let mut s = Stream::open(&server).await;
        s.watch(create("r/", "r0", 0)).await;
        let mut written = Vec::new();
        for i in 0..10 {
            written.push(put(&mut kv, &format!("r/{i}"), b"v").await);
        }
        let (events, _) = s.gather(|e| e.get(&0).map_or(0, Vec::len) >= 5).await;
        let mut seen = events[&0].clone();
        seen.truncate(5); // the client processed five, then lost its connection
        drop(s);
        // Writes go on while nobody watches.
        for i in 10..20 {
            written.push(put(&mut kv, &format!("r/{i}"), b"v").await);
        }
        let last = mod_revs(&seen)[4];
        let mut s = Stream::open(&server).await;
        s.watch(create("r/", "r0", last + 1)).await;
        for i in 20..25 {
            written.push(put(&mut kv, &format!("r/{i}"), b"v").await);
        }
        let (events, _) = s.gather(|e| e.get(&0).map_or(0, Vec::len) == 20).await;
        seen.extend(events[&0].iter().cloned());
        // Every event exactly once, in order.
        assert_eq!(mod_revs(&seen), written);
        let keys: Vec<String> = summary(&seen).into_iter().map(|s| s.1).collect();
        let want: Vec<String> = (0..25).map(|i| format!("r/{i}")).collect();
        assert_eq!(keys, want);
    });
}

#[test]
fn a_thousand_watchers_on_one_prefix_get_every_event_in_order() {
    const STREAMS: usize = 4;
    const PER_STREAM: i64 = 250;
    let server = Server::start(Kind::Cairn);
    run(async {
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let mut s = Stream::open(&server).await;
            for _ in 0..PER_STREAM {
                s.create(create("t/", "t0", 0)).await;
            }
            for _ in 0..PER_STREAM {
                assert!(s.next().await.created);
            }
            streams.push(s);
        }
        let mut kv = kv(&server).await;
        let mut want = Vec::new();
        for i in 0..30 {
            if i % 3 == 0 {
                // Three events in one revision.
                let kvs: Vec<(String, String)> = (0..3)
                    .map(|j| (format!("t/{i}/{j}"), i.to_string()))
                    .collect();
                let rev = txn_put(&mut kv, &kvs).await;
                want.extend([rev; 3]);
            } else {
                want.push(put(&mut kv, &format!("t/{i}"), b"v").await);
            }
            put(&mut kv, "unwatched", b"x").await;
        }
        let mut readers = Vec::new();
        for mut s in streams {
            let n = want.len();
            readers.push(tokio::spawn(async move {
                let (events, responses) = s
                    .gather(|e| e.len() == PER_STREAM as usize && e.values().all(|v| v.len() >= n))
                    .await;
                (events, responses)
            }));
        }
        for r in readers {
            let (events, responses) = r.await.expect("reader");
            for (id, evs) in &events {
                assert_eq!(mod_revs(evs), want, "watch {id}");
            }
            // All events of a revision travel in one response.
            for resp in &responses {
                let revs = mod_revs(&resp.events);
                for r in &revs {
                    let in_resp = revs.iter().filter(|x| *x == r).count();
                    let total = want.iter().filter(|x| *x == r).count();
                    assert_eq!(in_resp, total, "revision {r} split across responses");
                }
            }
        }
    });
}

#[test]
fn a_slow_watcher_stalls_neither_writes_nor_other_watchers() {
    let server = Server::start_with(Kind::Cairn, &["--log-level", "debug"]);
    run(async {
        let mut slow = Stream::open(&server).await;
        slow.watch(create("s/", "s0", 0)).await;
        let mut fast = Stream::open(&server).await;
        fast.watch(create("s/", "s0", 0)).await;
        // The fast watcher reads concurrently with the writes.
        let n = 400;
        let fast_reader =
            tokio::spawn(
                async move { fast.gather(|e| e.get(&0).map_or(0, Vec::len) == n).await.0 },
            );
        // ~6.5 MB of events: far beyond what the slow stream's buffers
        // (gRPC, HTTP/2 windows, the broadcaster's channel) can hold.
        let value = vec![b'x'; 16 * 1024];
        let mut kv = kv(&server).await;
        let mut written = Vec::new();
        let started = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            written.push(put(&mut kv, &format!("s/{i}"), &value).await);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "put {i} took {:?} while a watcher was not reading",
                t.elapsed()
            );
        }
        let writing = started.elapsed();
        let fast_events = tokio::time::timeout(DEADLINE, fast_reader)
            .await
            .expect("fast watcher stalled")
            .expect("fast reader");
        assert_eq!(mod_revs(&fast_events[&0]), written);
        // Now the slow watcher reads: everything, once, in order.
        let (events, _) = slow.gather(|e| e.get(&0).map_or(0, Vec::len) >= n).await;
        assert_eq!(mod_revs(&events[&0]), written);
        assert!(
            slow.next_within(QUIET).await.is_none(),
            "duplicate events after catching up"
        );
        eprintln!("{n} puts took {writing:?} with a stalled watcher");
        if !server.is_etcd() {
            // The slow path really ran: the stream filled up.
            assert!(server.logs().contains("watch stream full"));
        }
    });
}

#[test]
fn watch_sender_panic_resumes_without_gap() {
    let server = Server::start_with_env(
        Kind::Cairn,
        &[],
        &[("CAIRN_FAILPOINT_WATCH_SENDER_PANIC", "77:/fp/k5")],
    );
    if server.is_etcd() {
        eprintln!("skipped: the sender failpoint is cairn's");
        return;
    }
    run(async {
        let mut failing = Stream::open(&server).await;
        failing
            .watch(WatchCreateRequest {
                watch_id: 77,
                prev_kv: true,
                ..create("/fp/", "/fp0", 0)
            })
            .await;
        // A second watch on the failing stream, and another stream.
        failing
            .watch(WatchCreateRequest {
                watch_id: 78,
                ..create("/fp/", "/fp0", 0)
            })
            .await;
        let mut other = Stream::open(&server).await;
        other.watch(create("/fp/", "/fp0", 0)).await;
        let mut kv = kv(&server).await;
        let mut written = Vec::new();
        for i in 0..10 {
            written.push(put(&mut kv, &format!("/fp/k{i}"), b"v").await);
        }
        let n = written.len();
        let (events, _) = other.gather(|e| e.get(&0).map_or(0, Vec::len) == n).await;
        assert_eq!(mod_revs(&events[&0]), written);
        let (events, _) = failing
            .gather(|e| e.get(&77).map_or(0, Vec::len) >= n && e.get(&78).map_or(0, Vec::len) >= n)
            .await;
        assert_eq!(mod_revs(&events[&77]), written, "the restarted watcher");
        assert_eq!(mod_revs(&events[&78]), written);
        // prev_kv survives the replay from history (none: each key is new).
        assert!(events[&77].iter().all(|e| e.prev_kv.is_none()));
        // It really failed, and it is live again afterwards.
        assert!(
            wait_until(DEADLINE, || server.logs().contains("watch sender panicked")),
            "the failpoint did not fire"
        );
        let again = put(&mut kv, "/fp/k5", b"w").await;
        let (events, _) = failing
            .gather(|e| e.get(&77).map_or(0, Vec::len) == 1)
            .await;
        assert_eq!(mod_revs(&events[&77]), vec![again]);
        let prev = events[&77][0].prev_kv.clone().expect("prev_kv");
        assert_eq!(prev.value, b"v".to_vec());
    });
}

/// `etcdctl watch ...` running in the background, its stdout collected.
struct EtcdctlWatch {
    child: Child,
    out: Arc<Mutex<String>>,
    stdin: Option<std::process::ChildStdin>,
}

impl EtcdctlWatch {
    fn start(server: &Server, args: &[&str], interactive: bool) -> EtcdctlWatch {
        let mut child = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .arg("watch")
            .args(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl watch");
        let out = common::collect(child.stdout.take().expect("stdout"));
        let stdin = child.stdin.take();
        EtcdctlWatch { child, out, stdin }
    }

    fn output(&self) -> String {
        self.out.lock().expect("lock").clone()
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("interactive");
        writeln!(stdin, "{line}").expect("write to etcdctl");
        stdin.flush().expect("flush");
    }

    /// Waits until the output holds `want` (after `from` bytes); returns
    /// the output.
    fn wait_for(&self, want: &str) -> String {
        let mut out = String::new();
        let ok = wait_until(DEADLINE, || {
            out = self.output();
            out.contains(want)
        });
        assert!(ok, "etcdctl watch output lacks {want:?}:\n{out}");
        out
    }

    /// A watch without --rev starts "now": put `key` until the watcher
    /// shows a put, so the test knows it is live; returns the output's
    /// length at that point.
    fn sync(&self, server: &Server, key: &str) -> usize {
        for i in 0.. {
            let marker = format!("sync-{i}");
            etcdctl_ok(server, &["put", key, &marker]);
            if wait_until(Duration::from_secs(1), || self.output().contains(&marker)) {
                let out = self.output();
                return out
                    .find(&marker)
                    .map_or(out.len(), |p| p + marker.len() + 1);
            }
            assert!(i < 20, "etcdctl watch never started");
        }
        unreachable!()
    }
}

impl Drop for EtcdctlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcdctl_watch_key_prefix_rev_and_prev_kv() {
    let server = Server::start(Kind::Cairn);
    etcdctl_ok(&server, &["put", "foo", "0"]);
    let rev = |out: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(out).expect("json");
        v["header"]["revision"].as_i64().expect("revision")
    };
    let start = rev(&etcdctl_ok(&server, &["put", "foo", "1", "-w", "json"]));
    etcdctl_ok(&server, &["put", "foo/a", "2"]);
    etcdctl_ok(&server, &["del", "foo"]);

    // --rev replays history, then goes on live.
    let from_rev = EtcdctlWatch::start(&server, &["foo", "--rev", &start.to_string()], false);
    // --prefix with --prev-kv from the same revision.
    let prefix = EtcdctlWatch::start(
        &server,
        &["foo", "--prefix", "--prev-kv", "--rev", &start.to_string()],
        false,
    );
    etcdctl_ok(&server, &["put", "foo", "3"]);
    assert_eq!(
        from_rev.wait_for("PUT\nfoo\n3\n"),
        "PUT\nfoo\n1\nDELETE\nfoo\n\nPUT\nfoo\n3\n"
    );
    assert_eq!(
        prefix.wait_for("PUT\nfoo\n3\n"),
        "PUT\nfoo\n0\nfoo\n1\nPUT\nfoo/a\n2\nDELETE\nfoo\n1\nfoo\n\nPUT\nfoo\n3\n"
    );

    // A plain watch starts now.
    let live = EtcdctlWatch::start(&server, &["bar"], false);
    let mark = live.sync(&server, "bar");
    etcdctl_ok(&server, &["put", "bar", "x"]);
    etcdctl_ok(&server, &["del", "bar"]);
    let out = live.wait_for("DELETE\nbar\n");
    assert_eq!(&out[mark..], "PUT\nbar\nx\nDELETE\nbar\n\n");
}

#[test]
fn etcdctl_watch_interactive() {
    let server = Server::start(Kind::Cairn);
    let first = etcdctl_ok(&server, &["put", "i1", "a", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&first).expect("json");
    let rev = v["header"]["revision"].as_i64().expect("revision");
    etcdctl_ok(&server, &["put", "i2", "b"]);
    let mut w = EtcdctlWatch::start(&server, &["-i"], true);
    // One watch at a time: etcdctl prints each watch's events from its own
    // goroutine, so two replays arriving together interleave their lines.
    w.type_line(&format!("watch i1 --rev {rev}"));
    w.wait_for("PUT\ni1\na\n");
    w.type_line(&format!("watch i2 --rev {rev}"));
    w.wait_for("PUT\ni2\nb\n");
    etcdctl_ok(&server, &["put", "i2", "c"]);
    let out = w.wait_for("PUT\ni2\nc\n");
    assert_eq!(out.matches("PUT\n").count(), 3, "{out}");
}

#[test]
fn shutdown_ends_open_watch_streams() {
    let mut server = Server::start(Kind::Cairn);
    let w = EtcdctlWatch::start(&server, &["foo"], false);
    w.sync(&server, "foo");
    // A graceful shutdown must not wait for the stream to finish.
    let status = server.terminate(Duration::from_secs(10));
    if !server.is_etcd() {
        assert!(status.success(), "{status}");
    }
}
