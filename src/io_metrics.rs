//! etcd's disk and peer network metrics: the latency histograms
//! `etcd_disk_wal_fsync_duration_seconds` (the raft log's synced write per
//! Ready, `raft::LogStore::persist`) and
//! `etcd_disk_backend_commit_duration_seconds` (the state store's flush,
//! Storage's `maybe_flush`), with etcd's buckets (1 ms doubling to ~8 s);
//! the counters `etcd_network_peer_sent_bytes_total{To}` and
//! `etcd_network_peer_received_bytes_total{From}` (raft messages' bytes on
//! the peer links, `peer::link` and `peer::service`).
//!
//! Observed where the work happens, registered in `/metrics` by
//! `http::metrics`; they depend on nothing else in cairn, so the raft,
//! storage and peer code need no handle to the HTTP side. An observation
//! is a few atomic adds, next to an fsync or a network write.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounterVec, Opts};

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
}
