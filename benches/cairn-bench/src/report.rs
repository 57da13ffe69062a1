//! What one load run measured: a latency histogram while it runs, a
//! [`Report`] when it is done, printed as a human table or as JSON.
//!
//! Latencies go into an HDR histogram in microseconds (1 µs to 10 min, three
//! significant digits), one per client task, merged at the end, so recording
//! costs no lock on the hot path and percentiles are exact to 0.1 %.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The slowest latency the histogram can hold; slower samples are clamped.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram (microseconds).
#[derive(Clone, Debug)]
pub struct Latencies {
    /// The samples, in microseconds.
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one sample (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_MICROS);
        self.hist.saturating_record(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The summary a report carries (all zero if there is no sample).
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            avg: self.hist.mean() / 1000.0,
            p50: ms(self.hist.value_at_quantile(0.50)),
            p90: ms(self.hist.value_at_quantile(0.90)),
            p99: ms(self.hist.value_at_quantile(0.99)),
            p999: ms(self.hist.value_at_quantile(0.999)),
            max: ms(self.hist.max()),
            min: ms(self.hist.min()),
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub avg: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub min: f64,
}

/// The result of one scenario run against one server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario as named on the command line (`put`, `watch`, ...).
    pub scenario: String,
    /// The endpoints driven.
    pub endpoints: Vec<String>,
    /// Concurrent clients (or watch/keep-alive streams) and connections.
    pub clients: usize,
    pub conns: usize,
    /// Operations that succeeded, in the scenario's unit (requests; keys for
    /// a load; event deliveries for watch; keep-alives for lease).
    pub ops: u64,
    /// Failed operations plus detected violations (e.g. a missing watch
    /// event). A correct run has none.
    pub errors: u64,
    /// Up to [`MAX_ERROR_SAMPLES`] distinct error texts, with their counts.
    pub error_samples: BTreeMap<String, u64>,
    /// Wall-clock time of the measured phase, in seconds.
    pub elapsed_s: f64,
    /// `ops / elapsed_s`.
    pub throughput: f64,
    /// Per-operation latency (watch: delivery latency).
    pub latency_ms: LatencySummary,
    /// Successful operations by kind (e.g. `read`/`write`, `cas-ok`/`cas-conflict`).
    pub outcomes: BTreeMap<String, u64>,
    /// Scenario-specific figures (e.g. `restart_ms`, `peak_rss_kib`).
    pub extra: BTreeMap<String, f64>,
}

/// How many distinct error texts a report keeps.
pub const MAX_ERROR_SAMPLES: usize = 8;

impl Report {
    /// Counts one error, keeping its text if it is one of the first few kinds.
    pub fn add_error(&mut self, text: impl Into<String>) {
        add_error_sample(&mut self.error_samples, &mut self.errors, text.into());
    }

    /// Adds `count` errors whose first kinds are `samples` (from a client task).
    pub fn merge_errors(&mut self, count: u64, samples: BTreeMap<String, u64>) {
        self.errors += count;
        for (text, n) in samples {
            if let Some(m) = self.error_samples.get_mut(&text) {
                *m += n;
            } else if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.insert(text, n);
            }
        }
    }

    /// Prints a one-row table; see [`table`].
    pub fn to_table(&self) -> String {
        table(std::slice::from_ref(self))
    }
}

/// Counts an error into `count` and keeps its text in `samples` if there is room.
pub fn add_error_sample(samples: &mut BTreeMap<String, u64>, count: &mut u64, text: String) {
    *count += 1;
    let text = if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    } else {
        text
    };
    if let Some(n) = samples.get_mut(&text) {
        *n += 1;
    } else if samples.len() < MAX_ERROR_SAMPLES {
        samples.insert(text, 1);
    }
}

/// A human table of reports: one row each, then outcomes, extras and errors.
pub fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>6} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "scenario", "ops", "errors", "secs", "ops/s", "avg ms", "p50", "p90", "p99", "max"
    );
    for r in reports {
        let l = r.latency_ms;
        out.push_str(&format!(
            "{:<16} {:>9} {:>6} {:>8.2} {:>11.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            r.scenario,
            r.ops,
            r.errors,
            r.elapsed_s,
            r.throughput,
            l.avg,
            l.p50,
            l.p90,
            l.p99,
            l.max
        ));
    }
    for r in reports {
        let mut notes = Vec::new();
        if !r.outcomes.is_empty() {
            let o: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            notes.push(o.join(" "));
        }
        if !r.extra.is_empty() {
            let e: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
            notes.push(e.join(" "));
        }
        if !notes.is_empty() {
            out.push_str(&format!("  {}: {}\n", r.scenario, notes.join("; ")));
        }
        for (text, n) in &r.error_samples {
            out.push_str(&format!("  {} error ×{n}: {text}\n", r.scenario));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(l.len(), 100);
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.avg - 50.5).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn merge_adds_samples_and_empty_is_zero() {
        let mut a = Latencies::new();
        assert_eq!(a.summary(), LatencySummary::default());
        let mut b = Latencies::new();
        b.record(Duration::from_micros(10));
        a.merge(&b);
        a.merge(&b);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn error_samples_are_bounded_but_all_errors_count() {
        let mut r = Report::default();
        for i in 0..20 {
            r.add_error(format!("e{i}"));
        }
        r.add_error("e0");
        assert_eq!(r.errors, 21);
        assert_eq!(r.error_samples.len(), MAX_ERROR_SAMPLES);
        assert_eq!(r.error_samples["e0"], 2);
    }
}
