//! `cairn-bench compare`: the same scenarios against real etcd and cairn on
//! the same machine, the way a fair A/B comparison is made.
//!
//! * Both servers get the same etcd flags (see [`server`](crate::server)) and
//!   a fresh data dir for every run, so no run inherits another's data.
//! * Only one server runs at a time, and the two alternate: for each round,
//!   for each scenario, etcd then cairn (A B A B …), so slow drift of the
//!   machine (other load, thermal, page cache) hits both alike.
//! * Per scenario the summary gives each server's median over the rounds and
//!   the median of the per-round cairn/etcd ratios (throughput, p99, peak RSS,
//!   and scenario figures such as `restart_ms`). Peak RSS is `VmHWM` from
//!   `/proc/<pid>/status` at the end of the run.
//!
//! Special scenarios: `put-clients` (put at each `--sweep` client count; the
//! chart), `load-100k` (load keys, report peak RSS) and `restart-1m` (load
//! keys, stop, time from process start until a Range is served).
//!
//! With `--members 3` (or 5) both servers run as clusters of that many
//! members on loopback, and the clients of every scenario are spread over all
//! members, except the cluster scenarios: `put-leader` (every client on the
//! leader), `range-l-follower` (linearizable ranges on one follower) and
//! `catchup` (a follower is stopped, keys are loaded, and the time it takes
//! the restarted follower to reach the leader's revision is measured).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::conn::Pool;
use crate::keys::KeyGen;
use crate::kv::{self, CasOpts, Consistency, MixedOpts, PutOpts, RangeOpts};
use crate::lease::LeaseOpts;
use crate::server::{Cluster, Kind};
use crate::watch::WatchOpts;
use crate::{chart, run, BenchError, Load, Report, Scenario};
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::RangeRequest;

/// The scenarios run when `--scenarios` is not given.
pub const DEFAULT_SCENARIOS: &str = "put,range-l,range-s,txn-cas,mixed,watch,watch-sat,lease";
/// Every scenario name `--scenarios` accepts (`all` means all of them).
pub const ALL_SCENARIOS: &[&str] = &[
    "put",
    "range-l",
    "range-s",
    "range-page",
    "txn-cas",
    "mixed",
    "watch",
    "watch-sat",
    "lease",
    "put-clients",
    "load-100k",
    "restart-1m",
];
/// Scenarios that need `--members` of 3 or more (`all` adds them then).
pub const CLUSTER_SCENARIOS: &[&str] = &["put-leader", "range-l-follower", "catchup"];

/// Options of `compare`.
#[derive(Args, Clone, Debug)]
pub struct CompareOpts {
    /// Rounds; each runs every scenario against etcd, then cairn.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Comma-separated scenarios, or `all` (put, range-l, range-s,
    /// range-page, txn-cas, mixed, watch, watch-sat, lease, put-clients,
    /// load-100k, restart-1m).
    #[arg(long, default_value = DEFAULT_SCENARIOS)]
    pub scenarios: String,
    /// Cluster size (1, 3 or 5): both servers run as clusters of this many
    /// members on loopback, with the same flags; clients are spread over the
    /// members (but see `put-leader`, `range-l-follower`, `catchup`).
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// The cairn binary (default: `cairn` next to this program).
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Write every round's raw JSON, summary.json, summary.txt and the chart here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the put-clients chart (SVG) to this path, e.g. docs/put-clients.svg.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Operations per scenario run (put, range, txn-cas, mixed; lease keep-alives).
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,
    /// Concurrent clients of put, range and mixed (txn-cas always uses 16,
    /// as in the targets).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Client counts of `put-clients`.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub sweep: Vec<usize>,
    /// Keys `load-100k` loads.
    #[arg(long, default_value_t = 100_000)]
    pub load_keys: u64,
    /// Keys `restart-1m` loads before the restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub restart_keys: u64,
    /// Keys `catchup` loads while a follower is down.
    #[arg(long, default_value_t = 1_000_000)]
    pub catchup_keys: u64,
    /// `--snapshot-count` both servers get in `catchup`, so that the leader
    /// has compacted its log and the follower catches up from a snapshot, as
    /// a member down for long does (etcd's default, 100,000, would leave the
    /// whole load in the log).
    #[arg(long, default_value_t = 1_000)]
    pub catchup_snapshot_count: u64,
    /// Value size of the keys `catchup` loads (bytes).
    #[arg(long, default_value_t = 256)]
    pub catchup_val_size: usize,
    /// An extra flag given to every member of both servers, repeatable, e.g.
    /// `--server-arg=--quota-backend-bytes=8589934592` for a keyspace past
    /// etcd's 2 GiB default quota.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Time limit of a load phase (load-100k, restart-1m); the keys loaded
    /// by then are reported.
    #[arg(long, default_value_t = 600)]
    pub load_timeout_secs: u64,
    /// Time limit of one measured run.
    #[arg(long, default_value_t = 120)]
    pub max_duration_secs: u64,
    /// Where the fresh data dirs go (default: the system temp dir; it must be
    /// a real disk for fsync costs to count).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Do not print a line per run on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// One scenario run against one server.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub round: usize,
    pub server: Kind,
    pub scenario: String,
    /// None if the scenario could not run (see `unsupported` / `failure`).
    pub report: Option<Report>,
    /// The server answered UNIMPLEMENTED (e.g. Watch before it lands).
    pub unsupported: Option<String>,
    /// The run could not complete (server did not start, setup failed, ...).
    pub failure: Option<String>,
    /// VmHWM at the end of the run.
    pub peak_rss_kib: Option<u64>,
}

/// Medians of one server over the rounds of one scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Side {
    /// Rounds with a report.
    pub runs: usize,
    pub throughput: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Errors over all rounds (a correct server has none).
    pub errors: u64,
    pub unsupported: Option<String>,
    pub failures: Vec<String>,
    /// Median of each `extra` figure.
    pub extra: BTreeMap<String, f64>,
}

/// The comparison for one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub etcd: Side,
    pub cairn: Side,
    /// Median over rounds of cairn/etcd; > 1 means cairn is faster.
    pub throughput_ratio: Option<f64>,
    /// Median over rounds of cairn/etcd; < 1 means cairn is faster.
    pub p99_ratio: Option<f64>,
    pub peak_rss_ratio: Option<f64>,
    /// Median cairn/etcd of each extra figure both reported.
    pub extra_ratios: BTreeMap<String, f64>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub rounds: usize,
    pub scenarios: Vec<ScenarioSummary>,
    /// `nproc`, memory, kernel; what the figures were measured on.
    pub machine: BTreeMap<String, String>,
}

/// The median of `xs` (None if empty).
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Expands `--scenarios` into run names (`put-clients` → `put@c1`, …).
pub fn expand_scenarios(
    list: &str,
    sweep: &[usize],
    members: usize,
) -> Result<Vec<String>, BenchError> {
    let names: Vec<&str> = if list.trim() == "all" {
        let mut all = ALL_SCENARIOS.to_vec();
        if members > 1 {
            all.extend_from_slice(CLUSTER_SCENARIOS);
        }
        all
    } else {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    for n in names {
        match n {
            "put-clients" => out.extend(sweep.iter().map(|c| format!("put@c{c}"))),
            n if ALL_SCENARIOS.contains(&n) => out.push(n.to_string()),
            n if CLUSTER_SCENARIOS.contains(&n) => {
                if members < 3 {
                    return Err(BenchError::Usage(format!(
                        "scenario {n} needs --members 3 or more"
                    )));
                }
                out.push(n.to_string())
            }
            n => {
                return Err(BenchError::Usage(format!(
                    "unknown scenario {n:?}; known: {}, and with --members 3 or more {}",
                    ALL_SCENARIOS.join(", "),
                    CLUSTER_SCENARIOS.join(", ")
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(BenchError::Usage("no scenario given".into()));
    }
    Ok(out)
}

/// The load and scenario a plain scenario name stands for, against
/// `endpoints` (see [`endpoints_for`]).
fn plan(name: &str, o: &CompareOpts, endpoints: Vec<String>) -> Option<(Load, Scenario)> {
    let load = Load {
        endpoints,
        conns: o.conns,
        clients: o.clients,
        total: o.ops,
        max_duration: Duration::from_secs(o.max_duration_secs),
        progress: false,
        timeline: false,
    };
    let sc = match name {
        "put" | "put-leader" => Scenario::Put(PutOpts::default()),
        "range-l" | "range-l-follower" => Scenario::Range(RangeOpts::default()),
        "range-s" => Scenario::Range(RangeOpts {
            consistency: Consistency::S,
            ..Default::default()
        }),
        "range-page" => Scenario::Range(RangeOpts {
            limit: 100,
            ..Default::default()
        }),
        // The targets' shapes: txn-cas with 16 clients, watch with 500 watchers.
        "txn-cas" => {
            let load = Load {
                clients: 16,
                conns: o.conns.min(16),
                ..load
            };
            return Some((load, Scenario::TxnCas(CasOpts::default())));
        }
        "mixed" => Scenario::Mixed(MixedOpts::default()),
        "watch" => Scenario::Watch(WatchOpts {
            watchers: 500,
            streams: 10,
            puts: (o.ops / 10).clamp(50, 2000),
            rate: 200,
            ..Default::default()
        }),
        // The same watchers fed as fast as 16 writers can put: deliveries/s
        // is then what the server can fan out, not the offered rate. The
        // watchers may trail the writers by many seconds, hence the drain.
        "watch-sat" => Scenario::Watch(WatchOpts {
            watchers: 500,
            streams: 10,
            puts: (o.ops / 2).clamp(200, 5000),
            rate: 0,
            writers: 16,
            drain_secs: 60,
            ..Default::default()
        }),
        "lease" => Scenario::Lease(LeaseOpts::default()),
        other => {
            let clients: usize = other.strip_prefix("put@c")?.parse().ok()?;
            let load = Load {
                clients,
                conns: o.conns.min(clients.max(1)),
                ..load
            };
            return Some((load, Scenario::Put(PutOpts::default())));
        }
    };
    Some((load, sc))
}

/// Runs one scenario against a fresh server of `kind`.
async fn run_one(
    round: usize,
    kind: Kind,
    name: &str,
    o: &CompareOpts,
    cairn_bin: &Path,
) -> RunRecord {
    let mut rec = RunRecord {
        round,
        server: kind,
        scenario: name.to_string(),
        report: None,
        unsupported: None,
        failure: None,
        peak_rss_kib: None,
    };
    let bin = match kind {
        Kind::Etcd => o.etcd_bin.as_path(),
        Kind::Cairn => cairn_bin,
    };
    let mut flags = match name {
        "catchup" => vec![
            "--snapshot-count".to_string(),
            o.catchup_snapshot_count.to_string(),
        ],
        _ => Vec::new(),
    };
    flags.extend(o.server_args.iter().cloned());
    let start = Cluster::start(
        kind,
        bin,
        o.data_root.as_deref(),
        o.members,
        &flags,
        Duration::from_secs(60),
    );
    let mut server = match start.await {
        Ok(s) => s,
        Err(e) => {
            rec.failure = Some(e.to_string());
            return rec;
        }
    };
    let result = match name {
        "load-100k" => load_100k(&server, o).await,
        "restart-1m" => restart(&mut server, o).await,
        "catchup" => catchup(&mut server, o).await,
        _ => match endpoints_for(name, &server).await {
            Err(e) => Err(e),
            Ok(endpoints) => match plan(name, o, endpoints) {
                Some((load, sc)) => run(&load, &sc).await.map(|mut r| {
                    r.scenario = name.to_string();
                    r
                }),
                None => Err(BenchError::Usage(format!("unknown scenario {name}"))),
            },
        },
    };
    rec.peak_rss_kib = server.peak_rss_kib();
    match result {
        Ok(mut r) => {
            if let Some(kib) = rec.peak_rss_kib {
                r.extra.insert("peak_rss_kib".into(), kib as f64);
            }
            rec.report = Some(r);
        }
        Err(BenchError::Unimplemented(what)) => rec.unsupported = Some(what),
        Err(e) => rec.failure = Some(e.to_string()),
    }
    if let Err(e) = server.stop().await {
        rec.failure.get_or_insert(e.to_string());
    }
    rec
}

/// Where a scenario's clients go: every member, the leader (`put-leader`),
/// or one follower (`range-l-follower`).
async fn endpoints_for(name: &str, cluster: &Cluster) -> Result<Vec<String>, BenchError> {
    match name {
        "put-leader" => Ok(vec![cluster.members[cluster.leader().await?].url()]),
        "range-l-follower" => {
            let leader = cluster.leader().await?;
            let follower = (leader + 1) % cluster.members.len();
            Ok(vec![cluster.members[follower].url()])
        }
        _ => Ok(cluster.urls()),
    }
}

fn load_spec(o: &CompareOpts, endpoints: Vec<String>) -> Load {
    Load {
        endpoints,
        conns: o.conns,
        clients: 16,
        total: 0,
        max_duration: Duration::from_secs(o.load_timeout_secs),
        progress: false,
        timeline: false,
    }
}

/// The keys of the load scenarios: 256-byte values, as in the targets.
fn load_keys() -> KeyGen {
    KeyGen::new("load/", 16, u64::MAX)
}

/// `load-100k`: load `--load-keys` keys of 256 B; the report counts keys,
/// its latencies are per 128-put transaction; peak RSS is added by the caller.
async fn load_100k(server: &Cluster, o: &CompareOpts) -> Result<Report, BenchError> {
    let spec = load_spec(o, server.urls());
    let pool = Pool::connect(&spec.endpoints, spec.conns).await?;
    Ok(kv::load_keys(&pool, &load_keys(), o.load_keys, 256, &spec, "load-100k").await)
}

/// `restart-1m`: load `--restart-keys` keys (bounded by the load timeout),
/// stop the server with SIGTERM, start it again and time from the spawn until
/// it serves a linearizable Range; then check that every loaded key is there.
async fn restart(server: &mut Cluster, o: &CompareOpts) -> Result<Report, BenchError> {
    let spec = load_spec(o, server.urls());
    let keys = load_keys();
    let mut report = {
        let pool = Pool::connect(&spec.endpoints, spec.conns).await?;
        kv::load_keys(&pool, &keys, o.restart_keys, 256, &spec, "restart-1m").await
    };
    let loaded = report.ops;
    report.extra.insert("keys_loaded".into(), loaded as f64);
    if let Some(kib) = server.peak_rss_kib() {
        report.extra.insert("peak_rss_load_kib".into(), kib as f64);
    }
    server.stop().await?;
    let t = Instant::now();
    server.spawn()?;
    server.wait_ready(Duration::from_secs(600)).await?;
    report
        .extra
        .insert("restart_ms".into(), t.elapsed().as_secs_f64() * 1000.0);
    // Read before the count below touches every key.
    if let Some(kib) = server.peak_rss_kib() {
        report
            .extra
            .insert("peak_rss_restart_kib".into(), kib as f64);
    }
    check_count(
        &spec.endpoints[0],
        &keys,
        loaded,
        false,
        "after restart",
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Counts the loaded keys at `url` (serializably: what that member itself
/// holds) and counts an error in `report` if any loaded key is missing.
async fn check_count(
    url: &str,
    keys: &KeyGen,
    loaded: u64,
    serializable: bool,
    when: &str,
    report: &mut Report,
) -> Result<(), BenchError> {
    let pool = Pool::connect(&[url.to_string()], 1).await?;
    let count = KvClient::new(pool.channel(0))
        .range(RangeRequest {
            key: keys.prefix.clone(),
            range_end: keys.range_end(),
            count_only: true,
            serializable,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Setup(format!("count {when}: {e}")))?
        .into_inner()
        .count;
    // A timed-out load txn may still have applied, so only a clean load
    // pins the count exactly.
    if (report.errors == 0 && count as u64 != loaded) || (count as u64) < loaded {
        report.add_error(format!(
            "{when} {count} keys are there, {loaded} were loaded"
        ));
    }
    Ok(())
}

/// `catchup`: stop a follower, load `--catchup-keys` keys through the
/// leader, note the leader's revision, start the follower again and time
/// from its spawn until a serializable Range on it answers at that revision
/// (it has applied everything); then check it holds every key. The leader
/// has compacted its log (`--catchup-snapshot-count`), so the follower is
/// sent a snapshot. The report's throughput is the load's keys/s.
async fn catchup(cluster: &mut Cluster, o: &CompareOpts) -> Result<Report, BenchError> {
    let leader = cluster.leader().await?;
    let lagging = (leader + 1) % cluster.members.len();
    cluster.members[lagging].stop().await?;
    let leader_url = cluster.members[leader].url();
    let spec = load_spec(o, vec![leader_url.clone()]);
    let keys = load_keys();
    let mut report = {
        let pool = Pool::connect(&spec.endpoints, spec.conns).await?;
        kv::load_keys(
            &pool,
            &keys,
            o.catchup_keys,
            o.catchup_val_size,
            &spec,
            "catchup",
        )
        .await
    };
    let loaded = report.ops;
    report.extra.insert("keys_loaded".into(), loaded as f64);
    let target = revision_at(&leader_url, false)
        .await
        .map_err(|e| BenchError::Setup(format!("leader's revision after the load: {e}")))?;
    let t = Instant::now();
    cluster.members[lagging].spawn()?;
    let url = cluster.members[lagging].url();
    let deadline = t + Duration::from_secs(o.load_timeout_secs);
    loop {
        if revision_at(&url, true).await.is_ok_and(|r| r >= target) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "the restarted follower did not reach revision {target} within {} s; log:\n{}",
                o.load_timeout_secs,
                cluster.members[lagging].log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report
        .extra
        .insert("catchup_ms".into(), t.elapsed().as_secs_f64() * 1000.0);
    if let Some(kib) = cluster.members[lagging].peak_rss_kib() {
        report
            .extra
            .insert("peak_rss_follower_kib".into(), kib as f64);
    }
    check_count(
        &url,
        &keys,
        loaded,
        true,
        "on the caught-up follower",
        &mut report,
    )
    .await?;
    Ok(report)
}

/// The revision a Range of one key answers at `url`.
async fn revision_at(url: &str, serializable: bool) -> Result<i64, BenchError> {
    let pool = Pool::connect(&[url.to_string()], 1).await?;
    let r = KvClient::new(pool.channel(0))
        .range(RangeRequest {
            key: b"health".to_vec(),
            serializable,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Connect(format!("range at {url}: {e}")))?
        .into_inner();
    Ok(r.header.map_or(0, |h| h.revision))
}

fn side(records: &[&RunRecord]) -> Side {
    let reports: Vec<&Report> = records.iter().filter_map(|r| r.report.as_ref()).collect();
    let mut extra_keys: Vec<&String> = reports.iter().flat_map(|r| r.extra.keys()).collect();
    extra_keys.sort();
    extra_keys.dedup();
    Side {
        runs: reports.len(),
        throughput: median(reports.iter().map(|r| r.throughput).collect()),
        p50_ms: median(reports.iter().map(|r| r.latency_ms.p50).collect()),
        p99_ms: median(reports.iter().map(|r| r.latency_ms.p99).collect()),
        // Only runs that did the work: an idle server's RSS says nothing.
        peak_rss_mib: median(
            records
                .iter()
                .filter(|r| r.report.is_some())
                .filter_map(|r| r.peak_rss_kib)
                .map(|k| k as f64 / 1024.0)
                .collect(),
        ),
        errors: reports.iter().map(|r| r.errors).sum(),
        unsupported: records.iter().find_map(|r| r.unsupported.clone()),
        failures: records.iter().filter_map(|r| r.failure.clone()).collect(),
        extra: extra_keys
            .into_iter()
            .filter_map(|k| {
                Some((
                    k.clone(),
                    median(
                        reports
                            .iter()
                            .filter_map(|r| r.extra.get(k).copied())
                            .collect(),
                    )?,
                ))
            })
            .collect(),
    }
}

/// Medians and per-round ratios of every scenario.
pub fn summarise(records: &[RunRecord], scenarios: &[String], rounds: usize) -> Summary {
    let mut out = Vec::new();
    for name in scenarios {
        let of = |k: Kind| -> Vec<&RunRecord> {
            records
                .iter()
                .filter(|r| &r.scenario == name && r.server == k)
                .collect()
        };
        let (e, c) = (of(Kind::Etcd), of(Kind::Cairn));
        // Per-round pairs where both servers produced a report.
        let pairs: Vec<(&Report, &Report)> = (1..=rounds)
            .filter_map(|round| {
                let ea = e.iter().find(|r| r.round == round)?.report.as_ref()?;
                let ca = c.iter().find(|r| r.round == round)?.report.as_ref()?;
                Some((ea, ca))
            })
            .collect();
        let ratio = |f: &dyn Fn(&Report) -> Option<f64>| {
            median(
                pairs
                    .iter()
                    .filter_map(|(a, b)| Some((f(a)?, f(b)?)))
                    .filter(|(a, _)| *a > 0.0)
                    .map(|(a, b)| b / a)
                    .collect(),
            )
        };
        let mut extra_keys: Vec<String> = pairs
            .iter()
            .flat_map(|(a, _)| a.extra.keys().cloned())
            .collect();
        extra_keys.sort();
        extra_keys.dedup();
        out.push(ScenarioSummary {
            scenario: name.clone(),
            etcd: side(&e),
            cairn: side(&c),
            throughput_ratio: ratio(&|r| Some(r.throughput)),
            p99_ratio: ratio(&|r| Some(r.latency_ms.p99)),
            peak_rss_ratio: ratio(&|r| r.extra.get("peak_rss_kib").copied()),
            extra_ratios: extra_keys
                .into_iter()
                .filter(|k| k != "peak_rss_kib")
                .filter_map(|k| Some((k.clone(), ratio(&|r| r.extra.get(&k).copied())?)))
                .collect(),
        });
    }
    Summary {
        rounds,
        scenarios: out,
        machine: machine_facts(),
    }
}

/// What the figures were measured on.
pub fn machine_facts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism().map_or_else(|_| "?".into(), |n| n.to_string()),
    );
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(l) = mem.lines().find(|l| l.starts_with("MemTotal:")) {
            m.insert(
                "memory".into(),
                l.trim_start_matches("MemTotal:").trim().to_string(),
            );
        }
    }
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), v.trim().to_string());
    }
    m
}

fn fmt_opt(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// The summary as a human table.
pub fn summary_table(s: &Summary) -> String {
    let mut out = format!(
        "median of {} rounds (ratios: median of per-round cairn/etcd)\n{:<14} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>6}\n",
        s.rounds, "scenario", "etcd op/s", "cairn op/s", "ratio", "etcd p99", "cairn p99", "ratio", "etcd RSS", "cairn RSS", "ratio", "errors"
    );
    for sc in &s.scenarios {
        out.push_str(&format!(
            "{:<14} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>6}\n",
            sc.scenario,
            fmt_opt(sc.etcd.throughput, 0),
            fmt_opt(sc.cairn.throughput, 0),
            fmt_opt(sc.throughput_ratio, 2),
            fmt_opt(sc.etcd.p99_ms, 2),
            fmt_opt(sc.cairn.p99_ms, 2),
            fmt_opt(sc.p99_ratio, 2),
            fmt_opt(sc.etcd.peak_rss_mib, 0),
            fmt_opt(sc.cairn.peak_rss_mib, 0),
            fmt_opt(sc.peak_rss_ratio, 2),
            format!("{}/{}", sc.etcd.errors, sc.cairn.errors),
        ));
    }
    out.push_str(
        "(op/s: throughput, deliveries/s for watch; p99 in ms; RSS: peak MiB; errors: etcd/cairn over all rounds)\n",
    );
    for sc in &s.scenarios {
        for (k, v) in &sc.extra_ratios {
            if k.ends_with("_ms") || k == "keys_loaded" || k == "puts_per_s" {
                out.push_str(&format!(
                    "  {}: {k} etcd {} cairn {} ratio {v:.2}\n",
                    sc.scenario,
                    fmt_opt(sc.etcd.extra.get(k).copied(), 1),
                    fmt_opt(sc.cairn.extra.get(k).copied(), 1)
                ));
            }
        }
        for (name, side) in [("etcd", &sc.etcd), ("cairn", &sc.cairn)] {
            if let Some(u) = &side.unsupported {
                out.push_str(&format!(
                    "  {}: {name} does not implement it ({u})\n",
                    sc.scenario
                ));
            }
            for f in &side.failures {
                out.push_str(&format!(
                    "  {}: {name} run failed: {}\n",
                    sc.scenario,
                    f.lines().next().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// Runs the whole comparison; returns the summary (and writes `--out`).
pub async fn compare(o: &CompareOpts) -> Result<Summary, BenchError> {
    if !matches!(o.members, 1 | 3 | 5) {
        return Err(BenchError::Usage(format!(
            "--members {}: compare runs clusters of 1, 3 or 5 members",
            o.members
        )));
    }
    if o.rounds == 0 {
        return Err(BenchError::Usage("--rounds must be at least 1".into()));
    }
    // The default is the cairn built next to this binary: both packages of
    // the workspace share one target dir, but building cairn-bench alone
    // (`cargo run -p cairn-bench`) does not build the server.
    let (cairn_bin, hint) = match &o.cairn_bin {
        Some(p) => (p.clone(), ""),
        None => (
            std::env::current_exe()?.with_file_name("cairn"),
            " (build the server next to cairn-bench: cargo build --release --workspace)",
        ),
    };
    for (what, p, hint) in [
        ("--cairn-bin", &cairn_bin, hint),
        ("--etcd-bin", &o.etcd_bin, ""),
    ] {
        if !p.is_file() {
            return Err(BenchError::Usage(format!(
                "{what} {}: no such file{hint}",
                p.display()
            )));
        }
    }
    let scenarios = expand_scenarios(&o.scenarios, &o.sweep, o.members)?;
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out.join("rounds"))?;
    }
    let mut records = Vec::new();
    for round in 1..=o.rounds {
        for name in &scenarios {
            for kind in [Kind::Etcd, Kind::Cairn] {
                let rec = run_one(round, kind, name, o, &cairn_bin).await;
                if !o.quiet {
                    eprintln!("{}", record_line(&rec));
                }
                if let Some(out) = &o.out {
                    let file = out.join("rounds").join(format!(
                        "r{round}-{}-{}.json",
                        name.replace('@', "-"),
                        kind.name()
                    ));
                    std::fs::write(file, to_json(&rec))?;
                }
                records.push(rec);
            }
        }
    }
    let summary = summarise(&records, &scenarios, o.rounds);
    let svg = chart::sweep_points(&summary).map(|pts| chart::render_svg(&pts));
    if let Some(out) = &o.out {
        std::fs::write(out.join("summary.json"), to_json(&summary))?;
        std::fs::write(out.join("summary.txt"), summary_table(&summary))?;
        if let Some(svg) = &svg {
            std::fs::write(out.join("put-clients.svg"), svg)?;
        }
    }
    if let Some(path) = &o.chart {
        match &svg {
            Some(svg) => std::fs::write(path, svg)?,
            None => {
                return Err(BenchError::Usage(
                    "--chart needs the put-clients scenario".into(),
                ))
            }
        }
    }
    Ok(summary)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// One progress line per run.
fn record_line(r: &RunRecord) -> String {
    let head = format!(
        "round {} {:<12} {:<5}",
        r.round,
        r.scenario,
        r.server.name()
    );
    match (&r.report, &r.unsupported, &r.failure) {
        (Some(rep), _, fail) => format!(
            "{head} {:>10.1} op/s  p99 {:>8.2} ms  errors {}  rss {} MiB{}",
            rep.throughput,
            rep.latency_ms.p99,
            rep.errors,
            r.peak_rss_kib
                .map_or("-".into(), |k| (k / 1024).to_string()),
            fail.as_ref().map_or(String::new(), |f| format!("  ({f})"))
        ),
        (None, Some(u), _) => format!("{head} unsupported: {u}"),
        (None, None, Some(f)) => format!("{head} failed: {}", f.lines().next().unwrap_or("")),
        (None, None, None) => format!("{head} no result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN]), None);
    }

    #[test]
    fn watch_sat_saturates_with_concurrent_writers_and_is_run_by_default() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let Command::Compare(o) =
            Cli::parse_from(["cairn-bench", "compare", "--ops", "3000"]).command
        else {
            panic!("compare parses as compare");
        };
        let Some((_, Scenario::Watch(w))) = plan("watch-sat", &o, vec!["127.0.0.1:1".into()])
        else {
            panic!("watch-sat is a watch scenario");
        };
        assert_eq!((w.watchers, w.streams, w.rate, w.writers), (500, 10, 0, 16));
        assert_eq!(w.puts, 1500);
        let Some((_, Scenario::Watch(w))) = plan("watch", &o, vec!["127.0.0.1:1".into()]) else {
            panic!("watch is a watch scenario");
        };
        assert_eq!((w.rate, w.writers), (200, 1), "watch keeps its fixed rate");
        let default = expand_scenarios(DEFAULT_SCENARIOS, &[1], 1).expect("ok");
        assert!(default.contains(&"watch-sat".to_string()));
    }

    #[test]
    fn scenarios_expand_and_unknown_is_an_error() {
        assert_eq!(
            expand_scenarios("put, put-clients", &[1, 16], 1).expect("ok"),
            ["put", "put@c1", "put@c16"]
        );
        assert!(expand_scenarios("nope", &[1], 1).is_err());
        let all = expand_scenarios("all", &[1], 1).expect("ok");
        assert!(all.contains(&"restart-1m".to_string()));
        assert!(!all.contains(&"catchup".to_string()));
        // The cluster scenarios need a cluster.
        assert!(expand_scenarios("catchup", &[1], 1).is_err());
        assert!(expand_scenarios("all", &[1], 3)
            .expect("ok")
            .contains(&"catchup".to_string()));
    }

    fn rec(round: usize, server: Kind, tput: f64, p99: f64) -> RunRecord {
        RunRecord {
            round,
            server,
            scenario: "put".into(),
            report: Some(Report {
                throughput: tput,
                latency_ms: crate::report::LatencySummary {
                    p99,
                    ..Default::default()
                },
                ..Default::default()
            }),
            unsupported: None,
            failure: None,
            peak_rss_kib: Some(1024),
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let records = vec![
            rec(1, Kind::Etcd, 100.0, 10.0),
            rec(1, Kind::Cairn, 50.0, 20.0),
            rec(2, Kind::Etcd, 100.0, 10.0),
            rec(2, Kind::Cairn, 200.0, 5.0),
            rec(3, Kind::Etcd, 100.0, 10.0),
            rec(3, Kind::Cairn, 120.0, 10.0),
            RunRecord {
                report: None,
                unsupported: Some("not yet".into()),
                peak_rss_kib: Some(99 * 1024),
                ..rec(4, Kind::Cairn, 0.0, 0.0)
            },
        ];
        let s = summarise(&records, &["put".to_string()], 3);
        let sc = &s.scenarios[0];
        assert_eq!(sc.throughput_ratio, Some(1.2));
        assert_eq!(sc.p99_ratio, Some(1.0));
        assert_eq!(sc.etcd.throughput, Some(100.0));
        // The unsupported run's idle RSS is left out.
        assert_eq!(sc.cairn.peak_rss_mib, Some(1.0));
        assert_eq!(sc.cairn.unsupported.as_deref(), Some("not yet"));
        assert!(summary_table(&s).contains("put"));
    }
}
