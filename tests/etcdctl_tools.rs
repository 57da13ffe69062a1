//! etcdctl's operator tools against the server under test:
//!
//! - `make-mirror`: copies a prefix from one cluster to another (a paged
//!   Range at one revision, then a Watch from the next one, each response
//!   written to the destination as one Txn), and keeps following it;
//! - `check perf`: a minute of rate-limited puts from 50 clients, then the
//!   prefix deleted and, with `--auto-compact` / `--auto-defrag`, the store
//!   compacted at that revision and defragmented.
//!
//! `CAIRN_TEST_SERVER=etcd cargo test --test etcdctl_tools` runs the same
//! against etcd 3.4.

mod common;

use std::time::Duration;

use common::{etcdctl, etcdctl_ok, wait_until, Background, Kind, Server};

/// `get --prefix` on `server`: keys and values, one per line, in key order.
fn prefix(server: &Server, p: &str) -> String {
    etcdctl_ok(server, &["get", "--prefix", p])
}

#[test]
fn make_mirror_copies_a_prefix_and_follows_its_changes() {
    let source = Server::start(Kind::Cairn);
    let dest = Server::start(Kind::Cairn);
    for i in 0..120 {
        etcdctl_ok(&source, &["put", &format!("m/{i:03}"), &format!("v{i}")]);
    }
    // Overwritten and deleted before the mirror starts: only the latest
    // state is copied.
    etcdctl_ok(&source, &["put", "m/000", "first"]);
    etcdctl_ok(&source, &["del", "m/001"]);
    etcdctl_ok(&source, &["put", "elsewhere", "not mirrored"]);
    let want = prefix(&source, "m/");
    assert_eq!(want.lines().count(), 2 * 119, "{want}");

    let mirror = Background::start(
        &source,
        &["make-mirror", "--prefix", "m/", &dest.endpoint()],
    );
    let deadline = Duration::from_secs(20);
    assert!(
        wait_until(deadline, || prefix(&dest, "m/") == want),
        "the destination never held the source's keys: {:?}\n{}",
        prefix(&dest, "m/"),
        mirror.output()
    );

    // Changes made while it runs: a put, an overwrite, a delete, a txn.
    etcdctl_ok(&source, &["put", "m/new", "later"]);
    etcdctl_ok(&source, &["put", "m/005", "changed"]);
    etcdctl_ok(&source, &["del", "m/007"]);
    let txn = etcdctl(
        &source,
        &["txn"],
        Some(&b"\nput m/txn-a a\nput m/txn-b b\ndel m/010\n\n\n"[..]),
    );
    assert!(txn.status.success(), "{txn:?}");
    let want = prefix(&source, "m/");
    assert!(
        want.contains("m/txn-b\nb\n") && !want.contains("m/010\n"),
        "{want}"
    );
    assert!(
        wait_until(deadline, || prefix(&dest, "m/") == want),
        "the destination did not follow the changes: {:?}\n{}",
        prefix(&dest, "m/"),
        mirror.output()
    );
    assert_eq!(
        etcdctl_ok(&dest, &["get", "elsewhere"]),
        "",
        "a key outside the prefix was mirrored"
    );
}

#[test]
fn check_perf_passes_and_leaves_the_store_compacted() {
    let server = Server::start(Kind::Cairn);
    let before = etcdctl_ok(&server, &["put", "before", "x"]);
    assert_eq!(before, "OK\n");
    // 60 s of puts, then the delete, compaction and defragment.
    let mut check = Background::start(
        &server,
        &[
            "check",
            "perf",
            "--load",
            "s",
            "--auto-compact",
            "--auto-defrag",
        ],
    );
    let status = check.wait_for(Duration::from_secs(180));
    let out = check.output();
    assert!(
        status.is_some(),
        "check perf did not finish in 180 s\n{out}"
    );
    let stdout = check.stdout();
    assert!(!stdout.contains("FAIL: too many errors"), "{out}");
    // The 150 puts/s of load `s`, sustained (etcdctl wants 90% of it).
    let throughput: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PASS: Throughput is "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no passing throughput line\n{out}"));
    assert!(throughput >= 135, "{throughput} writes/s\n{out}");
    for line in ["Slowest request took", "Stddev is"] {
        assert!(stdout.contains(line), "no {line:?} line\n{out}");
    }
    assert!(stdout.contains("Compacted with revision"), "{out}");
    assert!(stdout.contains("Defragmented \""), "{out}");
    // Its keys are gone, ours is not, and history before the delete is
    // compacted away.
    assert_eq!(prefix(&server, "/etcdctl-check-perf/"), "");
    assert_eq!(etcdctl_ok(&server, &["get", "before"]), "before\nx\n");
    let old = etcdctl(&server, &["get", "before", "--rev", "2"], None);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"),
        "{old:?}"
    );
}
