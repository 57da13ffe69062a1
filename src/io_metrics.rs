//! etcd's disk and peer network metrics: the latency histograms
//! `etcd_disk_wal_fsync_duration_seconds` (the raft log's synced write per
//! Ready, `raft::LogStore::persist`) and
//! `etcd_disk_backend_commit_duration_seconds` (the state store's flush,
//! Storage's `maybe_flush`), with etcd's buckets (1 ms doubling to ~8 s);
//! the counters `etcd_network_peer_sent_bytes_total{To}` and
//! `etcd_network_peer_received_bytes_total{From}` (raft messages' bytes on
//! the peer links, `peer::link` and `peer::service`, and snapshot images,
//! `peer::snapshot`); `etcd_network_peer_sent_failures_total{To}` and
//! `_received_failures_total{From}`; `etcd_network_peer_round_trip_time_seconds{To}`
//! (the peer prober's timed round trips, `peer::probe`); etcd's snapshot
//! transfer counters and durations (`etcd_network_snapshot_send_*`,
//! `etcd_network_snapshot_receive_*`); and the client gRPC byte counters
//! `etcd_network_client_grpc_sent_bytes_total` / `_received_bytes_total`
//! (`http::grpc_metrics`); `etcd_mvcc_range_total`, `_put_total` and
//! `_delete_total` (`mvcc::range`, `mvcc::writer`); `etcd_mvcc_txn_total`
//! (and etcd 3.4's `etcd_debugging_mvcc_txn_total`, `apply`); the lessor's
//! `etcd_debugging_lease_*` (`lease::lessor`); the watch gauges
//! `etcd_debugging_mvcc_watcher_total`, `_slow_watcher_total` and
//! `_watch_stream_total` (`watch::broadcaster`);
//! `etcd_server_slow_apply_total` (`apply`); and
//! `etcd_network_active_peers{Local,Remote}` (`peer::link`).
//!
//! Observed where the work happens, registered in `/metrics` by
//! `http::metrics`; they depend on nothing else in cairn, so the raft,
//! storage and peer code need no handle to the HTTP side. An observation
//! is a few atomic adds, next to an fsync or a network write.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

fn histogram(name: &str, help: &str) -> Histogram {
    let buckets = exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("a valid metric")
}

/// The raft log's synced writes.
pub static WAL_FSYNC: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    )
});

/// The state store's flushes.
pub static BACKEND_COMMIT: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    )
});

/// Raft message bytes sent to each peer (label `To`, its id in hex).
pub static PEER_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
        ),
        &["To"],
    )
    .expect("a valid metric")
});

/// Raft message bytes received from each peer (label `From`).
pub static PEER_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
        ),
        &["From"],
    )
    .expect("a valid metric")
});

/// Failed sends to each peer (label `To`): a message dropped because the
/// member's queue was full, or a batch lost with its stream.
pub static PEER_SENT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counters(
        "etcd_network_peer_sent_failures_total",
        "The total number of send failures from peers.",
        "To",
    )
});

/// Failed receives from each peer (label `From`): a stream or snapshot
/// from a known member that broke or was refused.
pub static PEER_RECEIVED_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counters(
        "etcd_network_peer_received_failures_total",
        "The total number of receive failures from peers.",
        "From",
    )
});

/// Round trips of the peer prober's `Probe` call to each member (label
/// `To`), with etcd's buckets (0.1 ms doubling to ~3.3 s).
pub static PEER_RTT: LazyLock<HistogramVec> = LazyLock::new(|| {
    let buckets = exponential_buckets(0.0001, 2.0, 16).expect("valid buckets");
    HistogramVec::new(
        HistogramOpts::new(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
        )
        .buckets(buckets),
        &["To"],
    )
    .expect("a valid metric")
});

/// Snapshot images sent (label `To`) and received (label `From`): outcome
/// counters, whole-transfer durations (etcd's buckets, 0.1 s doubling to
/// ~51 s) and transfers in flight.
pub struct SnapshotMetrics {
    pub success: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub inflights: IntGaugeVec,
}

fn snapshot_metrics(dir: &str, label: &str, help: &str) -> SnapshotMetrics {
    let name = |what: &str| format!("etcd_network_snapshot_{dir}_{what}");
    let buckets = exponential_buckets(0.1, 2.0, 10).expect("valid buckets");
    SnapshotMetrics {
        success: counters(
            &name("success"),
            &format!("Total number of successful snapshot {help}"),
            label,
        ),
        failures: counters(
            &name("failures"),
            &format!("Total number of snapshot {help} failures"),
            label,
        ),
        duration: HistogramVec::new(
            HistogramOpts::new(
                name("total_duration_seconds"),
                format!("Total latency distributions of v3 snapshot {help}"),
            )
            .buckets(buckets),
            &[label],
        )
        .expect("a valid metric"),
        inflights: IntGaugeVec::new(
            Opts::new(
                name("inflights_total"),
                format!("Total number of inflight snapshot {help}"),
            ),
            &[label],
        )
        .expect("a valid metric"),
    }
}

pub static SNAPSHOT_SEND: LazyLock<SnapshotMetrics> =
    LazyLock::new(|| snapshot_metrics("send", "To", "sends"));

pub static SNAPSHOT_RECEIVE: LazyLock<SnapshotMetrics> =
    LazyLock::new(|| snapshot_metrics("receive", "From", "receives"));

/// gRPC message bytes from and to the clients (the request and response
/// bodies on the client URLs' HTTP/2 connections, length prefixes included).
pub static CLIENT_GRPC_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients.",
    )
});

pub static CLIENT_GRPC_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients.",
    )
});

/// The state store's requests, as etcd's mvcc counts them: each range read
/// (a Range, or a range inside a Txn), each put and each delete-range
/// applied (on every member, as etcd counts at apply).
pub static MVCC_RANGE: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_mvcc_range_total",
        "Total number of ranges seen by this member.",
    )
});

pub static MVCC_PUT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_mvcc_put_total",
        "Total number of puts seen by this member.",
    )
});

pub static MVCC_DELETE: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_mvcc_delete_total",
        "Total number of deletes seen by this member.",
    )
});

/// Transactions of more than one operation, as etcd 3.4's mvcc counts
/// them (see [`txn_applied`]); under both of etcd 3.4's names.
pub static MVCC_TXN: LazyLock<[IntCounter; 2]> = LazyLock::new(|| {
    ["etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total"]
        .map(|name| counter(name, "Total number of txns seen by this member."))
});

/// Counts a Txn request applied that evaluated `compares` compares and ran
/// `ops` range, put and delete-range ops (nested txns' included). etcd 3.4
/// evaluates compares as range reads (counted in `etcd_mvcc_range_total`)
/// and counts a txn per mvcc transaction of more than one operation: a
/// read-only Txn is one transaction (compares and ranges), a writing Txn
/// two (its compares, then its ops).
pub fn txn_applied(compares: usize, ops: usize, read_only: bool) {
    MVCC_RANGE.inc_by(compares as u64);
    let txns = txns_counted(compares, ops, read_only);
    for c in MVCC_TXN.iter() {
        c.inc_by(txns);
    }
}

fn txns_counted(compares: usize, ops: usize, read_only: bool) -> u64 {
    if read_only {
        u64::from(compares + ops > 1)
    } else {
        u64::from(compares > 1) + u64::from(ops > 1)
    }
}

/// The lessor's grants and revokes applied, renewals (keep-alives answered
/// by the primary) and the TTLs granted (etcd's buckets, 1 s doubling to
/// ~97 days).
pub struct LeaseMetrics {
    pub granted: IntCounter,
    pub revoked: IntCounter,
    pub renewed: IntCounter,
    pub ttl: Histogram,
}

pub static LEASE: LazyLock<LeaseMetrics> = LazyLock::new(|| {
    let name = |what: &str| format!("etcd_debugging_lease_{what}");
    let buckets = exponential_buckets(1.0, 2.0, 24).expect("valid buckets");
    LeaseMetrics {
        granted: counter(
            &name("granted_total"),
            "The total number of granted leases.",
        ),
        revoked: counter(
            &name("revoked_total"),
            "The total number of revoked leases.",
        ),
        renewed: counter(
            &name("renewed_total"),
            "The number of renewed leases seen by the leader.",
        ),
        ttl: Histogram::with_opts(
            HistogramOpts::new(name("ttl_total"), "Bucketed histogram of lease TTLs.")
                .buckets(buckets),
        )
        .expect("a valid metric"),
    }
});

/// The member's watchers, those of them catching up (the unsynced group)
/// and its gRPC watch streams, as the broadcaster last left them.
pub struct WatchMetrics {
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,
    pub streams: IntGauge,
}

pub static WATCH: LazyLock<WatchMetrics> = LazyLock::new(|| {
    let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("a valid metric");
    WatchMetrics {
        watchers: gauge(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
        ),
        slow_watchers: gauge(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
        ),
        streams: gauge(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
        ),
    }
});

/// Applied requests that took longer than [`SLOW_APPLY`].
pub static SLOW_APPLIES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
    )
});

/// etcd's warnApplyDuration.
pub const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// Counts an apply that began at `started` if it took longer than [`SLOW_APPLY`].
pub fn applied_since(started: Instant) {
    if is_slow(started) {
        SLOW_APPLIES.inc();
    }
}

fn is_slow(started: Instant) -> bool {
    started.elapsed() > SLOW_APPLY
}

/// 1 while this member's raft stream to a peer is up (labels `Local` and
/// `Remote`, the member ids in hex).
pub static ACTIVE_PEERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "etcd_network_active_peers",
            "The current number of active peer connections.",
        ),
        &["Local", "Remote"],
    )
    .expect("a valid metric")
});

/// Marks the link from `local` to `remote` up (or down).
pub fn peer_active(local: u64, remote: u64, up: bool) {
    ACTIVE_PEERS
        .with_label_values(&[&format!("{local:x}"), &format!("{remote:x}")])
        .set(i64::from(up));
}

/// Forgets the link from `local` to `remote` (stopped: member removed).
pub fn peer_gone(local: u64, remote: u64) {
    let _ = ACTIVE_PEERS.remove_label_values(&[&format!("{local:x}"), &format!("{remote:x}")]);
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("a valid metric")
}

fn counters(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric")
}

/// Registers every metric of this module in `registry` (`/metrics`).
pub fn register(registry: &Registry) {
    let mut all: Vec<Box<dyn prometheus::core::Collector>> = vec![
        Box::new(WAL_FSYNC.clone()),
        Box::new(BACKEND_COMMIT.clone()),
        Box::new(PEER_SENT.clone()),
        Box::new(PEER_RECEIVED.clone()),
        Box::new(PEER_SENT_FAILURES.clone()),
        Box::new(PEER_RECEIVED_FAILURES.clone()),
        Box::new(PEER_RTT.clone()),
        Box::new(CLIENT_GRPC_RECEIVED.clone()),
        Box::new(CLIENT_GRPC_SENT.clone()),
        Box::new(MVCC_RANGE.clone()),
        Box::new(MVCC_PUT.clone()),
        Box::new(MVCC_DELETE.clone()),
        Box::new(MVCC_TXN[0].clone()),
        Box::new(MVCC_TXN[1].clone()),
        Box::new(LEASE.granted.clone()),
        Box::new(LEASE.revoked.clone()),
        Box::new(LEASE.renewed.clone()),
        Box::new(LEASE.ttl.clone()),
        Box::new(WATCH.watchers.clone()),
        Box::new(WATCH.slow_watchers.clone()),
        Box::new(WATCH.streams.clone()),
        Box::new(SLOW_APPLIES.clone()),
        Box::new(ACTIVE_PEERS.clone()),
    ];
    for s in [&*SNAPSHOT_SEND, &*SNAPSHOT_RECEIVE] {
        all.push(Box::new(s.success.clone()));
        all.push(Box::new(s.failures.clone()));
        all.push(Box::new(s.duration.clone()));
        all.push(Box::new(s.inflights.clone()));
    }
    for metric in all {
        registry
            .register(metric)
            .expect("each metric registered once");
    }
}

/// Counts one failure with member `peer` (sent or received).
pub fn peer_failure(counter: &IntCounterVec, peer: u64) {
    counter.with_label_values(&[&format!("{peer:x}")]).inc();
}

/// Counts `bytes` sent to (or received from) member `peer`.
pub fn peer_bytes(counter: &IntCounterVec, peer: u64, bytes: usize) {
    counter
        .with_label_values(&[&format!("{peer:x}")])
        .inc_by(bytes as u64);
}

/// Runs `work` and observes how long it took in `histogram`.
pub fn timed<T>(histogram: &Histogram, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = work();
    histogram.observe(started.elapsed().as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_work_is_observed_once() {
        let h = histogram("t_seconds", "test");
        assert_eq!(timed(&h, || 7), 7);
        assert_eq!(h.get_sample_count(), 1);
    }

    #[test]
    fn txns_are_counted_as_etcd_counts_them() {
        // (compares, ops, read-only) → txns, as etcd 3.4.23 counted them.
        for (compares, ops, read_only, txns) in [
            (0, 1, false, 0), // one put
            (1, 1, false, 0), // compare, put: two transactions of one op
            (0, 1, true, 0),  // one range
            (1, 1, true, 1),  // compare, range: one transaction of two
            (0, 2, false, 1), // two puts
            (1, 0, true, 0),  // a compare alone
            (2, 2, false, 2),
        ] {
            assert_eq!(
                txns_counted(compares, ops, read_only),
                txns,
                "{compares} compares, {ops} ops, read-only {read_only}"
            );
        }
    }

    #[test]
    fn only_applies_over_etcds_warning_duration_are_slow() {
        assert!(!is_slow(Instant::now()));
        let long_ago = Instant::now()
            .checked_sub(SLOW_APPLY * 2)
            .expect("an instant 200 ms back");
        assert!(is_slow(long_ago));
    }

    #[test]
    fn a_peer_link_is_one_while_up_and_gone_once_stopped() {
        let series = || {
            let r = Registry::new();
            r.register(Box::new(ACTIVE_PEERS.clone()))
                .expect("registered");
            let mut text = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut text)
                .expect("encoded");
            String::from_utf8(text).expect("text")
        };
        let this = r#"etcd_network_active_peers{Local="a1",Remote="b2"}"#;
        peer_active(0xa1, 0xb2, true);
        assert!(series().contains(&format!("{this} 1")));
        peer_active(0xa1, 0xb2, false);
        assert!(series().contains(&format!("{this} 0")));
        peer_gone(0xa1, 0xb2);
        assert!(!series().contains(this));
    }
}
