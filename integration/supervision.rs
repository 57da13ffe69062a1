//! The supervision tree (src/supervise.rs), one test per core actor: a
//! failpoint makes the actor panic while clients write; the process must
//! stop on its own with exit code 70 and one `fatal:` log line (never stay
//! half-alive), and a restart on the same data dir must serve every
//! acknowledged write.
//!
//! The failpoints (`CAIRN_FAILPOINT_PANIC=<name>@<n>`, src/failpoint.rs)
//! fire on the n-th hit: a number of applied batches, watch notifications
//! or ticks, so each run dies after some acknowledged writes, at a moment
//! the test does not need to guess.

#[path = "../tests/common/mod.rs"]
mod common;

use cairn::proto::etcdserverpb::{PutRequest, RangeRequest};
use common::{grpc, Kind, Server};
use std::time::Duration;

/// How long a member with a dead core actor may take to stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Writes at most this many keys per run (the failpoints fire well before).
const MAX_PUTS: u32 = 2000;

/// Puts `k0`, `k1`, … until a put fails (the member died); returns how many
/// were acknowledged.
fn put_until_failure(url: &str) -> u32 {
    let url = url.to_string();
    grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url).await.expect("connect");
        for i in 0..MAX_PUTS {
            let put = PutRequest {
                key: format!("k{i}").into_bytes(),
                value: format!("v{i}").into_bytes(),
                ..Default::default()
            };
            if kv.put(put).await.is_err() {
                return i;
            }
        }
        MAX_PUTS
    })
}

/// Every acknowledged key `k0..k{acked}` holds its value.
fn assert_all_present(url: &str, acked: u32) {
    let url = url.to_string();
    let missing = grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url).await.expect("connect");
        let mut missing = Vec::new();
        for i in 0..acked {
            let got = kv
                .range(RangeRequest {
                    key: format!("k{i}").into_bytes(),
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            let want = format!("v{i}").into_bytes();
            if got.kvs.first().map(|kv| &kv.value) != Some(&want) {
                missing.push(i);
            }
        }
        missing
    });
    assert!(
        missing.is_empty(),
        "acknowledged puts lost after restart: {missing:?}"
    );
}

fn core_actor_death_stops_the_member(failpoint: &str) {
    let env = [("CAIRN_FAILPOINT_PANIC", failpoint)];
    let mut server = Server::start_with_env(Kind::Cairn, &[], &env);
    assert!(!server.is_etcd(), "a cairn-only test (failpoints)");
    let acked = put_until_failure(&server.client_url());
    assert!(acked < MAX_PUTS, "{failpoint}: the failpoint never fired");

    let status = server.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "{failpoint}: the member is still running (half-alive) {EXIT_TIMEOUT:?} after the \
             actor died; logs:\n{}",
            server.logs()
        )
    });
    assert_eq!(status.code(), Some(70), "{failpoint}: exit status {status}");
    let logs = server.logs();
    let fatal: Vec<&str> = logs.lines().filter(|l| l.contains("fatal:")).collect();
    assert_eq!(
        fatal.len(),
        1,
        "{failpoint}: want one fatal line, got:\n{logs}"
    );
    assert!(
        fatal[0].contains(failpoint.split('@').next().unwrap_or(failpoint)),
        "{failpoint}: the fatal line names the failpoint: {}",
        fatal[0]
    );

    server.extra_env.clear();
    server.restart();
    assert_all_present(&server.client_url(), acked);
}

#[test]
fn storage_death_stops_the_member() {
    // The 30th applied batch (one per put here, after the leader's entry).
    core_actor_death_stops_the_member("storage-apply@30");
}

#[test]
fn raft_node_death_stops_the_member() {
    // The 30th tick: 3 s at the default 100 ms heartbeat.
    core_actor_death_stops_the_member("raft-tick@30");
}

#[test]
fn lease_keeper_death_stops_the_member() {
    // The 30th lease tick (100 ms each).
    core_actor_death_stops_the_member("lease-tick@30");
}

#[test]
fn auth_manager_death_stops_the_member() {
    // The 3rd token sweep (one a second).
    core_actor_death_stops_the_member("auth-sweep@3");
}

#[test]
fn watch_broadcaster_death_stops_the_member() {
    // The 30th batch of events handed to the broadcaster.
    core_actor_death_stops_the_member("watch-applied@30");
}
