//! A member that knows no leader: its health says NOT_SERVING, a request
//! carrying etcd's `hasleader: true` metadata (clientv3 WithRequireLeader)
//! fails at once with `etcdserver: no leader`, and a serializable Range is
//! still served from local state, as etcd does.
//!
//! The member is listed in a two-member `--initial-cluster` whose other
//! member never starts, so it can never win an election.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::RangeRequest;
use common::{free_port, grpc, wait_until};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Kills the member when the test ends, however it ends.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_leaderless(dir: &std::path::Path) -> (Member, String) {
    let (client, peer, absent) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--name", "a", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args([
            "--initial-cluster",
            &format!("a={peer_url},b=http://127.0.0.1:{absent}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn");
    (Member(child), url)
}

fn health(url: &str) -> Option<i32> {
    let url = url.to_string();
    grpc::block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        Some(reply.into_inner().status)
    })
}

#[test]
fn a_member_without_a_leader_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_member, url) = start_leaderless(dir.path());
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            status = health(&url);
            status.is_some()
        }),
        "the member never answered a health check"
    );
    assert_eq!(status, Some(ServingStatus::NotServing as i32));

    let url2 = url.clone();
    let (result, took) = grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url2).await.expect("connect");
        let mut req = tonic::Request::new(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("hasleader", "true".parse().expect("metadata"));
        let start = Instant::now();
        let result = kv.range(req).await.map(|_| ());
        (result, start.elapsed())
    });
    let err = result.expect_err("a request requiring a leader must fail");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.message(), "etcdserver: no leader");
    assert!(took < Duration::from_secs(1), "not fail-fast: {took:?}");

    let serializable = grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url).await.expect("connect");
        kv.range(RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().kvs.len())
    });
    assert_eq!(serializable.expect("serializable range"), 0);
}
