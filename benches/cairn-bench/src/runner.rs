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
    /// Whether to print, on stderr, one line per wall-clock second with the
    /// operations completed in it and their p99 and max latency (to see
    /// stalls while something else happens on the server).
    pub timeline: bool,
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
            timeline: false,
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
    /// (completion time in ms since the Unix epoch, latency, ok) of each
    /// operation, with `Load::timeline` only.
    timeline: Vec<(u64, Duration, bool)>,
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
        let timeline = load.timeline;
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult {
                lat: Latencies::new(),
                ops: 0,
                outcomes: BTreeMap::new(),
                errors: 0,
                error_samples: BTreeMap::new(),
                timeline: Vec::new(),
            };
            loop {
                let seq = issued.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let outcome = tokio::time::timeout(OP_TIMEOUT, client.op(seq)).await;
                if timeline {
                    r.timeline
                        .push((unix_ms(), t.elapsed(), matches!(outcome, Ok(Ok(_)))));
                }
                match outcome {
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
    let mut timeline = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => {
                lat.merge(&r.lat);
                timeline.extend(r.timeline);
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
    if load.timeline {
        eprint!("{}", timeline_lines(timeline));
    }
    report
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One line per wall-clock second (Unix time, to line up with other logs):
/// operations completed in it, errors, and the p99 and max latency in ms.
fn timeline_lines(mut ops: Vec<(u64, Duration, bool)>) -> String {
    ops.sort_by_key(|&(at, ..)| at);
    let mut out = String::new();
    for second in ops.chunk_by(|a, b| a.0 / 1000 == b.0 / 1000) {
        let mut lat = Latencies::new();
        for &(_, d, _) in second {
            lat.record(d);
        }
        let s = lat.summary();
        let errors = second.iter().filter(|&&(.., ok)| !ok).count();
        out.push_str(&format!(
            "timeline {} ops {} errors {} p99 {:.1} max {:.1}\n",
            second[0].0 / 1000,
            second.len(),
            errors,
            s.p99,
            s.max
        ));
    }
    out
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
