//! Auto-compaction (`--auto-compaction-mode` / `--auto-compaction-retention`),
//! proposing ordinary Compact requests through raft, as etcd's compactor does.
//!
//! * `revision N`: every 5 minutes, compact to `current - N`.
//! * `periodic D`: sample the current revision at a fixed interval (D when
//!   D < 1 h, else D / 10) and compact to the newest sample at least D old,
//!   so the last D of history stays readable.
//!
//! Every member plans; only the leader proposes (etcd pauses the compactor
//! on followers).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::AutoCompaction;
use crate::error::EtcdError;
use crate::msg::RaftClient;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::CompactionRequest;

const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Decides compaction targets; no I/O, so tests drive it with made-up times.
pub struct Planner {
    mode: AutoCompaction,
    /// (when, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Instant, i64)>,
    /// The last revision this planner compacted to.
    last: i64,
}

impl Planner {
    pub fn new(mode: AutoCompaction) -> Planner {
        Planner {
            mode,
            samples: VecDeque::new(),
            last: 0,
        }
    }

    /// How often `next_target` should be called.
    pub fn interval(&self) -> Duration {
        match self.mode {
            AutoCompaction::Revision(_) => REVISION_MODE_INTERVAL,
            AutoCompaction::Periodic(d) if d < Duration::from_secs(3600) => d,
            AutoCompaction::Periodic(d) => d / 10,
        }
    }

    /// The revision to compact to now, if any.
    pub fn next_target(&mut self, now: Instant, current: i64) -> Option<i64> {
        let target = match self.mode {
            AutoCompaction::Revision(keep) => current - keep,
            AutoCompaction::Periodic(keep) => {
                self.samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(at, rev)) = self.samples.front() {
                    if now.duration_since(at) < keep {
                        break;
                    }
                    target = rev;
                    self.samples.pop_front();
                }
                target
            }
        };
        if target > self.last && target > 0 {
            self.last = target;
            Some(target)
        } else {
            None
        }
    }
}

/// Runs until the process exits.
pub async fn run(mode: AutoCompaction, store: Arc<Store>, raft: RaftClient) {
    let mut planner = Planner::new(mode);
    let mut ticker = tokio::time::interval(planner.interval());
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(revision) = planner.next_target(Instant::now(), store.current_revision()) else {
            continue;
        };
        // As etcd: only the leader compacts (every member keeps sampling,
        // so a new leader knows the history). The planner then waits for a
        // later target; the leader's compaction reaches everyone anyway.
        if !raft.is_leader() {
            continue;
        }
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        match raft
            .propose(crate::proto::cairnpb::internal_request::Request::Compaction(req))
            .await
        {
            Ok(_) => tracing::info!(revision, "auto-compaction done"),
            // Someone compacted further already: nothing to do.
            Err(EtcdError::Compacted) => {}
            Err(e) => tracing::warn!(revision, cause = %e, "auto-compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut p = Planner::new(AutoCompaction::Revision(10));
        let t = Instant::now();
        assert_eq!(p.next_target(t, 5), None);
        assert_eq!(p.next_target(t, 25), Some(15));
        assert_eq!(
            p.next_target(t, 25),
            None,
            "no second compaction to the same revision"
        );
        assert_eq!(p.next_target(t, 40), Some(30));
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_seen_one_retention_ago() {
        let keep = Duration::from_secs(60);
        let mut p = Planner::new(AutoCompaction::Periodic(keep));
        assert_eq!(p.interval(), keep);
        let t0 = Instant::now();
        assert_eq!(p.next_target(t0, 100), None);
        assert_eq!(p.next_target(t0 + Duration::from_secs(30), 150), None);
        assert_eq!(p.next_target(t0 + Duration::from_secs(60), 200), Some(100));
        assert_eq!(p.next_target(t0 + Duration::from_secs(95), 260), Some(150));
        assert_eq!(
            Planner::new(AutoCompaction::Periodic(Duration::from_secs(7200))).interval(),
            Duration::from_secs(720)
        );
    }
}
