//! Smoke tests of `cairn-bench`: every scenario runs a few hundred
//! operations against a real test server and must finish with exactly the
//! operations asked for, zero errors, and (watch, with one writer and with
//! concurrent writers) no missing or out-of-order event. Timing is never
//! asserted: these prove the instruments work, the figures come from
//! `cairn-bench compare` (docs/performance.md).
//!
//! The Watch and Lease scenarios run against real etcd (`*_against_etcd`)
//! as well as cairn, so the checker itself is proven on a reference server.
//!
//! The servers are started by the `cairn` package's test harness, shared
//! rather than copied. It finds the `cairn` binary in the workspace target
//! dir (`cargo test --workspace` builds it; run `cargo build --bin cairn`
//! before `cargo test -p cairn-bench` alone) and etcd at `/usr/bin/etcd`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use cairn_bench::kv::{CasOpts, Consistency, MixedOpts, PutOpts, RangeOpts};
use cairn_bench::lease::LeaseOpts;
use cairn_bench::watch::WatchOpts;
use cairn_bench::{run, BenchError, Load, Report, Scenario};
use common::{Kind, Server};

/// Runs `scenario` against `server` with `clients` clients over 2
/// connections and `total` operations, on a multi-thread runtime.
fn bench(
    server: &Server,
    scenario: Scenario,
    clients: usize,
    total: u64,
) -> Result<Report, BenchError> {
    let load = Load {
        endpoints: vec![server.endpoint()],
        conns: 2,
        clients,
        total,
        max_duration: Duration::from_secs(60),
        progress: false,
        timeline: false,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(&load, &scenario))
}

/// The checks every load run must pass.
fn assert_clean(r: &Report, ops: u64) {
    assert_eq!(r.errors, 0, "errors: {:?}", r.error_samples);
    assert_eq!(r.ops, ops, "{r:?}");
    assert!(
        r.throughput > 0.0 && r.latency_ms.max >= r.latency_ms.p50,
        "{r:?}"
    );
}

#[test]
fn put_against_cairn() {
    let s = Server::start(Kind::Cairn);
    let r = bench(&s, Scenario::Put(PutOpts::default()), 8, 300).expect("put");
    assert_clean(&r, 300);
    assert_eq!(r.outcomes["put"], 300);
    let seq = PutOpts {
        sequential_keys: true,
        key_space: 50,
        ..Default::default()
    };
    assert_clean(&bench(&s, Scenario::Put(seq), 4, 200).expect("put"), 200);
}

#[test]
fn range_against_cairn() {
    let s = Server::start(Kind::Cairn);
    struct Case {
        consistency: Consistency,
        limit: i64,
    }
    for c in [
        Case {
            consistency: Consistency::L,
            limit: 0,
        },
        Case {
            consistency: Consistency::S,
            limit: 0,
        },
        Case {
            consistency: Consistency::L,
            limit: 20,
        },
    ] {
        let opts = RangeOpts {
            keys: 300,
            consistency: c.consistency,
            limit: c.limit,
            ..Default::default()
        };
        let r = bench(&s, Scenario::Range(opts), 8, 300).expect("range");
        assert_clean(&r, 300);
    }
}

#[test]
fn txn_cas_against_cairn() {
    let s = Server::start(Kind::Cairn);
    // One key per client: every swap succeeds after the first sight of the key.
    let r = bench(&s, Scenario::TxnCas(CasOpts::default()), 4, 300).expect("txn-cas");
    assert_clean(&r, 300);
    assert_eq!(
        r.outcomes.get("cas-conflict").copied().unwrap_or(0),
        0,
        "{r:?}"
    );
    // Shared keys: conflicts happen and are answered, not errors.
    let shared = CasOpts {
        key_space: 2,
        ..Default::default()
    };
    let r = bench(&s, Scenario::TxnCas(shared), 8, 300).expect("txn-cas");
    assert_clean(&r, 300);
    assert_eq!(r.outcomes.values().sum::<u64>(), 300);
}

#[test]
fn mixed_against_cairn() {
    let s = Server::start(Kind::Cairn);
    let opts = MixedOpts {
        keys: 200,
        read_ratio: 0.5,
        ..Default::default()
    };
    let r = bench(&s, Scenario::Mixed(opts), 8, 400).expect("mixed");
    assert_clean(&r, 400);
    assert!(r.outcomes["read"] > 0 && r.outcomes["write"] > 0, "{r:?}");
}

fn watch_opts() -> WatchOpts {
    WatchOpts {
        watchers: 20,
        streams: 4,
        puts: 150,
        rate: 0,
        ..Default::default()
    }
}

fn assert_watch_clean(r: &Report) {
    assert_clean(r, 20 * 150);
    assert_eq!(r.outcomes["puts"], 150);
    assert_eq!(r.extra["violations"], 0.0);
}

/// `watch-sat`'s shape, small: concurrent writers as fast as they go, whose
/// revisions interleave; every watcher must still get all of them, in order.
fn watch_writers_opts() -> WatchOpts {
    WatchOpts {
        watchers: 20,
        streams: 4,
        puts: 300,
        rate: 0,
        writers: 8,
        ..Default::default()
    }
}

fn assert_watch_writers_clean(r: &Report) {
    assert_clean(r, 20 * 300);
    assert_eq!(r.outcomes["puts"], 300);
    assert_eq!(r.extra["writers"], 8.0);
    assert_eq!(r.extra["violations"], 0.0);
    assert!(r.extra["puts_per_s"] > 0.0, "{r:?}");
}

#[test]
fn watch_against_etcd() {
    let s = Server::start(Kind::Etcd);
    assert_watch_clean(&bench(&s, Scenario::Watch(watch_opts()), 1, 0).expect("watch"));
    let r = bench(&s, Scenario::Watch(watch_writers_opts()), 1, 0).expect("watch");
    assert_watch_writers_clean(&r);
}

#[test]
fn watch_against_cairn() {
    let s = Server::start(Kind::Cairn);
    assert_watch_clean(&bench(&s, Scenario::Watch(watch_opts()), 1, 0).expect("watch"));
    let r = bench(&s, Scenario::Watch(watch_writers_opts()), 1, 0).expect("watch");
    assert_watch_writers_clean(&r);
}

fn lease_opts() -> LeaseOpts {
    LeaseOpts {
        leases: 10,
        streams: 3,
        ttl: 60,
    }
}

fn assert_lease_clean(r: &Report) {
    assert_clean(r, 300);
    assert_eq!(r.outcomes["grants"], 10);
}

#[test]
fn lease_against_etcd() {
    let s = Server::start(Kind::Etcd);
    assert_lease_clean(&bench(&s, Scenario::Lease(lease_opts()), 1, 300).expect("lease"));
}

#[test]
fn lease_against_cairn() {
    let s = Server::start(Kind::Cairn);
    assert_lease_clean(&bench(&s, Scenario::Lease(lease_opts()), 1, 300).expect("lease"));
}

fn cairn_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
}

#[test]
fn cli_prints_a_json_report() {
    let s = Server::start(Kind::Cairn);
    let out = cairn_bench()
        .args([
            "put",
            "--endpoints",
            &s.endpoint(),
            "--clients",
            "4",
            "--conns",
            "2",
            "--total",
            "200",
            "--json",
        ])
        .output()
        .expect("run cairn-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["scenario"], "put");
    assert_eq!(v["ops"], 200);
    assert_eq!(v["errors"], 0);
    assert!(v["latency_ms"]["p99"].as_f64().expect("p99") > 0.0);
}

#[test]
fn compare_runs_every_kind_of_scenario_and_writes_its_outputs() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = cairn_bench()
        .args([
            "compare",
            "--rounds",
            "1",
            "--ops",
            "200",
            "--clients",
            "8",
            "--conns",
            "2",
        ])
        .args([
            "--scenarios",
            "put,put-clients,load-100k,restart-1m",
            "--sweep",
            "1,4",
        ])
        .args(["--load-keys", "500", "--restart-keys", "1000", "--quiet"])
        .arg("--cairn-bin")
        .arg(common::cairn_path())
        .arg("--etcd-bin")
        .arg(common::etcd_path())
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run cairn-bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary JSON");
    let scenarios = summary["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["put", "put@c1", "put@c4", "load-100k", "restart-1m"]
    );
    for s in scenarios {
        for side in ["etcd", "cairn"] {
            assert_eq!(s[side]["runs"], 1, "{s}");
            assert_eq!(s[side]["errors"], 0, "{s}");
            assert!(s[side]["peak_rss_mib"].as_f64().expect("rss") > 0.0, "{s}");
        }
        assert!(s["throughput_ratio"].as_f64().is_some(), "{s}");
    }
    let restart = &scenarios[4];
    for side in ["etcd", "cairn"] {
        assert_eq!(restart[side]["extra"]["keys_loaded"], 1000.0, "{restart}");
        assert!(
            restart[side]["extra"]["restart_ms"]
                .as_f64()
                .expect("restart_ms")
                > 0.0
        );
    }
    assert!(scenarios[3]["cairn"]["extra"].get("peak_rss_kib").is_some());
    let svg = std::fs::read_to_string(out_dir.path().join("put-clients.svg")).expect("chart");
    assert!(svg.starts_with("<svg") && svg.contains("cairn"));
    assert_eq!(
        std::fs::read_dir(out_dir.path().join("rounds"))
            .expect("rounds")
            .count(),
        10
    );
    assert!(stdout.contains("restart_ms"), "{stdout}");
}

#[test]
fn compare_runs_three_member_clusters_of_both_servers() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = cairn_bench()
        .args(["compare", "--members", "3", "--rounds", "1", "--ops", "200"])
        .args(["--clients", "8", "--conns", "3"])
        .args(["--scenarios", "put,put-leader,range-l-follower,catchup"])
        .args(["--catchup-keys", "2000", "--quiet"])
        .arg("--cairn-bin")
        .arg(common::cairn_path())
        .arg("--etcd-bin")
        .arg(common::etcd_path())
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run cairn-bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary JSON");
    let scenarios = summary["scenarios"].as_array().expect("scenarios");
    for s in scenarios {
        for side in ["etcd", "cairn"] {
            assert_eq!(s[side]["runs"], 1, "{s}");
            assert_eq!(s[side]["errors"], 0, "{s}");
        }
    }
    let catchup = &scenarios[3];
    assert_eq!(catchup["scenario"], "catchup");
    for side in ["etcd", "cairn"] {
        assert_eq!(catchup[side]["extra"]["keys_loaded"], 2000.0, "{catchup}");
        let ms = catchup[side]["extra"]["catchup_ms"]
            .as_f64()
            .expect("catchup_ms");
        assert!(ms > 0.0, "{catchup}");
    }
}

#[test]
fn compare_refuses_sizes_and_scenarios_it_cannot_run() {
    for args in [
        &["compare", "--members", "2"][..],
        &["compare", "--scenarios", "catchup"][..],
    ] {
        let out = cairn_bench()
            .args(args)
            .arg("--cairn-bin")
            .arg(common::cairn_path())
            .output()
            .expect("run cairn-bench");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--members 2") || stderr.contains("needs --members 3"),
            "{stderr}"
        );
    }
}
