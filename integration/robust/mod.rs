//! The robustness harness: real cairn members, real etcd clients, a
//! nemesis, and the history checkers of the `cairn-robust` crate
//! (docs/robustness.md).
//!
//! ```text
//!  Cluster (n members, each behind a peer Proxy) ◀── nemesis thread: kill -9, SIGSTOP, isolate, move-leader
//!        ▲ gRPC (tonic stubs)
//!  tokio runtime: kv clients ─┐ reference watcher ─┐ random watchers ─┐ compactor
//!                             ▼                    ▼                  ▼
//!                        Recorder (operations, watches) ──▶ History ──▶ linearizability::check
//!                                                                     └─▶ watch::check
//! ```
//!
//! A [`Scenario`] runs for its duration (every loop bounded by count and
//! time), then every fault is healed, a final read of every key is made,
//! the reference watcher catches up to the final revision, and the history
//! is checked. A failed check writes the history and the nemesis log to
//! `target/robustness/<scenario>-<seed>.history`.

pub mod cluster;
pub mod nemesis;
pub mod proxy;
pub mod traffic;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn_robust::history::{Operation, Outcome, Request, Response};
use cairn_robust::{lease_end, linearizability, watch};

use cluster::Cluster;
pub use nemesis::Fault;
use traffic::Recorder;

/// One robustness run's shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub members: usize,
    pub faults: Vec<Fault>,
    /// How long traffic and faults run.
    pub duration: Duration,
    pub kv_clients: usize,
    /// Lease-style clients (grant, put with a lease, keep-alive, revoke,
    /// expiry) on keys of their own.
    pub lease_clients: usize,
    /// Kubernetes-style clients (prefix lists, create and update txns on
    /// mod_revision) on keys of their own, and as many informers (list,
    /// then watch the prefix from the list's revision).
    pub k8s_clients: usize,
    /// Whether informers sometimes stop reading their watch for a while.
    pub slow_watchers: bool,
    /// Per client.
    pub max_ops: usize,
    pub keys: usize,
    pub watchers: usize,
    pub compaction_period: Duration,
    /// Environment for every member (e.g. a failpoint).
    pub env: Vec<(&'static str, &'static str)>,
    /// Extra flags for every member (e.g. a small --snapshot-count).
    pub args: Vec<&'static str>,
    pub seed: u64,
    /// Run real etcd (`/usr/bin/etcd`) instead of cairn: the same harness
    /// and checkers must find nothing there either.
    pub etcd: bool,
    /// Whether watchers ask for progress notifications (RequestProgress).
    pub progress_requests: bool,
    /// Stop as soon as this many operations are acknowledged (the
    /// duration then only bounds the run).
    pub target_operations: Option<usize>,
}

impl Scenario {
    /// The CI defaults; `CAIRN_ROBUST_LONG=1` makes runs ten times longer
    /// (and allows ten times more operations), `CAIRN_ROBUST_SEED=<n>`
    /// replays a seed.
    pub fn new(name: &'static str, members: usize, faults: &[Fault]) -> Scenario {
        let long = std::env::var("CAIRN_ROBUST_LONG").is_ok_and(|v| v == "1");
        let seed = crate::common::seed_from_env("CAIRN_ROBUST_SEED");
        Scenario {
            name,
            members,
            faults: faults.to_vec(),
            duration: Duration::from_secs(if long { 200 } else { 20 }),
            kv_clients: 6,
            lease_clients: 0,
            k8s_clients: 0,
            slow_watchers: false,
            max_ops: if long { 50_000 } else { 5_000 },
            keys: 5,
            watchers: 2,
            compaction_period: Duration::from_millis(700),
            env: Vec::new(),
            args: Vec::new(),
            seed,
            etcd: false,
            progress_requests: true,
            target_operations: None,
        }
    }
}

/// Whether `CAIRN_ROBUST_LONG=1` asks for the long runs.
pub fn long() -> bool {
    std::env::var("CAIRN_ROBUST_LONG").is_ok_and(|v| v == "1")
}

impl Scenario {
    /// Runs for `secs` in CI (the long runs keep their 200 s).
    pub fn lasting(mut self, secs: u64) -> Scenario {
        if !long() {
            self.duration = Duration::from_secs(secs);
        }
        self
    }

    /// Every traffic profile at once: 3 KV clients, 2 lease clients, a
    /// Kubernetes-style client and its informer.
    pub fn mixed(mut self) -> Scenario {
        self.kv_clients = 3;
        self.lease_clients = 2;
        self.k8s_clients = 1;
        self
    }

    /// Every key the run's clients write: read before traffic (absent) and
    /// once more at the end.
    fn keys_read(&self) -> Vec<String> {
        let mut keys: Vec<String> = (0..self.keys)
            .map(|k| format!("{}k{k}", traffic::PREFIX))
            .collect();
        if self.lease_clients > 0 {
            keys.extend((0..self.keys).map(traffic::lease_key));
        }
        if self.k8s_clients > 0 {
            keys.extend((0..self.keys).map(|k| format!("{}p{k}", traffic::K8S_PREFIX)));
            keys.extend((0..self.keys).map(traffic::companion_key));
        }
        keys
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    pub operations: usize,
    pub watches: usize,
    pub watch_events: usize,
    pub linearizability: linearizability::Report,
    pub watch: watch::Report,
    pub nemesis: nemesis::Log,
    /// Every member's HashKV at one revision after the run, or why not.
    pub converged: Result<(i64, u32), String>,
    /// Leases the final lease check asked about, how long it took, and
    /// how long after the heal it last saw the raft term change.
    pub leases_checked: (usize, Duration, Duration),
    /// What the final lease check found: leases alive past their TTL,
    /// keys outliving their lease.
    pub leases: Vec<String>,
    /// Where the history was written (only when a check failed).
    pub history_file: Option<PathBuf>,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.linearizability.is_linearizable()
            && self.watch.ok()
            && self.converged.is_ok()
            && self.leases.is_empty()
            && !self
                .nemesis
                .iter()
                .any(|l| l.contains(nemesis::NOT_SURVIVED))
    }
    /// A readable summary, and the violations if any.
    pub fn summary(&self, s: &Scenario) -> String {
        let mut out = format!(
            "robustness {} (seed {}, {} member(s), {:?}): {} operations ({} acknowledged, {} pinned, {} free, {} impossible, {} failed reads), \
             {} watches with {} events, checked in {:?}; {} nemesis actions; run took {:?}",
            s.name,
            s.seed,
            s.members,
            s.faults,
            self.operations,
            self.linearizability.stats.acknowledged,
            self.linearizability.stats.pinned,
            self.linearizability.stats.free,
            self.linearizability.stats.impossible,
            self.linearizability.stats.dropped_reads,
            self.watches,
            self.watch_events,
            self.linearizability.stats.elapsed,
            self.nemesis.len(),
            self.elapsed,
        );
        if self.leases_checked.0 > 0 {
            out.push_str(&format!(
                "; final lease check: {} leases in {:?} (term last changed {:?} after the heal)",
                self.leases_checked.0, self.leases_checked.1, self.leases_checked.2
            ));
        }
        if let Some(v) = &self.linearizability.violation {
            out.push_str(&format!("\nLINEARIZABILITY VIOLATION:\n{v}"));
        }
        for v in &self.leases {
            out.push_str(&format!("\nLEASE VIOLATION: {v}"));
        }
        for v in &self.watch.violations {
            out.push_str(&format!("\nWATCH VIOLATION: {v}"));
        }
        match &self.converged {
            Ok((revision, hash)) => out.push_str(&format!(
                "\nevery member: HashKV {hash:#x} at revision {revision}"
            )),
            Err(e) => out.push_str(&format!("\nDATA VIOLATION: {e}")),
        }
        if let Some(f) = &self.history_file {
            out.push_str(&format!("\nhistory written to {}", f.display()));
        }
        out
    }
}

/// Where failed runs leave their histories: `target/robustness/`.
fn history_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/robustness")
}

/// Runs `s` and checks its history.
pub fn run(s: &Scenario) -> RunReport {
    // First, so that a run that dies half-way can still be replayed.
    eprintln!(
        "robustness {}: CAIRN_ROBUST_SEED={} ({:?}, {} member(s))",
        s.name, s.seed, s.faults, s.members
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let binary = if s.etcd {
        crate::common::etcd_path()
    } else {
        crate::common::cairn_path()
    };
    let cluster = Cluster::start(binary, s.members, &s.env, &s.args, rt.handle());
    let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    let cluster = Arc::new(Mutex::new(cluster));

    // The store before traffic: a fresh cluster, so no key of the prefix.
    let keys = s.keys_read();
    let initial = rt
        .block_on(read_all(&urls[0], &keys))
        .expect("initial read");
    assert!(
        initial.1.iter().all(|kv| kv.is_none()),
        "a fresh cluster holds robustness keys: {initial:?}"
    );
    let rec = Arc::new(Recorder::new(initial.0));
    if let Some(n) = s.target_operations {
        rec.target.store(n, Ordering::SeqCst);
    }
    let deadline = Instant::now() + s.duration;

    let mut tasks = Vec::new();
    for c in 0..s.kv_clients {
        tasks.push(rt.spawn(traffic::kv_client(
            c,
            urls[c % urls.len()].clone(),
            rec.clone(),
            s.keys,
            s.max_ops,
            deadline,
            s.seed.wrapping_add(c as u64),
        )));
    }
    for c in 0..s.lease_clients {
        let id = 300 + c;
        tasks.push(rt.spawn(traffic::lease_client(
            id,
            urls[c % urls.len()].clone(),
            rec.clone(),
            s.keys,
            s.max_ops,
            deadline,
            s.seed.wrapping_add(id as u64),
        )));
    }
    for c in 0..s.k8s_clients {
        let id = 400 + c;
        tasks.push(rt.spawn(traffic::k8s_client(
            id,
            urls[(c + 1) % urls.len()].clone(),
            rec.clone(),
            s.keys,
            s.max_ops,
            deadline,
            s.seed.wrapping_add(id as u64),
        )));
        tasks.push(rt.spawn(traffic::informer(
            500 + c,
            urls.clone(),
            rec.clone(),
            deadline,
            s.slow_watchers,
            s.seed.wrapping_add(500 + c as u64),
        )));
    }
    for w in 0..s.watchers {
        tasks.push(rt.spawn(traffic::watcher(
            100 + w,
            urls.clone(),
            rec.clone(),
            deadline,
            s.progress_requests,
            s.seed.wrapping_add(100 + w as u64),
        )));
    }
    tasks.push(rt.spawn(traffic::compactor(
        urls.clone(),
        rec.clone(),
        s.compaction_period,
        deadline,
    )));
    let reference = rt.spawn(traffic::reference_watcher(
        200,
        urls.clone(),
        rec.clone(),
        s.progress_requests,
    ));

    let nemesis_log = {
        let cluster = cluster.clone();
        let faults = s.faults.clone();
        let seed = s.seed;
        let rec = rec.clone();
        std::thread::spawn(move || {
            nemesis::run(cluster, &faults, deadline, started, seed, || rec.enough())
        })
    };
    for t in tasks {
        rt.block_on(t).expect("traffic task");
    }
    let nemesis_log = nemesis_log.join().expect("nemesis thread");
    let healed = rec.now();

    // Final reads of every key, then let the reference watcher catch up
    // with the final revision (bounded) so the watch checker sees it all.
    let final_client = 1000;
    let final_revision = rt.block_on(final_reads(&urls[0], &keys, &rec, final_client));
    let caught_up = crate::common::wait_until(Duration::from_secs(20), || {
        rec.reference.load(Ordering::SeqCst) >= final_revision
    });
    rec.stop_reference.store(true, Ordering::SeqCst);
    rt.block_on(reference).expect("reference watcher");
    assert!(
        caught_up,
        "the reference watch did not reach the final revision {final_revision} within 20 s \
         (it vouched for {})",
        rec.reference.load(Ordering::SeqCst)
    );

    let converged = cluster
        .lock()
        .expect("cluster lock")
        .converged(Duration::from_secs(20));
    let history = rec.history();
    let lease_started = Instant::now();
    let final_leases = final_leases(&rt, &urls[0], &cluster, &history, &rec, healed);
    let leases_checked = (
        lease_end::lives(&history).len(),
        lease_started.elapsed(),
        Duration::from_nanos(final_leases.stable_since.saturating_sub(healed)),
    );
    let leases = lease_end::check(&history, &final_leases);
    let lin = linearizability::check(&history, linearizability::DEFAULT_STEP_BUDGET);
    let watch = watch::check(&history);
    let mut outcome = RunReport {
        operations: history.operations.len(),
        watches: history.watches.len(),
        watch_events: watch.events,
        linearizability: lin,
        watch,
        nemesis: nemesis_log,
        converged,
        leases_checked,
        leases,
        history_file: None,
        elapsed: started.elapsed(),
    };
    // `CAIRN_ROBUST_WRITE_HISTORY=1` keeps every run's history, not only
    // a failed one's.
    if !outcome.ok() || std::env::var("CAIRN_ROBUST_WRITE_HISTORY").is_ok_and(|v| v == "1") {
        let path = history_dir().join(format!("{}-{}.history", s.name, s.seed));
        let mut text = outcome.summary(s);
        text.push_str("\n\nnemesis:\n");
        text.push_str(&outcome.nemesis.join("\n"));
        text.push_str("\n\n");
        text.push_str(&history.to_text());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::write(&path, text).is_ok() {
            outcome.history_file = Some(path);
        }
    }
    drop(rt);
    outcome
}

/// (revision, each key's value) through a linearizable range of the prefix.
async fn read_all(
    url: &str,
    keys: &[String],
) -> Result<(i64, Vec<Option<cairn_robust::history::KeyValue>>), String> {
    let channel = traffic::lazy_channel(url).ok_or("bad url")?;
    let mut kv = KvClient::new(channel);
    let mut revision = 0;
    let mut values = Vec::new();
    for key in keys {
        let key = key.clone();
        match traffic::execute(&mut kv, &Request::Get { key }).await? {
            Response::Get { revision: r, kv } => {
                revision = r;
                values.push(kv);
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok((revision, values))
}

/// Reads every key once more after the faults are healed (recorded like any
/// operation, retried until one succeeds); the highest revision seen.
async fn final_reads(url: &str, keys: &[String], rec: &Recorder, client: usize) -> i64 {
    let Some(channel) = traffic::lazy_channel(url) else {
        return 0;
    };
    let mut kv = KvClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in keys {
        let request = Request::Get { key: key.clone() };
        loop {
            let invoked = rec.now();
            let result = traffic::execute(&mut kv, &request).await;
            let completed = rec.now();
            let ok = result.is_ok();
            rec.record(Operation {
                client,
                invoked,
                completed,
                request: request.clone(),
                outcome: match result {
                    Ok(r) => Outcome::Ok(r),
                    Err(e) => Outcome::Failed(e),
                },
            });
            if ok || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    rec.max_revision.load(Ordering::SeqCst)
}

/// The final lease check's observations (`cairn_robust::lease_end`): asks
/// about every lease the traffic granted (LeaseTimeToLive) until each is
/// gone or past the latest moment it may expire, watching the raft term
/// meanwhile (a new leader renews every lease), then reads which keys of
/// the prefix are still attached to a lease. Bounded to a minute.
fn final_leases(
    rt: &tokio::runtime::Runtime,
    url: &str,
    cluster: &Mutex<Cluster>,
    history: &cairn_robust::history::History,
    rec: &Recorder,
    healed: u64,
) -> lease_end::Final {
    use cairn::proto::etcdserverpb::lease_client::LeaseClient;
    use cairn::proto::etcdserverpb::{LeaseTimeToLiveRequest, RangeRequest};
    use futures::StreamExt as _;
    let lives = lease_end::lives(history);
    let mut f = lease_end::Final {
        stable_since: healed,
        extend: cluster::ELECTION_MS * 1_000_000,
        slack: 2_000_000_000,
        ..lease_end::Final::default()
    };
    if lives.is_empty() {
        return f;
    }
    let _in_runtime = rt.enter();
    let Some(channel) = traffic::lazy_channel(url) else {
        return f;
    };
    let lease = LeaseClient::new(channel.clone());
    let mut pending: Vec<i64> = lives.keys().copied().collect();
    let mut term = cluster.lock().expect("cluster lock").max_term();
    let give_up = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < give_up {
        let t = cluster.lock().expect("cluster lock").max_term();
        if t.is_some() && t != term {
            term = t;
            f.stable_since = rec.now();
        }
        // Up to 32 questions at a time: hundreds of leases, one by one,
        // took 10-15 s on a loaded machine.
        let asked = rt.block_on(
            futures::stream::iter(pending.iter().map(|&id| {
                let mut lease = lease.clone();
                async move {
                    let invoked = rec.now();
                    let answer = lease
                        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                        .await;
                    (id, invoked, rec.now(), answer)
                }
            }))
            .buffer_unordered(32)
            .collect::<Vec<_>>(),
        );
        for (id, invoked, completed, answer) in asked {
            if let Ok(r) = answer {
                let ttl = r.into_inner().ttl;
                // Alive at least when asked; gone at the latest when answered.
                let at = if ttl < 0 { completed } else { invoked };
                f.observations.push(lease_end::Observation { id, at, ttl });
            }
        }
        // Done with a lease once it is gone, or seen alive past its
        // deadline (a violation already).
        pending.retain(|id| {
            let due = lease_end::deadline(&lives[id], &f);
            !f.observations
                .iter()
                .any(|o| o.id == *id && (o.ttl < 0 || o.at > due))
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let at = rec.now();
    let range = rt.block_on(KvClient::new(channel).range(RangeRequest {
        key: traffic::PREFIX.as_bytes().to_vec(),
        range_end: traffic::PREFIX_END.as_bytes().to_vec(),
        ..Default::default()
    }));
    if let Ok(r) = range {
        f.keys = r
            .into_inner()
            .kvs
            .iter()
            .filter(|kv| kv.lease != 0)
            .map(|kv| lease_end::KeyLease {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                lease: kv.lease,
                at,
            })
            .collect();
    }
    f
}
