//! What cairn's users live on, end to end over gRPC: a service-discovery
//! registry (instances under leases with keep-alives, a consumer that lists
//! then watches) and feature flags watched by a running app, across a
//! server restart. Every check here holds against real etcd too
//! (`CAIRN_TEST_SERVER=etcd`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::lease_client::LeaseClient;
use cairn::proto::etcdserverpb::watch_client::WatchClient;
use cairn::proto::etcdserverpb::{
    kv_client::KvClient, request_op, watch_request, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use cairn::proto::mvccpb::event::EventType;
use common::{Kind, Server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Short raft timings so the minimum lease TTL is 1 s (etcd: ceil(1.5 ×
/// election timeout)); etcd accepts the same flags.
const FAST_RAFT: &[&str] = &["--heartbeat-interval", "10", "--election-timeout", "100"];

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.client_url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// One watch stream on a prefix, from a revision.
struct Watcher {
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl Watcher {
    async fn start(ch: Channel, prefix: &[u8], from: i64) -> Watcher {
        let (tx, rx) = mpsc::channel(4);
        let create = WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from,
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("send create");
        let mut responses = WatchClient::new(ch)
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let first = responses
            .next()
            .await
            .expect("created response")
            .expect("created ok");
        assert!(first.created, "first response must be `created`: {first:?}");
        Watcher {
            _requests: tx,
            responses,
        }
    }

    /// The next response that carries events, within `timeout`.
    async fn next_events(&mut self, timeout: Duration) -> Option<WatchResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.responses.next())
                .await
                .ok()??;
            let resp = next.ok()?;
            assert!(!resp.canceled, "watch canceled: {resp:?}");
            if !resp.events.is_empty() {
                return Some(resp);
            }
        }
    }
}

/// A consumer's view of a prefix, kept by list-then-watch.
#[derive(Default)]
struct View {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    revision: i64,
}

impl View {
    fn apply(&mut self, resp: &WatchResponse) {
        for ev in &resp.events {
            let kv = ev.kv.as_ref().expect("event kv");
            assert!(kv.mod_revision >= self.revision, "events went backwards");
            self.revision = kv.mod_revision;
            if ev.r#type == EventType::Delete as i32 {
                self.entries.remove(&kv.key);
            } else {
                self.entries.insert(kv.key.clone(), kv.value.clone());
            }
        }
    }
}

/// The store's content under `prefix` at `revision`.
async fn store_at(
    kv: &mut KvClient<Channel>,
    prefix: &[u8],
    revision: i64,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let resp = kv
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            revision,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// One registered instance: a lease kept alive by a task until aborted.
struct Instance {
    key: Vec<u8>,
    keepalive: tokio::task::JoinHandle<()>,
}

async fn register(ch: Channel, name: &str, i: usize, ttl: i64) -> Instance {
    let mut lease = LeaseClient::new(ch.clone());
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease grant")
        .into_inner();
    let key = format!("/services/{name}/{i}").into_bytes();
    KvClient::new(ch.clone())
        .put(PutRequest {
            key: key.clone(),
            value: format!("10.0.0.{i}:8080").into_bytes(),
            lease: granted.id,
            ..Default::default()
        })
        .await
        .expect("register put");
    let id = granted.id;
    let keepalive = tokio::spawn(async move {
        let (tx, rx) = mpsc::channel(1);
        // The first request goes out before the call is awaited: a gRPC
        // server may send the stream's headers only with its first reply.
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
        let mut replies = match lease.lease_keep_alive(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => return,
        };
        // A client's keep-alive pace (a third of the TTL), not a synchronisation.
        let mut every = tokio::time::interval(Duration::from_millis((ttl * 1000 / 3) as u64));
        every.tick().await;
        loop {
            match replies.next().await {
                Some(Ok(r)) if r.ttl > 0 => {}
                _ => return,
            }
            every.tick().await;
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                return;
            }
        }
    });
    Instance { key, keepalive }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_discovery_registry_follows_leases() {
    const TTL: i64 = 2;
    let server = tokio::task::spawn_blocking(|| Server::start_with(Kind::Cairn, FAST_RAFT))
        .await
        .expect("start");
    let ch = channel(&server).await;
    let mut kv = KvClient::new(ch.clone());
    let prefix = b"/services/api/";

    let mut instances = Vec::new();
    for i in 0..20 {
        instances.push(register(ch.clone(), "api", i, TTL).await);
    }

    // The consumer lists, then watches from just after the listed revision.
    let listed = kv
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let mut view = View {
        entries: listed
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        revision: listed.header.as_ref().map(|h| h.revision).unwrap_or(0),
    };
    assert_eq!(view.entries.len(), 20);
    let mut watcher = Watcher::start(ch.clone(), prefix, view.revision + 1).await;

    // Keep-alives hold every registration well past the TTL.
    let held_until = Instant::now() + Duration::from_secs(TTL as u64 * 2);
    let mut stray = 0;
    while Instant::now() < held_until {
        if let Some(resp) = watcher.next_events(Duration::from_millis(200)).await {
            eprintln!("unexpected change: {resp:?}");
            stray += 1;
        }
    }
    assert_eq!(
        stray, 0,
        "nothing may change while every instance keeps its lease alive"
    );
    assert_eq!(store_at(&mut kv, prefix, 0).await.len(), 20);

    // Five instances die: they stop keeping their leases alive.
    let stopped = Instant::now();
    let dead: Vec<Vec<u8>> = instances
        .drain(..5)
        .map(|i| {
            i.keepalive.abort();
            i.key
        })
        .collect();
    while view.entries.len() > 15 {
        let left = (Duration::from_secs(TTL as u64 + 1)).saturating_sub(stopped.elapsed());
        let resp = watcher.next_events(left).await.unwrap_or_else(|| {
            panic!(
                "dead instances still listed {:?} after TTL + 1 s",
                stopped.elapsed()
            )
        });
        view.apply(&resp);
        // At every step the consumer's view is the store at that revision.
        assert_eq!(view.entries, store_at(&mut kv, prefix, view.revision).await);
    }
    for key in &dead {
        assert!(
            !view.entries.contains_key(key),
            "{} should be gone",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(
        view.entries,
        store_at(&mut kv, prefix, 0).await,
        "view equals the store now"
    );

    // A new instance shows up in the watch as well.
    instances.push(register(ch.clone(), "api", 99, TTL).await);
    let resp = watcher
        .next_events(Duration::from_secs(5))
        .await
        .expect("registration event");
    view.apply(&resp);
    assert_eq!(view.entries.len(), 16);
    assert_eq!(view.entries, store_at(&mut kv, prefix, view.revision).await);
    for i in instances {
        i.keepalive.abort();
    }
}

/// What the writer did, as (revision, key, value or None for a delete).
type Change = (i64, Vec<u8>, Option<Vec<u8>>);

async fn flip_flags(kv: &mut KvClient<Channel>, round: usize, log: &mut Vec<Change>) {
    let key = |n: usize| format!("/flags/f{n}").into_bytes();
    for step in 0..10 {
        let n = (round * 10 + step) % 7;
        match step % 4 {
            0 | 1 => {
                let value = format!("on-{round}-{step}").into_bytes();
                let r = kv
                    .put(PutRequest {
                        key: key(n),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("put flag")
                    .into_inner();
                log.push((r.header.expect("header").revision, key(n), Some(value)));
            }
            2 => {
                let r = kv
                    .delete_range(DeleteRangeRequest {
                        key: key(n),
                        ..Default::default()
                    })
                    .await
                    .expect("delete flag")
                    .into_inner();
                if r.deleted > 0 {
                    log.push((r.header.expect("header").revision, key(n), None));
                }
            }
            _ => {
                // Two flags flipped together: one revision, one response.
                let (a, b) = (key(n), key((n + 1) % 7));
                let put = |k: Vec<u8>| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k,
                        value: format!("txn-{round}-{step}").into_bytes(),
                        ..Default::default()
                    })),
                };
                let r = kv
                    .txn(TxnRequest {
                        compare: vec![],
                        success: vec![put(a.clone()), put(b.clone())],
                        failure: vec![],
                    })
                    .await
                    .expect("txn")
                    .into_inner();
                let rev = r.header.expect("header").revision;
                let v = format!("txn-{round}-{step}").into_bytes();
                log.push((rev, a, Some(v.clone())));
                log.push((rev, b, Some(v)));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feature_flags_app_sees_every_change_in_order_across_a_restart() {
    let mut server = tokio::task::spawn_blocking(|| Server::start(Kind::Cairn))
        .await
        .expect("start");
    let mut kv = KvClient::new(channel(&server).await);
    let start = kv
        .range(RangeRequest {
            key: b"/flags/".to_vec(),
            range_end: prefix_end(b"/flags/"),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;

    let mut written = Vec::new();
    let mut seen: Vec<Change> = Vec::new();
    let mut last_rev = start;
    for round in 0..3 {
        let mut app = Watcher::start(channel(&server).await, b"/flags/", last_rev + 1).await;
        flip_flags(&mut kv, round, &mut written).await;
        let want = written.len();
        while seen.len() < want {
            let resp = app
                .next_events(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "round {round}: the app saw {} of {want} changes",
                        seen.len()
                    )
                });
            let revs: Vec<i64> = resp
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
                .collect();
            assert!(
                revs.windows(2).all(|w| w[0] == w[1]),
                "one response, one revision: {revs:?}"
            );
            for ev in &resp.events {
                let kv = ev.kv.as_ref().expect("kv");
                let value = (ev.r#type != EventType::Delete as i32).then(|| kv.value.clone());
                seen.push((kv.mod_revision, kv.key.clone(), value));
                last_rev = kv.mod_revision;
            }
        }
        // The app's connection dies with the server; it resumes from last_rev.
        drop(app);
        server.kill();
        tokio::task::block_in_place(|| server.restart());
        kv = KvClient::new(channel(&server).await);
    }
    assert_eq!(seen, written, "every change, in order, exactly once");
}
