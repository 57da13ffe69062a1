//! The `watch` scenario: W watchers on one prefix, spread over C gRPC watch
//! streams, and N writers (`--writers`, default 1) putting under the prefix
//! at R puts/s in all (`--rate 0`: as fast as they go).
//!
//! The writers share the `--puts` budget and the pace: each takes the next
//! put number from a shared counter and, with a rate, the next tick of one
//! shared interval. Each put's revision is taken from its response; the
//! expected history is all of them, sorted ([`expected_revisions`]).
//!
//! Measured: delivery latency (from the moment a writer sent the Put to the
//! moment a watcher got the event; the send time travels in the value),
//! deliveries per second (from the first Put to the last delivery) and puts
//! per second (from the first Put to the last answer). Checked: every watcher
//! receives exactly the revisions the Puts created, in increasing order, none
//! twice — anything else is counted as an error and described in the report.
//!
//! ```text
//!  writer 1 ─┐
//!  writer N ─┴─Put (value = send time)──► server ──events──► stream 1: watchers 0, C, 2C, …
//!                                                       └──► stream 2: watchers 1, C+1, …
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

use crate::conn::Pool;
use crate::keys::{prefix_end, Rng};
use crate::report::{add_error_sample, Latencies, Report};
use crate::runner::{finish, progress_bar, Load};
use crate::BenchError;
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::watch_client::WatchClient;
use cairn::proto::etcdserverpb::watch_request::RequestUnion;
use cairn::proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};

/// Options of `watch`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct WatchOpts {
    /// The watched prefix; the writer writes under it.
    #[arg(long, default_value = "bench/watch/")]
    pub prefix: String,
    /// Number of watchers.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Number of watch streams the watchers share (round-robin).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Puts the writers make in all.
    #[arg(long, default_value_t = 1000)]
    pub puts: u64,
    /// Puts per second, all writers together; 0 = as fast as they can.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Concurrent writers, each with one Put in flight, sharing --puts and
    /// --rate (writer i uses connection i % conns).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Distinct keys the writers cycle through.
    #[arg(long, default_value_t = 100)]
    pub key_space: u64,
    /// Value size (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    pub val_size: usize,
    /// How long watchers may still take after the last Put.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

impl Default for WatchOpts {
    fn default() -> Self {
        WatchOpts {
            prefix: "bench/watch/".into(),
            watchers: 100,
            streams: 10,
            puts: 1000,
            rate: 100,
            writers: 1,
            key_space: 100,
            val_size: 64,
            drain_secs: 10,
        }
    }
}

/// What the writers did, published once they are all done.
struct Written {
    /// Revisions of the successful Puts, in increasing order.
    revs: Vec<i64>,
    /// Stream tasks stop waiting for missing events then.
    drain_deadline: Instant,
}

/// What every stream task of a run shares.
struct RunClock {
    /// Number of streams (watcher w is on stream w % streams).
    streams: usize,
    /// Send times in values are nanoseconds since this instant.
    base: Instant,
    /// The run's `--max-duration` ends here.
    hard_deadline: Instant,
    /// Set once the writers are done.
    written: OnceLock<Written>,
}

/// What the writers share.
struct WritePlan {
    prefix: Vec<u8>,
    /// The value after the 8-byte send time.
    padding: Vec<u8>,
    /// Puts to make in all.
    puts: u64,
    key_space: u64,
    /// The next put number to hand out.
    issued: AtomicU64,
    /// One interval paces every writer's puts (None: `--rate 0`).
    pacer: Option<tokio::sync::Mutex<tokio::time::Interval>>,
    progress: ProgressBar,
}

/// What one writer task hands back.
#[derive(Default)]
struct WriterResult {
    /// Revisions of its successful Puts, in the order it made them.
    revs: Vec<i64>,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
}

/// One watcher's history.
#[derive(Default)]
struct WatcherLog {
    /// Global watcher number (for messages).
    id: usize,
    /// Revisions received, in arrival order.
    revs: Vec<i64>,
}

/// What a stream task hands back.
struct StreamResult {
    logs: Vec<WatcherLog>,
    lat: Latencies,
    /// Time of the last delivery, since the run's base instant.
    last_delivery: Option<Duration>,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
}

/// The history every watcher must see, from each writer's revisions: all of
/// them in increasing order. Also returns the revisions more than one Put
/// claimed (each Put creates its own revision, so any is a server error).
pub fn expected_revisions(per_writer: Vec<Vec<i64>>) -> (Vec<i64>, Vec<i64>) {
    let mut revs: Vec<i64> = per_writer.into_iter().flatten().collect();
    revs.sort_unstable();
    let mut claimed_twice: Vec<i64> = revs
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    claimed_twice.dedup();
    revs.dedup();
    (revs, claimed_twice)
}

/// Checks one watcher's revisions against the writers': returns a
/// description of each kind of violation found (empty = correct).
pub fn check_watcher(expected: &[i64], got: &[i64]) -> Vec<String> {
    let mut v = Vec::new();
    let out_of_order = got.windows(2).filter(|w| w[1] <= w[0]).count();
    if out_of_order > 0 {
        let first = got
            .windows(2)
            .find(|w| w[1] <= w[0])
            .map(|w| (w[0], w[1]))
            .unwrap_or_default();
        v.push(format!(
            "{out_of_order} events out of order or repeated (first: rev {} after rev {})",
            first.1, first.0
        ));
    }
    let got_set: HashSet<i64> = got.iter().copied().collect();
    let exp_set: HashSet<i64> = expected.iter().copied().collect();
    let missing: Vec<i64> = expected
        .iter()
        .copied()
        .filter(|r| !got_set.contains(r))
        .collect();
    if let Some(first) = missing.first() {
        v.push(format!(
            "{} events missing (first: rev {first})",
            missing.len()
        ));
    }
    let unexpected = got.iter().filter(|r| !exp_set.contains(r)).count();
    if unexpected > 0 {
        v.push(format!(
            "{unexpected} events for revisions the writer did not create"
        ));
    }
    v
}

fn create_req(prefix: &[u8]) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        })),
    }
}

fn unsupported(status: tonic::Status, what: &str) -> BenchError {
    if status.code() == Code::Unimplemented {
        BenchError::Unimplemented(format!("{what}: gRPC UNIMPLEMENTED {}", status.message()))
    } else {
        BenchError::Setup(format!("{what}: {:?}: {}", status.code(), status.message()))
    }
}

/// Opens one stream with `ids.len()` watchers; returns the stream, its
/// sender (kept open while the stream is used) and watch_id → local index.
async fn open_stream(
    pool: &Pool,
    s: usize,
    prefix: &[u8],
    n: usize,
) -> Result<
    (
        tonic::Streaming<WatchResponse>,
        mpsc::Sender<WatchRequest>,
        HashMap<i64, usize>,
    ),
    BenchError,
> {
    let mut client = WatchClient::new(pool.channel(s));
    let (tx, rx) = mpsc::channel(n.max(1) + 1);
    // Queue the creates first: a gRPC server may send its headers only with
    // the first response, which the call below waits for.
    for _ in 0..n {
        tx.send(create_req(prefix))
            .await
            .map_err(|_| BenchError::Setup("watch request channel closed".into()))?;
    }
    let mut inbound = client
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| unsupported(e, "Watch"))?
        .into_inner();
    let mut ids = HashMap::new();
    while ids.len() < n {
        let resp = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| BenchError::Setup("no watch created within 10 s".into()))?
            .map_err(|e| unsupported(e, "Watch"))?
            .ok_or_else(|| BenchError::Setup("watch stream ended while creating".into()))?;
        if resp.canceled {
            return Err(BenchError::Setup(format!(
                "watch canceled at creation: {}",
                resp.cancel_reason
            )));
        }
        if resp.created {
            let local = ids.len();
            ids.insert(resp.watch_id, local);
        }
    }
    Ok((inbound, tx, ids))
}

/// Receives events on one stream until every watcher has all the writer's
/// events, the drain deadline passes, or the hard deadline passes.
async fn receive(
    mut inbound: tonic::Streaming<WatchResponse>,
    tx: mpsc::Sender<WatchRequest>,
    ids: HashMap<i64, usize>,
    first_id: usize,
    run: Arc<RunClock>,
) -> StreamResult {
    let RunClock {
        streams,
        base,
        hard_deadline,
        ref written,
    } = *run;
    let mut r = StreamResult {
        logs: (0..ids.len())
            .map(|i| WatcherLog {
                id: first_id + i * streams,
                revs: Vec::new(),
            })
            .collect(),
        lat: Latencies::new(),
        last_delivery: None,
        errors: 0,
        error_samples: BTreeMap::new(),
    };
    loop {
        if let Some(w) = written.get() {
            if r.logs.iter().all(|l| l.revs.len() >= w.revs.len())
                || Instant::now() >= w.drain_deadline
            {
                break;
            }
        }
        if Instant::now() >= hard_deadline {
            add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                "watch run hit --max-duration".into(),
            );
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), inbound.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(resp))) => {
                let now = base.elapsed();
                if resp.canceled {
                    add_error_sample(
                        &mut r.error_samples,
                        &mut r.errors,
                        format!("watch {} canceled: {}", resp.watch_id, resp.cancel_reason),
                    );
                }
                let Some(&local) = ids.get(&resp.watch_id) else {
                    if !resp.events.is_empty() {
                        add_error_sample(
                            &mut r.error_samples,
                            &mut r.errors,
                            format!("events for unknown watch id {}", resp.watch_id),
                        );
                    }
                    continue;
                };
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    r.logs[local].revs.push(kv.mod_revision);
                    if let Some(sent) = kv.value.get(..8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(sent);
                        let sent = Duration::from_nanos(u64::from_be_bytes(b));
                        r.lat.record(now.saturating_sub(sent));
                    }
                    r.last_delivery = Some(now);
                }
            }
            Ok(Ok(None)) => {
                add_error_sample(
                    &mut r.error_samples,
                    &mut r.errors,
                    "watch stream ended early".into(),
                );
                break;
            }
            Ok(Err(status)) => {
                add_error_sample(
                    &mut r.error_samples,
                    &mut r.errors,
                    format!("watch stream: {:?}: {}", status.code(), status.message()),
                );
                break;
            }
        }
    }
    drop(tx);
    r
}

/// One writer: takes put numbers until the budget is spent or the run's
/// time is up, and puts key `number % key_space` with the send time in the
/// value, one Put in flight at a time.
async fn write(
    mut kv: KvClient<Channel>,
    plan: Arc<WritePlan>,
    run: Arc<RunClock>,
) -> WriterResult {
    let mut r = WriterResult::default();
    loop {
        let i = plan.issued.fetch_add(1, Ordering::Relaxed);
        if i >= plan.puts {
            break;
        }
        if Instant::now() >= run.hard_deadline {
            add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                "writer hit --max-duration".into(),
            );
            break;
        }
        if let Some(pacer) = &plan.pacer {
            pacer.lock().await.tick().await;
        }
        let mut value = (run.base.elapsed().as_nanos() as u64)
            .to_be_bytes()
            .to_vec();
        value.extend_from_slice(&plan.padding);
        let key = [
            plan.prefix.as_slice(),
            format!("{:08}", i % plan.key_space.max(1)).as_bytes(),
        ]
        .concat();
        match kv
            .put(PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await
        {
            Ok(resp) => r
                .revs
                .push(resp.into_inner().header.map_or(0, |h| h.revision)),
            Err(e) => add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                format!("writer: {:?}: {}", e.code(), e.message()),
            ),
        }
        plan.progress.inc(1);
    }
    r
}

pub async fn run_watch(load: &Load, o: &WatchOpts) -> Result<Report, BenchError> {
    if o.watchers == 0 || o.streams == 0 || o.writers == 0 || o.val_size < 8 {
        return Err(BenchError::Usage(
            "watch needs --watchers >= 1, --streams >= 1, --writers >= 1 and --val-size >= 8"
                .into(),
        ));
    }
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let prefix = o.prefix.as_bytes().to_vec();
    let base = Instant::now();
    let hard_deadline = base + load.max_duration;
    let streams = o.streams.min(o.watchers);
    let run = Arc::new(RunClock {
        streams,
        base,
        hard_deadline,
        written: OnceLock::new(),
    });

    // Create every watcher before the first Put, so each must see every event.
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = (o.watchers - s).div_ceil(streams);
        let (inbound, tx, ids) = open_stream(&pool, s, &prefix, n).await?;
        tasks.push(tokio::spawn(receive(inbound, tx, ids, s, run.clone())));
    }

    let mut report = Report {
        scenario: "watch".into(),
        endpoints: load.endpoints.clone(),
        clients: streams,
        conns: pool.len(),
        ..Default::default()
    };
    let mut rng = Rng::new(7);
    let plan = Arc::new(WritePlan {
        prefix,
        padding: rng.bytes(o.val_size - 8),
        puts: o.puts,
        key_space: o.key_space,
        issued: AtomicU64::new(0),
        pacer: (o.rate > 0).then(|| {
            tokio::sync::Mutex::new(tokio::time::interval(Duration::from_secs_f64(
                1.0 / o.rate as f64,
            )))
        }),
        progress: progress_bar(load.progress, o.puts, "watch"),
    });
    let write_start = base.elapsed();
    let writers: Vec<_> = (0..o.writers)
        .map(|w| {
            let kv = KvClient::new(pool.channel(w));
            tokio::spawn(write(kv, plan.clone(), run.clone()))
        })
        .collect();
    let mut per_writer = Vec::with_capacity(writers.len());
    for w in writers {
        match w.await {
            Ok(r) => {
                report.merge_errors(r.errors, r.error_samples);
                per_writer.push(r.revs);
            }
            Err(e) => report.add_error(format!("writer task failed: {e}")),
        }
    }
    let write_time = base.elapsed().saturating_sub(write_start);
    plan.progress.finish_and_clear();
    let puts: usize = per_writer.iter().map(Vec::len).sum();
    let (revs, claimed_twice) = expected_revisions(per_writer);
    if let Some(first) = claimed_twice.first() {
        report.add_error(format!(
            "{} revisions claimed by more than one Put (first: rev {first})",
            claimed_twice.len()
        ));
    }
    *report.outcomes.entry("puts".into()).or_default() = puts as u64;
    let _ = run.written.set(Written {
        revs,
        drain_deadline: Instant::now() + Duration::from_secs(o.drain_secs),
    });
    let expected = &run.written.get().expect("just set").revs;

    let mut lat = Latencies::new();
    let mut last = write_start;
    let mut violations = 0u64;
    for t in tasks {
        match t.await {
            Ok(r) => {
                lat.merge(&r.lat);
                report.merge_errors(r.errors, r.error_samples);
                if let Some(d) = r.last_delivery {
                    last = last.max(d);
                }
                for log in r.logs {
                    report.ops += log.revs.len() as u64;
                    for v in check_watcher(expected, &log.revs) {
                        violations += 1;
                        report.add_error(format!("watcher {}: {v}", log.id));
                    }
                }
            }
            Err(e) => report.add_error(format!("watch stream task failed: {e}")),
        }
    }
    *report.outcomes.entry("deliveries".into()).or_default() = report.ops;
    report.extra.insert("watchers".into(), o.watchers as f64);
    report.extra.insert("writers".into(), o.writers as f64);
    report.extra.insert("violations".into(), violations as f64);
    if !write_time.is_zero() {
        report
            .extra
            .insert("puts_per_s".into(), puts as f64 / write_time.as_secs_f64());
    }
    finish(&mut report, &lat, last.saturating_sub(write_start));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{check_watcher, expected_revisions};

    #[test]
    fn writers_revisions_merge_into_one_increasing_history() {
        // Concurrent writers: each one's revisions increase, but they interleave.
        let (revs, twice) = expected_revisions(vec![vec![3, 6, 7], vec![4, 5, 9], vec![], vec![8]]);
        assert_eq!(revs, [3, 4, 5, 6, 7, 8, 9]);
        assert!(twice.is_empty());
        assert!(check_watcher(&revs, &[3, 4, 5, 6, 7, 8, 9]).is_empty());
    }

    #[test]
    fn a_revision_two_puts_claim_is_reported_once_and_expected_once() {
        let (revs, twice) = expected_revisions(vec![vec![3, 5, 5], vec![4, 5], vec![4]]);
        assert_eq!(revs, [3, 4, 5]);
        assert_eq!(twice, [4, 5]);
    }

    #[test]
    fn exact_history_is_clean() {
        assert!(check_watcher(&[3, 4, 5], &[3, 4, 5]).is_empty());
    }

    #[test]
    fn violations_are_named() {
        struct Case {
            got: &'static [i64],
            want: &'static str,
        }
        let cases = [
            Case {
                got: &[3, 5],
                want: "1 events missing (first: rev 4)",
            },
            Case {
                got: &[3, 5, 4],
                want: "out of order",
            },
            Case {
                got: &[3, 4, 4, 5],
                want: "out of order or repeated",
            },
            Case {
                got: &[3, 4, 5, 9],
                want: "did not create",
            },
        ];
        for c in cases {
            let v = check_watcher(&[3, 4, 5], c.got);
            assert!(v.iter().any(|m| m.contains(c.want)), "{:?}: {v:?}", c.got);
        }
    }
}
