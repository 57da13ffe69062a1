//! `/metrics`: Prometheus text format with etcd's metric names, for what
//! cairn measures truthfully. Gauges that mirror state (leader, raft
//! indexes, revisions, sizes) are read at scrape time; counters are kept
//! as things happen. Built on the `prometheus` crate's registry and text
//! encoder.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::State;
use crate::grpc::ETCD_API_VERSION;
use crate::msg::RaftStatus;

/// The registry and every metric cairn exports.
pub struct Metrics {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    /// Counted by [`track_leader`] as the leader it sees changes.
    pub leader_changes: IntCounter,
    committed: IntGauge,
    applied: IntGauge,
    pending: IntGauge,
    failed: IntCounter,
    /// The proposals' failed count already added to `failed` (scrapes on
    /// the client and metrics URLs may run at once).
    failed_seen: std::sync::atomic::AtomicU64,
    db_size: IntGauge,
    db_size_in_use: IntGauge,
    /// etcd 3.4's older name of `db_size`, which etcd's sample Grafana
    /// dashboard (Documentation/op-guide/grafana.json) reads.
    db_size_debugging: IntGauge,
    current_revision: IntGauge,
    compact_revision: IntGauge,
    keys: IntGauge,
    /// `/health` answers, as etcd counts them.
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    server_id: IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric registered once");
    c
}

fn labelled(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric registered once");
    g
}

impl Metrics {
    pub fn new(quota_backend_bytes: u64) -> Metrics {
        let r = Registry::new();
        let quota = gauge(
            &r,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
        );
        quota.set(i64::try_from(quota_backend_bytes).unwrap_or(i64::MAX));
        labelled(
            &r,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "server_version",
        )
        .with_label_values(&[ETCD_API_VERSION])
        .set(1);
        labelled(
            &r,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "cluster_version",
        )
        .with_label_values(&[super::health::CLUSTER_VERSION])
        .set(1);
        crate::io_metrics::register(&r);
        // process_resident_memory_bytes & co., which `etcdctl check
        // datascale` and dashboards read.
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(cause = %e, "no process metrics");
        }
        Metrics {
            has_leader: gauge(&r, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge(&r, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            leader_changes: counter(&r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            committed: gauge(&r, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed."),
            applied: gauge(&r, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied."),
            pending: gauge(&r, "etcd_server_proposals_pending", "The current number of pending proposals to commit."),
            failed: counter(&r, "etcd_server_proposals_failed_total", "The total number of failed proposals seen."),
            failed_seen: std::sync::atomic::AtomicU64::new(0),
            db_size: gauge(&r, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            db_size_debugging: gauge(&r, "etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            db_size_in_use: gauge(&r, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes."),
            current_revision: gauge(&r, "etcd_debugging_mvcc_current_revision", "The current revision of store."),
            compact_revision: gauge(&r, "etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store."),
            keys: gauge(&r, "etcd_debugging_mvcc_keys_total", "Total number of keys."),
            health_success: counter(&r, "etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter(&r, "etcd_server_health_failures", "The total number of failed health checks"),
            server_id: labelled(&r, "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", "server_id"),
            registry: r,
        }
    }

    /// Where other parts register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the state gauges and encodes everything.
    fn render(&self, state: &State) -> Result<Vec<u8>, prometheus::Error> {
        let api = &state.api;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.has_leader.set(i64::from(api.status.leader_id() != 0));
        self.is_leader.set(i64::from(api.status.is_leader()));
        self.committed.set(to_i64(api.status.commit_index()));
        self.applied.set(to_i64(api.raft.applied_index()));
        self.pending
            .set(i64::try_from(api.raft.pending_proposals()).unwrap_or(i64::MAX));
        // A counter: brought up to the proposals' own count, once.
        let failed = api.raft.failed_proposals();
        let before = self
            .failed_seen
            .fetch_max(failed, std::sync::atomic::Ordering::Relaxed);
        self.failed.inc_by(failed.saturating_sub(before));
        // sled reports its size on disk only (as Status's dbSizeInUse).
        if let Ok(size) = api.store.backend().size_on_disk() {
            self.db_size.set(to_i64(size));
            self.db_size_debugging.set(to_i64(size));
            self.db_size_in_use.set(to_i64(size));
        }
        self.current_revision.set(api.store.current_revision());
        self.compact_revision.set(api.store.compact_revision());
        // The live keys, counted at scrape time (one index walk per scrape,
        // nothing on the write path; not through `range`, which would count
        // in etcd_mvcc_range_total).
        use crate::mvcc::range::ReadView as _;
        let every_key = crate::mvcc::key_index::KeyRange::new(&[0], &[0]);
        if let Ok(revs) = api
            .store
            .snapshot(0)
            .and_then(|view| view.live_revisions(&every_key, view.rev()))
        {
            self.keys.set(i64::try_from(revs.len()).unwrap_or(i64::MAX));
        }
        self.server_id
            .with_label_values(&[&format!("{:x}", api.cluster.local_id)])
            .set(1);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// How often the leader is looked at for etcd_server_leader_changes_seen_total.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Counts a leader change each time the member sees a leader other than the
/// last one it knew (etcd counts on each Ready with a new leader; a change
/// and back within one poll goes unseen here).
pub async fn track_leader(status: Arc<RaftStatus>, metrics: Arc<Metrics>) {
    let mut last = 0;
    loop {
        let leader = status.leader_id();
        if leader != 0 && leader != last {
            metrics.leader_changes.inc();
            last = leader;
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    match state.metrics.render(&state) {
        Ok(body) => HttpResponse::Ok()
            .content_type(TextEncoder::new().format_type())
            .body(body),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}
