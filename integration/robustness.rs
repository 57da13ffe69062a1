//! Robustness runs: real cairn members under faults, real etcd clients,
//! every operation and watch response recorded and checked afterwards for
//! linearizability (etcd's KV model) and etcd's watch guarantees
//! (docs/robustness.md; the checkers are the `cairn-robust` crate).
//!
//! In CI each scenario runs 8–25 s. `CAIRN_ROBUST_LONG=1` runs each for
//! 200 s; `CAIRN_ROBUST_SEED=<n>` replays a seed's choices (the faults'
//! timing still depends on the machine). A failed run writes its history
//! to `target/robustness/<scenario>-<seed>.history`.
//!
//! `etcd_passes_the_same_checks` runs real etcd 3.4 (`/usr/bin/etcd`) under
//! the same traffic and faults: the checkers' model must be etcd's.
//!
//! `checker_catches_stale_follower_reads` proves the pipeline can fail: a
//! test-only failpoint (`CAIRN_FAILPOINT_STALE_READS=1`) makes members serve
//! linearizable reads from local state without a read barrier, and a member
//! cut off from its peers then serves stale reads; the run must report a
//! linearizability violation. `checker_catches_leases_expiring_early` does the
//! same for the lease model (`CAIRN_FAILPOINT_EARLY_LEASE_EXPIRY=1`: leases
//! expire at half their TTL), and `checker_catches_leases_outliving_their_ttl`
//! for the final lease check (`CAIRN_FAILPOINT_LATE_LEASE_EXPIRY=1`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "robust/mod.rs"]
mod robust;

use robust::{Fault, Scenario};

/// One scenario at a time: each already loads the machine with its members,
/// clients and nemesis, and timing is part of what a scenario tests.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // A failed scenario poisons the lock; the next one still runs alone.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn assert_clean(s: &Scenario) {
    let _alone = serial();
    let outcome = robust::run(s);
    let summary = outcome.summary(s);
    eprintln!("{summary}");
    eprintln!("nemesis:\n{}", outcome.nemesis.join("\n"));
    assert!(outcome.ok(), "{summary}");
    assert!(
        outcome.linearizability.stats.acknowledged > 200,
        "too little traffic to prove anything: {summary}"
    );
    assert!(outcome.watch_events > 0, "no watch event: {summary}");
}

#[test]
fn one_member_kill_and_pause() {
    let mut s = Scenario::new(
        "one-member-kill-pause",
        1,
        &[Fault::KillRandom, Fault::Pause],
    )
    .lasting(15)
    .mixed();
    s.slow_watchers = true;
    assert_clean(&s);
}

#[test]
fn three_members_kill_random_leader_all_and_replace() {
    // Members snapshot every 50 entries and keep 20 for slow followers: a
    // member restarted after a kill, or replaced by a fresh one, catches
    // up from a raft snapshot.
    let mut s = Scenario::new(
        "three-members-kill-replace",
        3,
        &[
            Fault::KillLeader,
            Fault::Replace,
            Fault::KillRandom,
            Fault::KillAll,
        ],
    )
    .lasting(15);
    s.args = vec![
        "--snapshot-count",
        "50",
        "--experimental-snapshot-catchup-entries",
        "20",
    ];
    assert_clean(&s);
}

#[test]
fn three_members_pause_isolate_delay_and_move_leader() {
    let mut s = Scenario::new(
        "three-members-pause-isolate-delay-move",
        3,
        &[
            Fault::IsolateFollower,
            Fault::MoveLeader,
            Fault::Delay,
            Fault::Pause,
            Fault::IsolateLeader,
        ],
    )
    .lasting(15)
    .mixed();
    s.slow_watchers = true;
    assert_clean(&s);
}

/// Crashes inside cairn (`CAIRN_FAILPOINT_CRASH`, src/failpoint.rs) around
/// the raft log write, after apply, during physical compaction and while
/// the leader sends a snapshot (members snapshot every 50 entries, so a
/// follower that was down needs one), and a slow disk.
#[test]
fn three_members_crash_failpoints_and_slow_disk() {
    let mut s = Scenario::new(
        "three-members-failpoints",
        3,
        &[
            Fault::Crash("raft-before-save"),
            Fault::Crash("snapshot-send"),
            Fault::Crash("raft-after-save"),
            Fault::SlowDisk,
            Fault::Crash("storage-applied"),
            Fault::Crash("compact-delete"),
        ],
    )
    .lasting(25)
    .mixed();
    s.args = vec![
        "--snapshot-count",
        "50",
        "--experimental-snapshot-catchup-entries",
        "20",
    ];
    assert_clean(&s);
}

/// The network faults that close nothing: a member's peer traffic
/// silently swallowed (blackhole), and a panic inside a peer link's sender,
/// which must restart by itself while the member keeps serving.
#[test]
fn three_members_blackhole_and_link_panic() {
    let mut s = Scenario::new(
        "three-members-blackhole-link-panic",
        3,
        &[Fault::Blackhole, Fault::LinkPanic],
    )
    .lasting(10)
    .mixed();
    s.slow_watchers = true;
    assert_clean(&s);
}

#[test]
fn etcd_passes_the_same_checks() {
    // Evidence that the model is etcd's: real etcd 3.4 under the same
    // faults and traffic (every profile, leases included) must show no
    // anomaly either.
    let mut s = Scenario::new(
        "etcd-kill-isolate-pause",
        3,
        &[
            Fault::KillLeader,
            Fault::IsolateFollower,
            Fault::Delay,
            Fault::Blackhole,
            Fault::Pause,
        ],
    )
    .lasting(15)
    .mixed();
    s.etcd = true;
    s.slow_watchers = true;
    // etcd 3.4.23 answers RequestProgress for watchers that are still
    // catching up, with a revision whose events it has not sent yet: its
    // issue 15220, fixed by PR 15237 in later 3.4 releases. The watch
    // checker reports that (docs/robustness.md, Results), so the etcd run
    // does not ask for progress.
    s.progress_requests = false;
    assert_clean(&s);
}

/// Runs `s` (a cairn with a deliberate bug) and requires the checkers to
/// report it. Whether one run's history shows the bug depends on how its
/// traffic happens to meet it (which lease a client uses just after it
/// expired early, which read lands on the cut-off member), so a run that
/// shows nothing is followed by one more with the next seed; the checker
/// must catch the bug in one of the two. (Once in CI, with leases expiring
/// at half their TTL, a whole 10 s run showed nothing; nine runs with it
/// were caught, each within its first two seconds.)
fn assert_caught(s: &Scenario, what: &str) {
    let _alone = serial();
    let mut s = s.clone();
    let mut summaries = Vec::new();
    for attempt in 1..=2 {
        let outcome = robust::run(&s);
        let summary = outcome.summary(&s);
        eprintln!("{summary}");
        if !outcome.linearizability.is_linearizable() {
            let file = outcome
                .history_file
                .as_ref()
                .expect("a failed run writes its history");
            assert!(file.is_file(), "{} missing", file.display());
            return;
        }
        summaries.push(format!("attempt {attempt}: {summary}"));
        s.seed = s.seed.wrapping_add(1);
    }
    panic!(
        "{what}, yet both histories were judged linearizable: the checker cannot fail?\n{}",
        summaries.join("\n")
    );
}

#[test]
fn checker_catches_stale_follower_reads() {
    // A silent blackhole first (of a random member: a follower then
    // serves stale reads, a leader too until check-quorum demotes it),
    // then an isolated follower.
    let mut s = Scenario::new(
        "stale-follower-reads",
        3,
        &[Fault::Blackhole, Fault::IsolateFollower],
    )
    .lasting(10);
    s.env = vec![("CAIRN_FAILPOINT_STALE_READS", "1")];
    assert_caught(
        &s,
        "members serving reads without a read barrier, one of them cut off from its peers",
    );
}

/// `CAIRN_FAILPOINT_EARLY_LEASE_EXPIRY=1`: the lessor expires leases at
/// half their TTL. The lease clients' reads and the watches see keys
/// vanish before their lease could have expired.
#[test]
fn checker_catches_leases_expiring_early() {
    let mut s = Scenario::new("early-lease-expiry", 1, &[]).lasting(10);
    s.kv_clients = 1;
    s.lease_clients = 3;
    s.env = vec![("CAIRN_FAILPOINT_EARLY_LEASE_EXPIRY", "1")];
    assert_caught(&s, "leases expiring at half their TTL");
}

/// `CAIRN_FAILPOINT_LATE_LEASE_EXPIRY=1`: the lessor expires leases at four
/// times their TTL. The final lease check must find leases alive past the
/// latest moment they may expire.
#[test]
fn checker_catches_leases_outliving_their_ttl() {
    let _alone = serial();
    let mut s = Scenario::new("late-lease-expiry", 1, &[]).lasting(4);
    s.kv_clients = 1;
    s.lease_clients = 2;
    s.env = vec![("CAIRN_FAILPOINT_LATE_LEASE_EXPIRY", "1")];
    let outcome = robust::run(&s);
    let summary = outcome.summary(&s);
    eprintln!("{summary}");
    assert!(
        outcome.leases.iter().any(|v| v.contains("still alive")),
        "leases living four times their TTL, yet the final lease check found nothing: {summary}"
    );
}

/// A panic inside a peer link's sender (the restartable part of PeerLink,
/// src/supervise.rs), triggered on a running leader: the link restarts by
/// itself, the process does not exit, the member keeps serving reads and
/// writes, and its raft log keeps every entry (its raft index only grows,
/// every acknowledged write is on every member, HashKV agrees).
#[test]
fn a_peer_link_panic_restarts_the_link_and_the_member_serves_on() {
    use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn::proto::etcdserverpb::StatusRequest;
    let _alone = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let mut c = robust::cluster::Cluster::start(common::cairn_path(), 3, &[], &[], rt.handle());
    let leader = c.leader().expect("a leader");
    let url = c.members[leader].client_url();
    let status = |url: &str| {
        let url = url.to_string();
        rt.block_on(async move {
            let channel = robust::traffic::lazy_channel(&url).expect("channel");
            MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await
                .expect("status")
                .into_inner()
        })
    };
    let puts = |from: usize, to: usize| {
        rt.block_on(async {
            let channel = robust::traffic::lazy_channel(&url).expect("channel");
            let mut kv = cairn::proto::etcdserverpb::kv_client::KvClient::new(channel);
            for n in from..to {
                let put = cairn_robust::history::Request::Put {
                    key: format!("/robust/link/{n:04}"),
                    value: format!("v{n}"),
                };
                robust::traffic::execute(&mut kv, &put)
                    .await
                    .expect("a put through the member whose link panicked");
            }
        })
    };
    puts(0, 50);
    let before = status(&url);
    let panics =
        |c: &robust::cluster::Cluster| c.logs(leader).matches("peer link sender panicked").count();
    assert_eq!(panics(&c), 0, "no link panicked yet");
    let trigger = c.trigger(leader, "peer-link-send");
    // Writes make the leader's links send.
    let mut n = 50;
    let fired = common::wait_until(std::time::Duration::from_secs(10), || {
        puts(n, n + 5);
        n += 5;
        !trigger.exists()
    });
    assert!(fired, "the trigger was never consumed: no peer link sent");
    puts(n, n + 50);
    n += 50;
    assert!(
        !c.exited(leader),
        "the member exited after a peer link panic"
    );
    assert_eq!(panics(&c), 1, "one link panicked and was restarted");
    let logs = c.logs(leader);
    assert!(
        !logs.contains("fatal"),
        "the member logged a fatal error:\n{}",
        common::tail(&logs, 4_000)
    );
    let after = status(&url);
    assert!(
        after.raft_index >= before.raft_index + 55,
        "the raft log went from index {} to {}",
        before.raft_index,
        after.raft_index
    );
    // Every member has every write, and agrees on the rest.
    let converged = c.converged(std::time::Duration::from_secs(20));
    assert!(converged.is_ok(), "{converged:?}");
    for m in 0..3 {
        let url = c.members[m].client_url();
        rt.block_on(async {
            let channel = robust::traffic::lazy_channel(&url).expect("channel");
            let mut kv = cairn::proto::etcdserverpb::kv_client::KvClient::new(channel);
            let r = kv
                .range(cairn::proto::etcdserverpb::RangeRequest {
                    key: b"/robust/link/".to_vec(),
                    range_end: b"/robust/link0".to_vec(),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            assert_eq!(r.count, n as i64, "m{} lacks writes", m + 1);
        });
    }
    drop(c);
    drop(rt);
}

/// A member replaced by a fresh one (MemberAdd, empty data dir,
/// `--initial-cluster-state existing`) that catches up from the log, then
/// is killed and restarted, must serve again. Found by the long
/// kill+replace run (docs/robustness.md, Found so far).
#[test]
fn a_replaced_member_serves_after_a_restart() {
    let _alone = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    // Snapshots every 50 entries: the new member soon truncates the log
    // that told it about the others.
    let args = [
        "--snapshot-count",
        "50",
        "--experimental-snapshot-catchup-entries",
        "20",
    ];
    let mut c = robust::cluster::Cluster::start(common::cairn_path(), 3, &[], &args, rt.handle());
    let leader = c.leader().expect("a leader");
    // Both followers, one after the other: the second joins a cluster
    // that already holds a member added at runtime.
    for f in [(leader + 1) % 3, (leader + 2) % 3] {
        // etcd's strict reconfiguration check refuses a removal until the
        // member added last is active.
        let mut replaced = Err(String::new());
        common::wait_until(std::time::Duration::from_secs(30), || {
            replaced = c.replace(f, leader);
            replaced.is_ok()
        });
        eprintln!("{}", replaced.expect("member replace"));
    }
    let url = c.members[leader].client_url();
    rt.block_on(async {
        let channel = robust::traffic::lazy_channel(&url).expect("channel");
        let mut kv = cairn::proto::etcdserverpb::kv_client::KvClient::new(channel);
        for n in 0..300 {
            let put = cairn_robust::history::Request::Put {
                key: format!("/robust/k{}", n % 5),
                value: format!("v{n}"),
            };
            robust::traffic::execute(&mut kv, &put)
                .await
                .expect("put on a healthy cluster");
        }
    });
    for f in [(leader + 2) % 3, (leader + 1) % 3, leader] {
        c.kill(f);
        c.spawn(f);
        // Panics (with every member's log) if it does not serve in 30 s.
        c.wait_ready(f);
        eprintln!("m{} serves after a restart", f + 1);
    }
    drop(c);
    drop(rt);
}

/// Every fault the nemesis has, by the name `CAIRN_ROBUST_FAULT` takes.
const FAULTS: &[(&str, Fault)] = &[
    ("kill-random", Fault::KillRandom),
    ("kill-leader", Fault::KillLeader),
    ("kill-all", Fault::KillAll),
    ("pause", Fault::Pause),
    ("isolate-leader", Fault::IsolateLeader),
    ("isolate-follower", Fault::IsolateFollower),
    ("move-leader", Fault::MoveLeader),
    ("delay", Fault::Delay),
    ("blackhole", Fault::Blackhole),
    ("link-panic", Fault::LinkPanic),
    ("replace", Fault::Replace),
    ("crash-raft-before-save", Fault::Crash("raft-before-save")),
    ("crash-raft-after-save", Fault::Crash("raft-after-save")),
    ("crash-storage-applied", Fault::Crash("storage-applied")),
    ("crash-compact-delete", Fault::Crash("compact-delete")),
    ("crash-snapshot-send", Fault::Crash("snapshot-send")),
    ("slow-disk", Fault::SlowDisk),
];

/// Each fault on its own, on 3 members with every traffic profile, until
/// 10,000 operations are acknowledged (`CAIRN_ROBUST_OPS` to change it;
/// each run bounded to 10 minutes), then the full checks. Not in CI:
/// `CAIRN_ROBUST_FAULT=all cargo test --test robustness each_fault_alone --
/// --ignored --nocapture` (or one fault's name, or several, comma-separated;
/// names in [`FAULTS`]). Prints one table row per fault (docs/robustness.md).
#[test]
#[ignore = "long: 10,000 operations per fault, minutes each (docs/robustness.md)"]
fn each_fault_alone() {
    let wanted = std::env::var("CAIRN_ROBUST_FAULT").unwrap_or_else(|_| "all".to_string());
    let target: usize = std::env::var("CAIRN_ROBUST_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let chosen: Vec<_> = FAULTS
        .iter()
        .filter(|(name, _)| wanted == "all" || wanted.split(',').any(|w| w.trim() == *name))
        .collect();
    assert!(!chosen.is_empty(), "no fault named {wanted:?}");
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (name, fault) in chosen {
        let _alone = serial();
        let mut s = Scenario::new(name, 3, &[*fault]).mixed();
        s.duration = std::time::Duration::from_secs(600);
        s.max_ops = 100_000;
        s.target_operations = Some(target);
        s.slow_watchers = true;
        s.args = vec![
            "--snapshot-count",
            "50",
            "--experimental-snapshot-catchup-entries",
            "20",
        ];
        let outcome = robust::run(&s);
        let summary = outcome.summary(&s);
        eprintln!("{summary}");
        eprintln!("nemesis:\n{}", outcome.nemesis.join("\n"));
        let stats = &outcome.linearizability.stats;
        let ok = outcome.ok() && stats.acknowledged >= target;
        rows.push(format!(
            "| {name} | {} ({} / {}; {} impossible) | {}, {} | {} | {:.1} s | {:.0} s | {} | {} |",
            outcome.operations,
            stats.acknowledged,
            stats.free,
            stats.impossible,
            outcome.watches,
            outcome.watch_events,
            outcome.nemesis.len(),
            stats.elapsed.as_secs_f64(),
            outcome.elapsed.as_secs_f64(),
            s.seed,
            if ok { "clean" } else { "**FAILED**" },
        ));
        if !ok {
            failed.push(summary);
        }
    }
    eprintln!(
        "| fault | operations (acknowledged / free) | watches, events | nemesis actions | check | run | seed | result |\n|---|---|---|---|---|---|---|---|\n{}",
        rows.join("\n")
    );
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
