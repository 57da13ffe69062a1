//! Leases through the real etcdctl and a gRPC client: grant, attach, time to
//! live, keep-alive, list, revoke, expiry of a lease's keys, restarts.
//!
//! Expected outputs were observed from etcd 3.4.23; run with
//! `CAIRN_TEST_SERVER=etcd` to check them against etcd again. Servers for
//! expiry tests run with a short election timeout so the minimum lease TTL
//! is 1 s (ceil(1.5 × 200 ms)); every wait is a condition with a deadline.

mod common;

use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::lease_client::LeaseClient;
use cairn::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
use common::{etcdctl, etcdctl_ok, failure, wait_until, Kind, Server};

/// Flags giving a 1 s minimum lease TTL.
const FAST: &[&str] = &["--heartbeat-interval", "20", "--election-timeout", "200"];

/// The hex id in etcdctl's "lease <id> granted with TTL(<n>s)".
fn granted(out: &str) -> String {
    let mut words = out.split_whitespace();
    assert_eq!(
        words.next(),
        Some("lease"),
        "unexpected grant output: {out}"
    );
    let id = words.next().expect("lease id").to_string();
    assert!(
        out.contains(" granted with TTL("),
        "unexpected grant output: {out}"
    );
    id
}

fn grant(s: &Server, ttl: &str) -> String {
    granted(&etcdctl_ok(s, &["lease", "grant", ttl]))
}

fn value_of(s: &Server, key: &str) -> String {
    etcdctl_ok(s, &["get", key, "--print-value-only"])
}

#[test]
fn etcdctl_lease_lifecycle() {
    let s = Server::start(Kind::Cairn);
    let out = etcdctl_ok(&s, &["lease", "grant", "60"]);
    let id = granted(&out);
    assert_eq!(out, format!("lease {id} granted with TTL(60s)\n"));
    let dec = i64::from_str_radix(&id, 16).expect("hex id").to_string();

    etcdctl_ok(&s, &["put", "--lease", &id, "b", "1"]);
    etcdctl_ok(&s, &["put", "--lease", &id, "a", "2"]);
    let kv = common::etcdctl_json(&s, &["get", "a"]);
    assert_eq!(kv["kvs"][0]["lease"].to_string(), dec);

    let ttl = etcdctl_ok(&s, &["lease", "timetolive", "--keys", &id]);
    // etcd lists attached keys in map order; cairn sorts them.
    let ok = ["59", "60"].iter().any(|r| {
        ["a b", "b a"].iter().any(|keys| {
            ttl == format!(
                "lease {id} granted with TTL(60s), remaining({r}s), attached keys([{keys}])\n"
            )
        })
    });
    assert!(ok, "{ttl}");

    assert_eq!(
        etcdctl_ok(&s, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        etcdctl_ok(&s, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );

    // A put without the lease detaches "b"; the revoke deletes only "a".
    etcdctl_ok(&s, &["put", "b", "3"]);
    let before = common::etcdctl_json(&s, &["get", "b"])["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(
        etcdctl_ok(&s, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    let after = common::etcdctl_json(&s, &["get", "b"]);
    assert_eq!(after["header"]["revision"].as_i64(), Some(before + 1));
    assert_eq!(value_of(&s, "a"), "");
    assert_eq!(value_of(&s, "b"), "3\n");

    // Unknown leases, every command.
    assert_eq!(
        etcdctl_ok(&s, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    let f = failure(&etcdctl(&s, &["lease", "revoke", &id], None));
    assert_eq!(
        f.error,
        "failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(
        f.grpc_error.as_deref(),
        Some("rpc error: code = NotFound desc = etcdserver: requested lease not found")
    );
    let f = failure(&etcdctl(&s, &["put", "--lease", &id, "c", "1"], None));
    assert_eq!(f.error, "etcdserver: requested lease not found");
    let f = failure(&etcdctl(&s, &["lease", "keep-alive", "--once", &id], None));
    assert_eq!(f.error, "etcdserver: requested lease not found");
    assert_eq!(etcdctl_ok(&s, &["lease", "list"]), "found 0 leases\n");
}

#[test]
fn short_ttls_are_raised_to_the_minimum() {
    // Default election timeout (1 s): the minimum TTL is 2 s.
    let s = Server::start(Kind::Cairn);
    let out = etcdctl_ok(&s, &["lease", "grant", "1"]);
    assert!(out.ends_with(" granted with TTL(2s)\n"), "{out}");
    let f = failure(&etcdctl(&s, &["lease", "grant", "9000000001"], None));
    assert_eq!(
        f.error,
        "failed to grant lease (etcdserver: too large lease TTL)"
    );
}

#[test]
fn an_expired_leases_keys_are_gone_within_ttl_plus_one_second() {
    let s = Server::start_with(Kind::Cairn, FAST);
    let out = etcdctl_ok(&s, &["lease", "grant", "1"]);
    let granted_at = Instant::now();
    let id = granted(&out);
    assert!(out.ends_with("TTL(1s)\n"), "{out}");
    etcdctl_ok(&s, &["put", "--lease", &id, "k1", "v"]);
    etcdctl_ok(&s, &["put", "--lease", &id, "k2", "v"]);
    etcdctl_ok(&s, &["put", "stays", "v"]);
    let gone = wait_until(Duration::from_secs(5), || {
        etcdctl_ok(&s, &["get", "k", "--prefix", "--keys-only"]).is_empty()
    });
    let took = granted_at.elapsed();
    assert!(gone, "keys of an expired lease still there after 5 s");
    assert!(
        took <= Duration::from_millis(2_000),
        "keys went {took:?} after the grant; TTL is 1 s"
    );
    assert_eq!(value_of(&s, "stays"), "v\n");
    assert_eq!(etcdctl_ok(&s, &["lease", "list"]), "found 0 leases\n");
}

/// Starts a keep-alive stream for `id` sending one request per `every`,
/// for `period`; returns the TTLs answered.
async fn keep_alive_for(url: String, id: i64, every: Duration, period: Duration) -> Vec<i64> {
    let mut client = LeaseClient::connect(url).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The first request goes in before the call: grpc-go (etcd) sends the
    // response headers only with the first response.
    tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = client
        .lease_keep_alive(requests)
        .await
        .expect("keep-alive stream")
        .into_inner();
    let mut ttls = Vec::new();
    let end = Instant::now() + period;
    loop {
        let resp = responses
            .message()
            .await
            .expect("keep-alive response")
            .expect("stream open");
        assert_eq!(resp.id, id);
        assert!(resp.header.is_some_and(|h| h.revision > 0));
        ttls.push(resp.ttl);
        tokio::time::sleep(every).await;
        if Instant::now() >= end {
            return ttls;
        }
        tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
    }
}

#[test]
fn keep_alive_stream_prevents_expiry() {
    let s = Server::start_with(Kind::Cairn, FAST);
    let id = grant(&s, "1");
    etcdctl_ok(&s, &["put", "--lease", &id, "k", "v"]);
    let id = i64::from_str_radix(&id, 16).expect("hex id");
    // Three TTLs of keep-alives, one every 300 ms: the key must survive.
    let ttls = common::grpc::block_on(keep_alive_for(
        s.client_url(),
        id,
        Duration::from_millis(300),
        Duration::from_secs(3),
    ));
    assert!(ttls.len() >= 5 && ttls.iter().all(|&t| t == 1), "{ttls:?}");
    assert_eq!(value_of(&s, "k"), "v\n");
    // Without keep-alives it expires.
    assert!(wait_until(Duration::from_secs(3), || value_of(&s, "k").is_empty()));
}

#[test]
fn keep_alive_stream_answers_unknown_leases_with_ttl_zero() {
    let s = Server::start(Kind::Cairn);
    let url = s.client_url();
    let (granted, ttls) = common::grpc::block_on(async move {
        let mut client = LeaseClient::connect(url.clone()).await.expect("connect");
        let granted = client
            .lease_grant(LeaseGrantRequest { id: 4242, ttl: 30 })
            .await
            .expect("grant")
            .into_inner();
        // One stream, several leases, known and unknown.
        let requests = tokio_stream::iter(
            [4242, 777, 4242]
                .into_iter()
                .map(|id| LeaseKeepAliveRequest { id }),
        );
        let mut responses = client
            .lease_keep_alive(requests)
            .await
            .expect("stream")
            .into_inner();
        let mut ttls = Vec::new();
        while let Some(r) = responses.message().await.expect("response") {
            ttls.push((r.id, r.ttl));
        }
        (granted, ttls)
    });
    assert_eq!((granted.id, granted.ttl), (4242, 30));
    assert_eq!(ttls, [(4242, 30), (777, 0), (4242, 30)]);
    // The client-chosen id is the one etcdctl sees.
    assert_eq!(
        etcdctl_ok(&s, &["lease", "list"]),
        format!("found 1 leases\n{:016x}\n", 4242)
    );
    // Granting the same id again fails.
    let url = s.client_url();
    let err = common::grpc::block_on(async move {
        let mut client = LeaseClient::connect(url).await.expect("connect");
        client
            .lease_grant(LeaseGrantRequest { id: 4242, ttl: 30 })
            .await
            .expect_err("duplicate grant")
    });
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: lease already exists");
}

#[test]
fn leases_survive_a_crash_and_are_not_expired_early() {
    leases_survive_a_crash(&[]);
}

/// The same kill -9 on the sled state engine (the default is fjall).
#[test]
fn leases_survive_a_crash_and_are_not_expired_early_on_sled() {
    leases_survive_a_crash(&["--backend-engine", "sled"]);
}

fn leases_survive_a_crash(engine: &[&str]) {
    let flags: Vec<&str> = FAST
        .iter()
        .chain(common::cairn_flags(engine))
        .copied()
        .collect();
    let mut s = Server::start_with(Kind::Cairn, &flags);
    let id = grant(&s, "3");
    etcdctl_ok(&s, &["put", "--lease", &id, "k", "v"]);
    s.kill();
    // Stay down longer than the TTL: expiry is not measured across downtime
    // (this sleep is the outage being simulated, not a synchronisation).
    std::thread::sleep(Duration::from_secs(4));
    s.restart();
    let restarted = Instant::now();
    assert_eq!(value_of(&s, "k"), "v\n");
    let ttl = etcdctl_ok(&s, &["lease", "timetolive", "--keys", &id]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(3s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([k])\n"), "{ttl}");
    let remaining: u64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|r| r.parse().ok())
        .expect("remaining seconds");
    assert!(
        remaining >= 2,
        "lease restarted with only {remaining}s: {ttl}"
    );
    // Still there a TTL after the restart began counting...
    assert!(wait_until(Duration::from_secs(20), || restarted.elapsed()
        >= Duration::from_millis(2_500)));
    assert_eq!(value_of(&s, "k"), "v\n", "expired early after the restart");
    // ...and gone once TTL + the election timeout extension + 1 s have passed.
    assert!(wait_until(Duration::from_secs(3), || value_of(&s, "k").is_empty()));
    assert!(restarted.elapsed() <= Duration::from_millis(5_000));
}
