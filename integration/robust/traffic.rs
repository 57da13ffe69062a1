//! Traffic generators: real etcd v3 gRPC clients (cairn's generated tonic
//! stubs) that record everything they see into a [`Recorder`].
//!
//! * [`kv_client`]: puts, linearizable gets, deletes and compare-and-swap
//!   txns (on the mod_revision the client last saw) over a few keys, so
//!   clients conflict; values are unique (`c<client>-<n>`).
//! * [`watcher`]: watches of the key prefix from random past revisions, each
//!   for a random while, with progress requests.
//! * [`reference_watcher`]: one watch of the prefix for the whole run,
//!   resumed from its last revision + 1 whenever its stream breaks: the
//!   checkers' fullest view of what happened at each revision.
//! * [`compactor`]: compacts periodically, never past what the reference
//!   watcher has seen (so it never has to give up).
//!
//! Every loop ends at its deadline or its operation count, whichever first.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::lease_client::LeaseClient;
use cairn::proto::etcdserverpb::watch_client::WatchClient;
use cairn::proto::etcdserverpb::watch_request::RequestUnion;
use cairn::proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use cairn::proto::mvccpb;
use cairn_robust::history::{
    self, Event, KeyValue, Operation, Outcome, Request, Response, Watch, WatchResponse,
};
use tonic::transport::Channel;

/// Every key of a run lives under this prefix.
pub const PREFIX: &str = "/robust/";
/// The end of the prefix's range.
pub const PREFIX_END: &str = "/robust0";
/// A client request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A small deterministic generator (xorshift64*), one per task, seeded from
/// the run's seed so a run's choices can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Where every task writes what it saw; shared by all of them.
pub struct Recorder {
    start: Instant,
    pub initial_revision: i64,
    operations: Mutex<Vec<Operation>>,
    watches: Mutex<Vec<Watch>>,
    /// The highest revision any response showed.
    pub max_revision: AtomicI64,
    /// The last revision compacted (0: none).
    pub compacted: AtomicI64,
    /// The revision the reference watcher has vouched for.
    pub reference: AtomicI64,
    /// Tells the reference watcher to finish.
    pub stop_reference: AtomicBool,
    /// Revisions compactions were requested at.
    compactions: Mutex<Vec<i64>>,
    /// Operations acknowledged so far.
    acknowledged: AtomicUsize,
    /// Traffic (and the nemesis) stop once this many operations are
    /// acknowledged, even before their deadline (usize::MAX: never).
    pub target: AtomicUsize,
}

impl Recorder {
    pub fn new(initial_revision: i64) -> Recorder {
        Recorder {
            start: Instant::now(),
            initial_revision,
            operations: Mutex::new(Vec::new()),
            watches: Mutex::new(Vec::new()),
            max_revision: AtomicI64::new(initial_revision),
            compacted: AtomicI64::new(0),
            reference: AtomicI64::new(initial_revision),
            stop_reference: AtomicBool::new(false),
            compactions: Mutex::new(Vec::new()),
            acknowledged: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
        }
    }
    /// Whether enough operations were acknowledged (see `target`).
    pub fn enough(&self) -> bool {
        self.acknowledged.load(Ordering::SeqCst) >= self.target.load(Ordering::SeqCst)
    }
    /// Whether a loop bounded by `deadline` should stop.
    pub fn over(&self, deadline: Instant) -> bool {
        Instant::now() >= deadline || self.enough()
    }
    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn saw(&self, revision: i64) {
        self.max_revision.fetch_max(revision, Ordering::SeqCst);
    }
    pub fn record(&self, op: Operation) {
        if matches!(op.outcome, Outcome::Ok(_)) {
            self.acknowledged.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(revision) = match &op.outcome {
            Outcome::Ok(r) => r.revision(),
            Outcome::Failed(_) => None,
        } {
            self.saw(revision);
        }
        self.operations.lock().expect("recorder lock").push(op);
    }
    pub fn record_watch(&self, w: Watch) {
        self.watches.lock().expect("recorder lock").push(w);
    }
    /// The history recorded so far.
    pub fn history(&self) -> history::History {
        history::History {
            initial_revision: self.initial_revision,
            initial: Default::default(),
            operations: self.operations.lock().expect("recorder lock").clone(),
            watches: self.watches.lock().expect("recorder lock").clone(),
            compactions: self.compactions.lock().expect("recorder lock").clone(),
        }
    }
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(url: &str) -> Option<Channel> {
    Some(
        tonic::transport::Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(REQUEST_TIMEOUT)
            .connect_lazy(),
    )
}

fn key_value(kv: &mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

/// Sends one request; its response, or the error as text.
pub async fn execute(kv: &mut KvClient<Channel>, request: &Request) -> Result<Response, String> {
    let header_revision = |h: Option<cairn::proto::etcdserverpb::ResponseHeader>| {
        h.map(|h| h.revision).ok_or("response without a header")
    };
    match request {
        Request::Put { key, value } => {
            let r = kv
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::Put {
                revision: header_revision(r.header)?,
            })
        }
        Request::Get { key } => {
            let r = kv
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::Get {
                revision: header_revision(r.header)?,
                kv: r.kvs.first().map(key_value),
            })
        }
        Request::Delete { key } => {
            let r = kv
                .delete_range(DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::Delete {
                revision: header_revision(r.header)?,
                deleted: r.deleted,
            })
        }
        Request::Txn { key, compare, .. } | Request::TxnPair { key, compare, .. } => {
            let (target, union) = match compare {
                history::Compare::ModRevision(n) => {
                    (CompareTarget::Mod, TargetUnion::ModRevision(*n))
                }
                history::Compare::Value(v) => (
                    CompareTarget::Value,
                    TargetUnion::Value(v.clone().into_bytes()),
                ),
            };
            let r = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: target as i32,
                        key: key.clone().into_bytes(),
                        range_end: Vec::new(),
                        target_union: Some(union),
                    }],
                    success: request
                        .puts()
                        .into_iter()
                        .map(|(key, value)| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: key.as_bytes().to_vec(),
                                value: value.as_bytes().to_vec(),
                                ..Default::default()
                            })),
                        })
                        .collect(),
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: key.clone().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let kv = match r.responses.first().and_then(|o| o.response.as_ref()) {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.first().map(key_value)
                }
                _ => None,
            };
            Ok(Response::Txn {
                revision: header_revision(r.header)?,
                succeeded: r.succeeded,
                kv,
            })
        }
        Request::List { key, range_end } => {
            let r = kv
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    range_end: range_end.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::List {
                revision: header_revision(r.header)?,
                kvs: r
                    .kvs
                    .iter()
                    .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), key_value(kv)))
                    .collect(),
            })
        }
        Request::LeasePut { key, value, lease } => {
            let r = kv
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    lease: *lease,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::Put {
                revision: header_revision(r.header)?,
            })
        }
        other => Err(format!("not a KV request: {other:?}")),
    }
}

/// Sends one lease request (a keep-alive on a stream of its own); its
/// response, or the error as text.
pub async fn execute_lease(
    lease: &mut LeaseClient<Channel>,
    request: &Request,
) -> Result<Response, String> {
    let header_revision = |h: Option<cairn::proto::etcdserverpb::ResponseHeader>| {
        h.map(|h| h.revision).ok_or("response without a header")
    };
    match request {
        Request::LeaseGrant { id, ttl } => {
            let r = lease
                .lease_grant(LeaseGrantRequest { id: *id, ttl: *ttl })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if !r.error.is_empty() {
                return Err(r.error);
            }
            Ok(Response::LeaseGrant {
                revision: header_revision(r.header)?,
                ttl: r.ttl,
            })
        }
        Request::LeaseRevoke { id } => {
            let r = lease
                .lease_revoke(LeaseRevokeRequest { id: *id })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(Response::LeaseRevoke {
                revision: header_revision(r.header)?,
            })
        }
        Request::LeaseKeepAlive { id } => {
            // The request side stays open until the answer is in.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(LeaseKeepAliveRequest { id: *id })
                .await
                .map_err(|e| e.to_string())?;
            let answer = async {
                let mut stream = lease
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                match stream.message().await.map_err(|e| e.to_string())? {
                    Some(r) => Ok(Response::LeaseKeepAlive { ttl: r.ttl }),
                    None => Err("keep-alive stream ended without an answer".to_string()),
                }
            };
            let r = tokio::time::timeout(REQUEST_TIMEOUT, answer)
                .await
                .map_err(|_| "keep-alive timed out".to_string())?;
            drop(tx);
            r
        }
        other => Err(format!("not a lease request: {other:?}")),
    }
}

/// Records one operation's outcome.
fn record(
    rec: &Recorder,
    client: usize,
    invoked: u64,
    request: Request,
    result: Result<Response, String>,
) {
    rec.record(Operation {
        client,
        invoked,
        completed: rec.now(),
        request,
        outcome: match result {
            Ok(r) => Outcome::Ok(r),
            Err(e) => Outcome::Failed(e),
        },
    });
}

/// The keys the lease clients write, under [`PREFIX`].
pub fn lease_key(k: usize) -> String {
    format!("{PREFIX}l{k}")
}

/// A lease client (etcd's lease traffic): grants short leases (1–3 s,
/// IDs it picks: `client << 32 | n`), attaches keys to them, keeps half of
/// them alive, revokes some, lets the others expire, and reads the keys to
/// see them vanish. `max_ops` operations at most, until `deadline`.
pub async fn lease_client(
    client: usize,
    url: String,
    rec: Arc<Recorder>,
    keys: usize,
    max_ops: usize,
    deadline: Instant,
    seed: u64,
) {
    struct Live {
        id: i64,
        /// Kept alive by this client; else left to expire, and no longer
        /// used a little before it may.
        kept: bool,
        usable_until: Instant,
    }
    let Some(channel) = lazy_channel(&url) else {
        return;
    };
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel);
    let mut rng = Rng::new(seed);
    let mut live: Vec<Live> = Vec::new();
    for n in 0..max_ops {
        let now = Instant::now();
        if rec.over(deadline) {
            break;
        }
        live.retain(|l| l.kept || now < l.usable_until);
        let key = lease_key(rng.below(keys as u64) as usize);
        let kept: Vec<i64> = live.iter().filter(|l| l.kept).map(|l| l.id).collect();
        let any = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize].id;
        let request = match rng.below(20) {
            _ if live.is_empty() => None,
            0..=6 => Some(Request::Get { key }),
            7..=13 => Some(Request::LeasePut {
                key,
                value: format!("c{client}-{n}"),
                lease: any(&mut rng),
            }),
            14..=16 if !kept.is_empty() => Some(Request::LeaseKeepAlive {
                id: kept[rng.below(kept.len() as u64) as usize],
            }),
            17 => Some(Request::LeaseRevoke { id: any(&mut rng) }),
            18 if live.len() < 6 => None,
            _ => Some(Request::Get { key: lease_key(0) }),
        };
        let ttl = 1 + rng.below(3) as i64;
        let request = request.unwrap_or(Request::LeaseGrant {
            id: ((client as i64 + 1) << 32) | n as i64,
            ttl,
        });
        let invoked = rec.now();
        let result = match &request {
            Request::Get { .. } | Request::LeasePut { .. } => execute(&mut kv, &request).await,
            _ => execute_lease(&mut lease, &request).await,
        };
        match (&request, &result) {
            (Request::LeaseGrant { id, .. }, Ok(Response::LeaseGrant { ttl, .. })) => {
                live.push(Live {
                    id: *id,
                    kept: rng.below(2) == 0,
                    usable_until: now + Duration::from_millis(*ttl as u64 * 1_000)
                        - Duration::from_millis(300),
                })
            }
            (Request::LeaseRevoke { id }, Ok(_))
            | (Request::LeaseKeepAlive { id }, Ok(Response::LeaseKeepAlive { ttl: ..=0 })) => {
                live.retain(|l| l.id != *id)
            }
            _ => {}
        }
        let failed = result.is_err();
        record(&rec, client, invoked, request, result);
        if failed {
            tokio::time::sleep(rng.millis(50, 150)).await;
        }
    }
}

/// The prefix the Kubernetes-style clients keep their objects under.
pub const K8S_PREFIX: &str = "/robust/pods/";

/// The key a Kubernetes-style client writes along with object `k` in a
/// txn pair (under the same prefix, so lists and informers see both).
pub fn companion_key(k: usize) -> String {
    format!("{K8S_PREFIX}s{k}")
}
const K8S_PREFIX_END: &str = "/robust/pods0";

/// A Kubernetes-style client (an apiserver's storage traffic): lists the
/// prefix, creates objects with `mod_revision == 0` txns and updates them
/// with txns on the mod_revision it last saw (optimistic concurrency), some
/// of which also write the object's companion key (two keys, one revision),
/// and reads single objects. `max_ops` operations at most, until `deadline`.
pub async fn k8s_client(
    client: usize,
    url: String,
    rec: Arc<Recorder>,
    keys: usize,
    max_ops: usize,
    deadline: Instant,
    seed: u64,
) {
    let Some(channel) = lazy_channel(&url) else {
        return;
    };
    let mut kv = KvClient::new(channel);
    let mut rng = Rng::new(seed);
    let mut last_seen = vec![0i64; keys];
    for n in 0..max_ops {
        if rec.over(deadline) {
            break;
        }
        let k = rng.below(keys as u64) as usize;
        let key = format!("{K8S_PREFIX}p{k}");
        let value = format!("c{client}-{n}");
        let request = match rng.below(10) {
            0..=3 => Request::List {
                key: K8S_PREFIX.to_string(),
                range_end: K8S_PREFIX_END.to_string(),
            },
            4 => Request::Get { key },
            5 => Request::Txn {
                key,
                compare: history::Compare::ModRevision(0),
                value,
            },
            // An update that writes the object's companion key (an index,
            // a status object) in the same txn, on the object's
            // mod_revision alone.
            6 | 7 => Request::TxnPair {
                key,
                compare: history::Compare::ModRevision(last_seen[k]),
                value,
                also: companion_key(k),
                also_value: format!("c{client}-{n}s"),
            },
            _ => Request::Txn {
                key,
                compare: history::Compare::ModRevision(last_seen[k]),
                value,
            },
        };
        let invoked = rec.now();
        let result = execute(&mut kv, &request).await;
        match &result {
            Ok(Response::List { kvs, .. }) => {
                last_seen.iter_mut().for_each(|m| *m = 0);
                for (key, kv) in kvs {
                    let i = key
                        .strip_prefix(K8S_PREFIX)
                        .and_then(|p| p.strip_prefix('p'))
                        .and_then(|i| i.parse::<usize>().ok());
                    if let Some(m) = i.and_then(|i| last_seen.get_mut(i)) {
                        *m = kv.mod_revision;
                    }
                }
            }
            Ok(Response::Txn {
                revision,
                succeeded: true,
                ..
            }) => last_seen[k] = *revision,
            Ok(Response::Get { kv, .. } | Response::Txn { kv, .. }) => {
                last_seen[k] = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            }
            _ => {}
        }
        let failed = result.is_err();
        record(&rec, client, invoked, request, result);
        if failed {
            tokio::time::sleep(rng.millis(50, 150)).await;
        }
    }
}

/// A Kubernetes-style informer: lists the objects' prefix, then watches it
/// from the list's revision + 1 for a while (a reflector's list-and-watch),
/// again and again until `deadline`. With `slow`, half its watches stop
/// reading their stream for 0.3–1.5 s after the first response (a slow
/// consumer: the server must hold or cancel, never drop or reorder).
pub async fn informer(
    client: usize,
    urls: Vec<String>,
    rec: Arc<Recorder>,
    deadline: Instant,
    slow: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    while !rec.over(deadline) {
        let url = &urls[rng.below(urls.len() as u64) as usize];
        let Some(channel) = lazy_channel(url) else {
            return;
        };
        let mut kv = KvClient::new(channel);
        let request = Request::List {
            key: K8S_PREFIX.to_string(),
            range_end: K8S_PREFIX_END.to_string(),
        };
        let invoked = rec.now();
        let result = execute(&mut kv, &request).await;
        let start = match &result {
            Ok(Response::List { revision, .. }) => Some(*revision + 1),
            _ => None,
        };
        record(&rec, client, invoked, request, result);
        let Some(start) = start else {
            tokio::time::sleep(rng.millis(50, 150)).await;
            continue;
        };
        let until = Instant::now() + rng.millis(1_000, 3_000);
        let stall = (slow && rng.below(2) == 0).then(|| rng.millis(300, 1_500));
        let w = watch_range(
            client,
            url,
            (K8S_PREFIX, K8S_PREFIX_END),
            start,
            &rec,
            None,
            stall,
            |_| Instant::now() >= until.min(deadline),
        )
        .await;
        if !w.responses.is_empty() {
            rec.record_watch(w);
        }
    }
}

/// One KV client: `max_ops` operations at most, until `deadline`.
pub async fn kv_client(
    client: usize,
    url: String,
    rec: Arc<Recorder>,
    keys: usize,
    max_ops: usize,
    deadline: Instant,
    seed: u64,
) {
    let Some(channel) = lazy_channel(&url) else {
        return;
    };
    let mut kv = KvClient::new(channel);
    let mut rng = Rng::new(seed);
    // The mod_revision this client last saw per key (0: absent/unknown).
    let mut last_seen = vec![0i64; keys];
    for n in 0..max_ops {
        if rec.over(deadline) {
            break;
        }
        let k = rng.below(keys as u64) as usize;
        let key = format!("{PREFIX}k{k}");
        let value = format!("c{client}-{n}");
        let request = match rng.below(20) {
            0..=7 => Request::Get { key },
            8..=12 => Request::Put { key, value },
            13..=14 => Request::Delete { key },
            _ => Request::Txn {
                key,
                compare: history::Compare::ModRevision(last_seen[k]),
                value,
            },
        };
        let invoked = rec.now();
        let result = execute(&mut kv, &request).await;
        let completed = rec.now();
        let failed = result.is_err();
        match &result {
            Ok(Response::Get { kv, .. } | Response::Txn { kv, .. }) => {
                last_seen[k] = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            }
            Ok(Response::Put { revision }) => last_seen[k] = *revision,
            _ => {}
        }
        rec.record(Operation {
            client,
            invoked,
            completed,
            request,
            outcome: match result {
                Ok(r) => Outcome::Ok(r),
                Err(e) => Outcome::Failed(e),
            },
        });
        if failed {
            // The member may be down: do not pile up indeterminate writes.
            tokio::time::sleep(rng.millis(50, 150)).await;
        }
    }
}

fn event(e: &mvccpb::Event) -> Event {
    let kv = e.kv.clone().unwrap_or_default();
    Event {
        revision: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (e.r#type == mvccpb::event::EventType::Put as i32)
            .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
    }
}

/// Watches the prefix from `start` on `url` until `until` says stop, the
/// stream fails, or the watch is canceled; records the watch. With
/// `progress`, asks for a progress notification every `progress` period.
async fn watch_once(
    client: usize,
    url: &str,
    start: i64,
    rec: &Recorder,
    progress: Option<Duration>,
    until: impl FnMut(&Watch) -> bool,
) -> Watch {
    watch_range(
        client,
        url,
        (PREFIX, PREFIX_END),
        start,
        rec,
        progress,
        None,
        until,
    )
    .await
}

/// [`watch_once`] of `[range.0, range.1)`; with `stall`, after the first
/// response, stops reading the stream for that long (a slow watcher).
#[allow(clippy::too_many_arguments)]
async fn watch_range(
    client: usize,
    url: &str,
    range: (&str, &str),
    start: i64,
    rec: &Recorder,
    progress: Option<Duration>,
    mut stall: Option<Duration>,
    mut until: impl FnMut(&Watch) -> bool,
) -> Watch {
    let mut w = Watch {
        client,
        key: range.0.to_string(),
        range_end: range.1.to_string(),
        start_revision: start,
        responses: Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(8);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: range.0.as_bytes().to_vec(),
            range_end: range.1.as_bytes().to_vec(),
            start_revision: start,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return w;
    }
    // A watch stream's call has no deadline of its own: the channel's
    // request timeout would end it, so the stream gets a plain endpoint.
    let stream_channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map(|e| e.connect_timeout(Duration::from_millis(500)).connect_lazy());
    let Ok(stream_channel) = stream_channel else {
        return w;
    };
    let mut client_stub = WatchClient::new(stream_channel);
    let opened = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client_stub.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let Ok(Ok(stream)) = opened else {
        return w;
    };
    let mut stream = stream.into_inner();
    let mut next_progress = progress.map(|p| tokio::time::Instant::now() + p);
    while !until(&w) {
        let wake = next_progress
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(100));
        tokio::select! {
            msg = stream.message() => {
                let Ok(Some(resp)) = msg else { break };
                w.responses.push(WatchResponse {
                    received: rec.now(),
                    header_revision: resp.header.as_ref().map_or(0, |h| h.revision),
                    events: resp.events.iter().map(event).collect(),
                    created: resp.created,
                    canceled: resp.canceled,
                    compact_revision: resp.compact_revision,
                });
                if resp.canceled {
                    break;
                }
                if let Some(pause) = stall.take() {
                    tokio::time::sleep(pause).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Some(p) = progress {
                    let req = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    if tx.send(req).await.is_err() {
                        break;
                    }
                    next_progress = Some(tokio::time::Instant::now() + p);
                }
            }
        }
    }
    w
}

/// The highest revision a watch vouched for: its last event or progress.
fn vouched(w: &Watch) -> i64 {
    w.responses
        .iter()
        .map(|r| {
            let last = r.events.last().map_or(0, |e| e.revision);
            if r.is_progress() {
                last.max(r.header_revision)
            } else {
                last
            }
        })
        .max()
        .unwrap_or(0)
}

/// Watches from random past revisions on random members until `deadline`.
pub async fn watcher(
    client: usize,
    urls: Vec<String>,
    rec: Arc<Recorder>,
    deadline: Instant,
    progress_requests: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    while !rec.over(deadline) {
        let url = &urls[rng.below(urls.len() as u64) as usize];
        // Mostly from a revision still in history; one in five from
        // anywhere, so some watches meet the compaction and are canceled.
        let compacted = rec.compacted.load(Ordering::SeqCst);
        let low = if rng.below(5) == 0 {
            rec.initial_revision + 1
        } else {
            compacted.max(rec.initial_revision + 1)
        };
        let high = rec.max_revision.load(Ordering::SeqCst) + 1;
        let start = low + rng.below((high - low + 1).max(1) as u64) as i64;
        let until = Instant::now() + rng.millis(300, 2_000);
        let progress = (progress_requests && rng.below(2) == 0).then(|| rng.millis(100, 400));
        let w = watch_once(client, url, start, &rec, progress, |_| {
            Instant::now() >= until.min(deadline)
        })
        .await;
        // A watch that never opened (its member was down) shows nothing.
        if w.responses.is_empty() {
            tokio::time::sleep(rng.millis(50, 150)).await;
        } else {
            rec.record_watch(w);
        }
    }
}

/// The run-long watch of the prefix, resumed from its last revision + 1 on
/// the next member whenever its stream breaks, until `stop_reference`.
pub async fn reference_watcher(
    client: usize,
    urls: Vec<String>,
    rec: Arc<Recorder>,
    progress_requests: bool,
) {
    let mut next = rec.initial_revision + 1;
    let mut turn = 0;
    while !rec.stop_reference.load(Ordering::SeqCst) {
        let url = &urls[turn % urls.len()];
        turn += 1;
        let w = watch_once(
            client,
            url,
            next,
            &rec,
            progress_requests.then_some(Duration::from_millis(200)),
            |w| {
                rec.reference.fetch_max(vouched(w), Ordering::SeqCst);
                rec.stop_reference.load(Ordering::SeqCst)
            },
        )
        .await;
        next = next.max(vouched(&w) + 1);
        if w.responses.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            rec.record_watch(w);
        }
    }
}

/// Compacts every `period` until `deadline`, a little behind what the
/// reference watcher has seen.
pub async fn compactor(urls: Vec<String>, rec: Arc<Recorder>, period: Duration, deadline: Instant) {
    let mut turn = 0;
    while Instant::now() + period < deadline && !rec.enough() {
        tokio::time::sleep(period).await;
        let target = rec.reference.load(Ordering::SeqCst) - 5;
        if target
            <= rec
                .compacted
                .load(Ordering::SeqCst)
                .max(rec.initial_revision)
        {
            continue;
        }
        let Some(channel) = lazy_channel(&urls[turn % urls.len()]) else {
            continue;
        };
        turn += 1;
        rec.compactions.lock().expect("recorder lock").push(target);
        let req = CompactionRequest {
            revision: target,
            physical: false,
        };
        if KvClient::new(channel).compact(req).await.is_ok() {
            rec.compacted.fetch_max(target, Ordering::SeqCst);
        }
    }
}
