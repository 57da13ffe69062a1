//! The closed-loop driver behind the request/response scenarios.
//!
//! `clients` tasks run at once; each owns a [`Client`] (its connection, keys
//! and state) and issues one operation at a time. A shared counter hands out
//! operation numbers until `total` are issued or the time limit passes, so a
//! run is bounded in count *and* time and always stops by itself. Each task
//! records into its own histogram; they are merged at the end.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{add_error_sample, Latencies, Report};

/// How long one operation may take before it counts as an error.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// How much load one run applies.
#[derive(Clone, Debug)]
pub struct Load {
    /// Server endpoints (`host:port` or URLs).
    pub endpoints: Vec<String>,
    /// HTTP/2 connections shared by the clients.
    pub conns: usize,
    /// Concurrent clients (for watch and lease: streams).
    pub clients: usize,
    /// Operations to issue in all.
    pub total: u64,
    /// Hard time limit of the measured phase.
    pub max_duration: Duration,
    /// Whether to draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 1,
            total: 10_000,
            max_duration: Duration::from_secs(300),
            progress: false,
        }
    }
}

/// A successful operation: what kind it was and how many items it carried
/// (1 for a request; the number of keys for a load batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub tag: &'static str,
    pub items: u64,
}

impl Done {
    pub fn one(tag: &'static str) -> Self {
        Done { tag, items: 1 }
    }
}

/// One simulated client: issues operation number `seq` and waits for it.
pub trait Client: Send + 'static {
    fn op(&mut self, seq: u64) -> impl Future<Output = Result<Done, tonic::Status>> + Send;
}

/// A progress bar for `total` steps, hidden unless asked for (and indicatif
/// hides it anyway when stderr is not a terminal).
pub fn progress_bar(show: bool, total: u64, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // A run bounded by time only has no length to show.
    let pb = if total == u64::MAX {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(total)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    ) {
        pb.set_style(style);
    }
    pb.set_prefix(label.to_string());
    pb
}

/// What one client task hands back.
struct TaskResult {
    lat: Latencies,
    ops: u64,
    outcomes: BTreeMap<String, u64>,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
}

/// Runs `load.clients` clients made by `make(i)` until `load.total`
/// operations were issued or `load.max_duration` passed.
pub async fn drive<C: Client>(
    scenario: &str,
    load: &Load,
    mut make: impl FnMut(usize) -> C,
) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_duration;
    let pb = progress_bar(load.progress, load.total, scenario);
    let mut tasks = Vec::with_capacity(load.clients);
    for i in 0..load.clients.max(1) {
        let mut client = make(i);
        let issued = issued.clone();
        let total = load.total;
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult {
                lat: Latencies::new(),
                ops: 0,
                outcomes: BTreeMap::new(),
                errors: 0,
                error_samples: BTreeMap::new(),
            };
            loop {
                let seq = issued.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match tokio::time::timeout(OP_TIMEOUT, client.op(seq)).await {
                    Ok(Ok(done)) => {
                        r.lat.record(t.elapsed());
                        r.ops += done.items;
                        *r.outcomes.entry(done.tag.to_string()).or_default() += done.items;
                    }
                    Ok(Err(status)) => add_error_sample(
                        &mut r.error_samples,
                        &mut r.errors,
                        format!("{:?}: {}", status.code(), status.message()),
                    ),
                    Err(_) => add_error_sample(
                        &mut r.error_samples,
                        &mut r.errors,
                        format!("operation timed out after {OP_TIMEOUT:?}"),
                    ),
                }
                pb.inc(1);
            }
            r
        }));
    }
    let mut report = Report {
        scenario: scenario.to_string(),
        endpoints: load.endpoints.clone(),
        clients: load.clients.max(1),
        conns: load.conns.max(1),
        ..Default::default()
    };
    let mut lat = Latencies::new();
    for t in tasks {
        match t.await {
            Ok(r) => {
                lat.merge(&r.lat);
                report.ops += r.ops;
                for (k, v) in r.outcomes {
                    *report.outcomes.entry(k).or_default() += v;
                }
                report.merge_errors(r.errors, r.error_samples);
            }
            Err(e) => report.add_error(format!("client task failed: {e}")),
        }
    }
    pb.finish_and_clear();
    finish(&mut report, &lat, start.elapsed());
    report
}

/// Fills in the elapsed time, throughput and latency summary.
pub fn finish(report: &mut Report, lat: &Latencies, elapsed: Duration) {
    report.elapsed_s = elapsed.as_secs_f64();
    report.throughput = if report.elapsed_s > 0.0 {
        report.ops as f64 / report.elapsed_s
    } else {
        0.0
    };
    report.latency_ms = lat.summary();
}
