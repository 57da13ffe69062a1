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

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::watch_client::WatchClient;
use cairn::proto::etcdserverpb::watch_request::RequestUnion;
use cairn::proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
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
        }
    }
    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn saw(&self, revision: i64) {
        self.max_revision.fetch_max(revision, Ordering::SeqCst);
    }
    pub fn record(&self, op: Operation) {
        if let Outcome::Ok(
            Response::Put { revision }
            | Response::Get { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. },
        ) = &op.outcome
        {
            self.saw(*revision);
        }
        self.operations.lock().expect("recorder lock").push(op);
    }
    fn record_watch(&self, w: Watch) {
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
        Request::Txn {
            key,
            compare,
            value,
        } => {
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
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone().into_bytes(),
                            value: value.clone().into_bytes(),
                            ..Default::default()
                        })),
                    }],
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
        if Instant::now() >= deadline {
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
    mut until: impl FnMut(&Watch) -> bool,
) -> Watch {
    let mut w = Watch {
        client,
        key: PREFIX.to_string(),
        range_end: PREFIX_END.to_string(),
        start_revision: start,
        responses: Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(8);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: PREFIX_END.as_bytes().to_vec(),
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
    while Instant::now() < deadline {
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
    while Instant::now() + period < deadline {
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
