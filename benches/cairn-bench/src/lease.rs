//! The `lease` scenario: grant L leases, then keep them alive over C
//! LeaseKeepAlive streams until `--total` keep-alives were answered (or the
//! time limit passed), then revoke them.
//!
//! Measured: keep-alive round trips (request sent → response for that lease
//! received) as the main figures; grant latency as `grant_*` extras. A
//! keep-alive answered with TTL ≤ 0 (lease not found) is an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::conn::Pool;
use crate::report::{add_error_sample, Latencies, Report};
use crate::runner::{finish, progress_bar, Load, OP_TIMEOUT};
use crate::BenchError;
use cairn::proto::etcdserverpb::lease_client::LeaseClient;
use cairn::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// Options of `lease`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct LeaseOpts {
    /// Leases granted before the keep-alives start.
    #[arg(long, default_value_t = 100)]
    pub leases: usize,
    /// Keep-alive streams the leases are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// TTL of each lease, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

impl Default for LeaseOpts {
    fn default() -> Self {
        LeaseOpts {
            leases: 100,
            streams: 10,
            ttl: 60,
        }
    }
}

/// What one stream task hands back.
struct StreamResult {
    grant: Latencies,
    keepalive: Latencies,
    ops: u64,
    leases: Vec<i64>,
    /// When this stream's keep-alive phase began and ended (grants excluded).
    phase: Option<(Instant, Instant)>,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Grants `n` leases, then keeps them alive on one stream while the shared
/// counter hands out keep-alive numbers below `total`.
async fn stream_task(
    mut client: LeaseClient<tonic::transport::Channel>,
    n: usize,
    ttl: i64,
    issued: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
    pb: indicatif::ProgressBar,
) -> Result<StreamResult, BenchError> {
    let mut r = StreamResult {
        grant: Latencies::new(),
        keepalive: Latencies::new(),
        ops: 0,
        leases: Vec::with_capacity(n),
        phase: None,
        errors: 0,
        error_samples: BTreeMap::new(),
    };
    for _ in 0..n {
        let t = Instant::now();
        match client.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await {
            Ok(resp) => {
                r.grant.record(t.elapsed());
                r.leases.push(resp.into_inner().id);
            }
            Err(e) if e.code() == Code::Unimplemented => {
                return Err(BenchError::Unimplemented(format!(
                    "LeaseGrant: gRPC UNIMPLEMENTED {}",
                    e.message()
                )))
            }
            Err(e) => add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                format!("grant: {}", status_text(&e)),
            ),
        }
    }
    if r.leases.is_empty() {
        return Ok(r);
    }
    let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
    let mut inbound: Option<tonic::Streaming<_>> = None;
    let mut call = Some((client.clone(), rx));
    let phase_start = Instant::now();
    loop {
        let seq = issued.fetch_add(1, Ordering::Relaxed);
        if seq >= total || Instant::now() >= deadline {
            break;
        }
        let id = r.leases[seq as usize % r.leases.len()];
        let t = Instant::now();
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                "keep-alive stream closed".into(),
            );
            break;
        }
        if let Some((mut c, rx)) = call.take() {
            // The first request is queued before the call: a gRPC server may
            // send its headers only with the first response.
            match c.lease_keep_alive(ReceiverStream::new(rx)).await {
                Ok(s) => inbound = Some(s.into_inner()),
                Err(e) if e.code() == Code::Unimplemented => {
                    return Err(BenchError::Unimplemented(format!(
                        "LeaseKeepAlive: gRPC UNIMPLEMENTED {}",
                        e.message()
                    )))
                }
                Err(e) => {
                    add_error_sample(
                        &mut r.error_samples,
                        &mut r.errors,
                        format!("keep-alive: {}", status_text(&e)),
                    );
                    break;
                }
            }
        }
        let Some(stream) = inbound.as_mut() else {
            break;
        };
        match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.id == id && resp.ttl > 0 => {
                r.keepalive.record(t.elapsed());
                r.ops += 1;
            }
            Ok(Ok(Some(resp))) => add_error_sample(
                &mut r.error_samples,
                &mut r.errors,
                format!(
                    "keep-alive of lease {id} answered with id {} ttl {}",
                    resp.id, resp.ttl
                ),
            ),
            Ok(Ok(None)) => {
                add_error_sample(
                    &mut r.error_samples,
                    &mut r.errors,
                    "keep-alive stream ended".into(),
                );
                break;
            }
            Ok(Err(e)) => {
                add_error_sample(
                    &mut r.error_samples,
                    &mut r.errors,
                    format!("keep-alive: {}", status_text(&e)),
                );
                break;
            }
            Err(_) => {
                add_error_sample(
                    &mut r.error_samples,
                    &mut r.errors,
                    "keep-alive timed out".into(),
                );
                break;
            }
        }
        pb.inc(1);
    }
    r.phase = Some((phase_start, Instant::now()));
    Ok(r)
}

pub async fn run_lease(load: &Load, o: &LeaseOpts) -> Result<Report, BenchError> {
    if o.leases == 0 || o.streams == 0 {
        return Err(BenchError::Usage(
            "lease needs --leases >= 1 and --streams >= 1".into(),
        ));
    }
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let streams = o.streams.min(o.leases);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_duration;
    let pb = progress_bar(load.progress, load.total, "lease");
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = (o.leases - s).div_ceil(streams);
        tasks.push(tokio::spawn(stream_task(
            LeaseClient::new(pool.channel(s)),
            n,
            o.ttl,
            issued.clone(),
            load.total,
            deadline,
            pb.clone(),
        )));
    }
    let mut report = Report {
        scenario: "lease".into(),
        endpoints: load.endpoints.clone(),
        clients: streams,
        conns: pool.len(),
        ..Default::default()
    };
    let (mut grant, mut keepalive) = (Latencies::new(), Latencies::new());
    let mut leases = Vec::new();
    let mut unimplemented = None;
    let mut phase: Option<(Instant, Instant)> = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                grant.merge(&r.grant);
                keepalive.merge(&r.keepalive);
                report.ops += r.ops;
                leases.extend(r.leases);
                if let Some((a, b)) = r.phase {
                    phase = Some(phase.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
                }
                report.merge_errors(r.errors, r.error_samples);
            }
            Ok(Err(e @ BenchError::Unimplemented(_))) => unimplemented = Some(e),
            Ok(Err(e)) => report.add_error(e.to_string()),
            Err(e) => report.add_error(format!("lease stream task failed: {e}")),
        }
    }
    pb.finish_and_clear();
    // Throughput counts the keep-alive phase only, not the grants.
    let elapsed = phase.map_or(start.elapsed(), |(a, b)| b - a);
    if let Some(e) = unimplemented {
        return Err(e);
    }
    // Clean up (untimed): a revoke failure is an error of the run too.
    let mut client = LeaseClient::new(pool.channel(0));
    for id in &leases {
        let revoke = tokio::time::timeout(
            Duration::from_secs(10),
            client.lease_revoke(LeaseRevokeRequest { id: *id }),
        );
        match revoke.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => report.add_error(format!("revoke: {}", status_text(&e))),
            Err(_) => report.add_error("revoke timed out"),
        }
    }
    report.outcomes.insert("grants".into(), grant.len());
    report.outcomes.insert("keepalives".into(), report.ops);
    let g = grant.summary();
    report.extra.insert("grant_avg_ms".into(), g.avg);
    report.extra.insert("grant_p99_ms".into(), g.p99);
    finish(&mut report, &keepalive, elapsed);
    Ok(report)
}
