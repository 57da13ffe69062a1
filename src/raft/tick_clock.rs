//! How late RaftNode's ticks fire: the measure of whether anything blocks
//! the raft thread. A tick that fires late means heartbeats went out late
//! (followers may start an election) and peer messages waited.
//!
//! Lateness is `elapsed since the previous tick - tick interval`. A tick
//! late by more than two intervals is logged at once (etcd warns the same
//! way about heartbeats it sent late); every [`SUMMARY_EVERY`] a summary
//! (p50, p99, max) is logged at debug level (`RUST_LOG=cairn::raft=debug`),
//! which is how docs/performance.md measures it.

use std::time::{Duration, Instant};

/// How often the lateness summary is logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Bucket upper bounds in microseconds: 0.1 ms, 0.25, 0.5, 1, 2.5, 5, 10,
/// 25, 50, 100, 250, 500, 1000 ms, then everything above.
const BOUNDS_US: [u64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Tick lateness since the last summary.
#[derive(Debug)]
pub struct TickClock {
    interval: Duration,
    last: Option<Instant>,
    since: Instant,
    counts: [u64; BOUNDS_US.len() + 1],
    max: Duration,
}

/// A summary of tick lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lateness {
    pub ticks: u64,
    /// Upper bounds of the buckets holding the median and the 99th percentile.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl TickClock {
    pub fn new(interval: Duration, now: Instant) -> TickClock {
        TickClock {
            interval,
            last: None,
            since: now,
            counts: [0; BOUNDS_US.len() + 1],
            max: Duration::ZERO,
        }
    }

    /// Records a tick at `now`; returns its lateness.
    pub fn tick(&mut self, now: Instant) -> Duration {
        let late = match self.last.replace(now) {
            Some(prev) => now
                .saturating_duration_since(prev)
                .saturating_sub(self.interval),
            None => Duration::ZERO,
        };
        let us = late.as_micros() as u64;
        let bucket = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[bucket] += 1;
        self.max = self.max.max(late);
        late
    }

    /// The summary since the last one, if [`SUMMARY_EVERY`] has passed;
    /// starts a new window.
    pub fn summary(&mut self, now: Instant) -> Option<Lateness> {
        if now.saturating_duration_since(self.since) < SUMMARY_EVERY {
            return None;
        }
        let out = self.lateness();
        self.counts = [0; BOUNDS_US.len() + 1];
        self.max = Duration::ZERO;
        self.since = now;
        out
    }

    fn lateness(&self) -> Option<Lateness> {
        let ticks: u64 = self.counts.iter().sum();
        if ticks == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((ticks as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return BOUNDS_US
                        .get(i)
                        .map_or(self.max, |b| Duration::from_micros(*b).min(self.max));
                }
            }
            self.max
        };
        Some(Lateness {
            ticks,
            p50: at(0.5),
            p99: at(0.99),
            max: self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_measured_against_the_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = TickClock::new(ms(100), t0);
        assert_eq!(
            c.tick(t0),
            Duration::ZERO,
            "the first tick has nothing to be late to"
        );
        let mut now = t0;
        for _ in 0..98 {
            now += ms(100);
            assert_eq!(c.tick(now), Duration::ZERO);
        }
        now += ms(130); // one tick 30 ms late
        assert_eq!(c.tick(now), ms(30));
        assert!(c.summary(t0 + ms(5)).is_none(), "not yet");
        let s = c.summary(t0 + SUMMARY_EVERY).expect("summary");
        assert_eq!(s.ticks, 100);
        // Percentiles are bucket bounds: on time is "at most 0.1 ms late".
        let on_time = Duration::from_micros(100);
        assert_eq!(s.p50, on_time);
        assert_eq!(
            s.p99, on_time,
            "one late tick in 100 is the 100th percentile"
        );
        assert_eq!(s.max, ms(30));
        assert!(
            c.summary(t0 + SUMMARY_EVERY * 2).is_none(),
            "a new, empty window"
        );
    }

    #[test]
    fn the_p99_reports_its_bucket() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = TickClock::new(ms(10), t0);
        let mut now = t0;
        c.tick(now);
        for i in 0..100 {
            now += if i % 10 == 0 { ms(17) } else { ms(10) }; // every 10th tick 7 ms late
            c.tick(now);
        }
        let s = c.summary(t0 + SUMMARY_EVERY).expect("summary");
        assert_eq!(s.p99, ms(7).min(Duration::from_micros(10_000)), "{s:?}");
        assert_eq!(s.max, ms(7));
    }
}
