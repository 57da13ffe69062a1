//! Locks and elections end to end: the real `etcdctl lock` and `etcdctl
//! elect` (client-side recipes over KV, Lease and Watch), and the Lock and
//! Election gRPC services (server-side recipes) through a tonic client.
//!
//! Expectations were observed from etcd 3.4.23; run with
//! `CAIRN_TEST_SERVER=etcd` to check them against etcd again. Tests whose
//! name ends in `_needs_watch` make someone wait (a second contender, an
//! observer), which takes Watch on the server. Every wait is a condition
//! with a deadline.

mod common;

use std::time::Duration;

use cairn::proto::etcdserverpb::lease_client::LeaseClient;
use cairn::proto::etcdserverpb::LeaseGrantRequest;
use cairn::proto::v3electionpb::election_client::ElectionClient;
use cairn::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use cairn::proto::v3lockpb::lock_client::LockClient;
use cairn::proto::v3lockpb::{LockRequest, UnlockRequest};
use common::{etcdctl_json, etcdctl_ok, etcdctl_path, wait_until, Background, Kind, Server};
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::Code;

/// Flags giving a 1 s minimum lease TTL (ceil(1.5 × 200 ms)), for expiry.
const FAST: &[&str] = &["--heartbeat-interval", "20", "--election-timeout", "200"];

/// How long anything that should happen may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// The keys under `prefix` (etcdctl get --prefix --keys-only), in order.
fn keys(s: &Server, prefix: &str) -> Vec<String> {
    etcdctl_ok(s, &["get", prefix, "--prefix", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- etcdctl

#[test]
fn etcdctl_lock_runs_a_command_holding_the_lock() {
    let s = Server::start(Kind::Cairn);
    // The command prints the lock etcdctl hands it, then looks at the lock's
    // keys from inside (ETCDCTL_API=3 is inherited).
    let script = format!(
        "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"; {} --endpoints={} get job --prefix --keys-only",
        etcdctl_path().display(),
        s.endpoint()
    );
    let out = etcdctl_ok(&s, &["lock", "job", "--", "sh", "-c", &script]);
    let mut lines = out.lines();
    let (key, rev) = lines
        .next()
        .and_then(|l| l.split_once(' '))
        .expect("key and revision");
    assert!(key.starts_with("job/"), "{out}");
    let rev: i64 = rev.parse().expect("ETCD_LOCK_REV is a revision");
    assert!(rev > 1, "{out}");
    assert_eq!(lines.next(), Some(key), "{out}");
    // Unlocked when the command ends.
    assert!(keys(&s, "job/").is_empty());
}

#[test]
fn etcdctl_lock_second_contender_waits_needs_watch() {
    let s = Server::start(Kind::Cairn);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let release = dir.path().join("release");
    let held = dir.path().join("held");
    // The holder records that it runs, then holds the lock until told to
    // release it (the loop inside the command is the holder's work, polled).
    let holder_script = format!(
        "touch {held}; while [ ! -e {release} ]; do sleep 0.02; done; echo A >> {log}",
        held = held.display(),
        release = release.display(),
        log = log.display()
    );
    let mut a = Background::start(&s, &["lock", "L", "--", "sh", "-c", &holder_script]);
    assert!(
        wait_until(DEADLINE, || held.exists()),
        "A never got the lock"
    );

    let waiter_script = format!("echo B >> {}", log.display());
    let mut b = Background::start(&s, &["lock", "L", "--", "sh", "-c", &waiter_script]);
    // B is queued once its key exists; while A holds the lock it must wait.
    assert!(wait_until(DEADLINE, || keys(&s, "L/").len() == 2));
    assert!(b.running(), "B finished while A held the lock");
    assert!(!log.exists(), "B ran while A held the lock");

    std::fs::write(&release, "").expect("release A");
    assert!(a.wait().success());
    assert!(b.wait().success());
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "A\nB\n");
    assert!(keys(&s, "L/").is_empty());
}

/// `etcdctl elect` prints the leader key and value once elected.
fn elected(out: &str, name: &str, value: &str) -> bool {
    let lines: Vec<&str> = out.lines().collect();
    lines.len() >= 2 && lines[0].starts_with(&format!("{name}/")) && lines[1] == value
}

#[test]
fn etcdctl_elect_uncontended_then_resigns_on_interrupt() {
    let s = Server::start(Kind::Cairn);
    let mut a = Background::start(&s, &["elect", "E", "alpha"]);
    a.wait_stdout("the leader key and value", |out| elected(out, "E", "alpha"));
    let key = a.stdout().lines().next().expect("key").to_string();
    assert_eq!(keys(&s, "E/"), vec![key.clone()]);
    // The key lives on etcdctl's session lease.
    let kv = etcdctl_json(&s, &["get", &key]);
    assert!(
        kv["kvs"][0]["lease"].as_i64().is_some_and(|l| l > 0),
        "{kv}"
    );

    a.interrupt();
    assert!(a.wait().success());
    assert!(keys(&s, "E/").is_empty(), "resigned on SIGINT");
}

#[test]
fn etcdctl_elect_listen_sees_every_leader_needs_watch() {
    let s = Server::start(Kind::Cairn);
    let observer = Background::start(&s, &["elect", "--listen", "E"]);
    let mut a = Background::start(&s, &["elect", "E", "alpha"]);
    a.wait_stdout("alpha elected", |out| elected(out, "E", "alpha"));
    observer.wait_stdout("alpha", |out| out.ends_with("\nalpha\n"));

    // A second candidate waits until the first resigns.
    let mut b = Background::start(&s, &["elect", "E", "beta"]);
    assert!(wait_until(DEADLINE, || keys(&s, "E/").len() == 2));
    assert!(b.stdout().is_empty(), "beta elected while alpha leads");
    a.interrupt();
    assert!(a.wait().success());
    b.wait_stdout("beta elected", |out| elected(out, "E", "beta"));
    observer.wait_stdout("beta", |out| out.ends_with("\nbeta\n"));
    let seen = observer.stdout();
    assert_eq!(
        seen.lines().filter(|l| l.starts_with("E/")).count(),
        2,
        "{seen}"
    );
    b.interrupt();
    assert!(b.wait().success());
}

// ------------------------------------------------------- gRPC services

/// Runs `f` with a channel to `s` on a runtime of its own.
fn with_channel<T: Send + 'static, Fut>(
    s: &Server,
    f: impl FnOnce(Channel) -> Fut + Send + 'static,
) -> T
where
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let url = s.client_url();
    common::grpc::block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        f(channel).await
    })
}

async fn grant(channel: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id
}

#[test]
fn lock_service_locks_and_unlocks() {
    let s = Server::start(Kind::Cairn);
    let (lease, key, lock_rev, unlock_rev, lease0_key) = with_channel(&s, |ch| async move {
        let lease = grant(&ch, 30).await;
        let mut lock = LockClient::new(ch.clone());
        let resp = lock
            .lock(LockRequest {
                name: b"svc".to_vec(),
                lease,
            })
            .await
            .expect("lock")
            .into_inner();
        let lock_rev = resp.header.expect("header").revision;
        let unlock = lock
            .unlock(UnlockRequest {
                key: resp.key.clone(),
            })
            .await
            .expect("unlock")
            .into_inner();
        // Lease 0: the service grants a 60 s lease for the key.
        let lease0 = lock
            .lock(LockRequest {
                name: b"svc".to_vec(),
                lease: 0,
            })
            .await
            .expect("lock without a lease")
            .into_inner();
        (
            lease,
            resp.key,
            lock_rev,
            unlock.header.expect("header").revision,
            lease0.key,
        )
    });
    assert_eq!(key, format!("svc/{lease:x}").into_bytes());
    assert_eq!(unlock_rev, lock_rev + 1);
    // The lease-0 lock's key is on a fresh lease of about 60 s.
    let lease0_key = String::from_utf8(lease0_key).expect("utf-8");
    let kv = etcdctl_json(&s, &["get", &lease0_key]);
    let granted = kv["kvs"][0]["lease"].as_i64().expect("key has a lease");
    assert_eq!(lease0_key, format!("svc/{granted:x}"));
    // (A lease grant is no revision.)
    assert_eq!(
        kv["kvs"][0]["create_revision"].as_i64(),
        Some(unlock_rev + 1)
    );
    let ttl = etcdctl_ok(&s, &["lease", "timetolive", &format!("{granted:x}")]);
    assert!(ttl.contains("granted with TTL(60s)"), "{ttl}");
}

#[test]
fn lock_service_errors_as_etcd() {
    let s = Server::start(Kind::Cairn);
    let err = with_channel(&s, |ch| async move {
        LockClient::new(ch)
            .lock(LockRequest {
                name: b"svc".to_vec(),
                lease: 0x1234,
            })
            .await
            .expect_err("lock on a missing lease")
    });
    // etcd's service runs on an in-process client: the status becomes a
    // plain error, sent with code Unknown.
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(err.message(), "etcdserver: requested lease not found");
}

#[test]
fn lock_service_waits_and_lease_expiry_releases_needs_watch() {
    let s = Server::start_with(Kind::Cairn, FAST);
    let (first, second) = with_channel(&s, |ch| async move {
        let short = grant(&ch, 1).await;
        let long = grant(&ch, 60).await;
        let mut lock = LockClient::new(ch.clone());
        let first = lock
            .lock(LockRequest {
                name: b"L".to_vec(),
                lease: short,
            })
            .await
            .expect("first lock")
            .into_inner();
        // The second waits until the first lock's lease expires.
        let second = timeout(
            DEADLINE,
            lock.lock(LockRequest {
                name: b"L".to_vec(),
                lease: long,
            }),
        )
        .await
        .expect("the expiry released the lock in time")
        .expect("second lock")
        .into_inner();
        (first.key, second)
    });
    assert_ne!(first, second.key);
    let key = String::from_utf8(second.key).expect("utf-8");
    assert_eq!(keys(&s, "L/"), [key]);
}

#[test]
fn lock_service_cancelled_waiter_withdraws_needs_watch() {
    let s = Server::start(Kind::Cairn);
    with_channel(&s, |ch| async move {
        let mut lock = LockClient::new(ch.clone());
        lock.lock(LockRequest {
            name: b"L".to_vec(),
            lease: 0,
        })
        .await
        .expect("first lock");
        // A client-side timeout abandons the second Lock while it waits.
        let waited = timeout(
            Duration::from_millis(500),
            lock.lock(LockRequest {
                name: b"L".to_vec(),
                lease: 0,
            }),
        )
        .await;
        assert!(waited.is_err(), "second lock granted while the first holds");
    });
    // The abandoned waiter's key is removed by the server.
    assert!(
        wait_until(DEADLINE, || keys(&s, "L/").len() == 1),
        "{:?}",
        keys(&s, "L/")
    );
}

#[test]
fn election_service_campaign_leader_proclaim_resign() {
    let s = Server::start(Kind::Cairn);
    with_channel(&s, |ch| async move {
        let mut el = ElectionClient::new(ch.clone());
        let name = b"E".to_vec();
        let leader_req = || LeaderRequest { name: name.clone() };

        let err = el.leader(leader_req()).await.expect_err("no leader yet");
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unknown, "election: no leader")
        );

        let lease = grant(&ch, 30).await;
        let won = el
            .campaign(CampaignRequest {
                name: name.clone(),
                lease,
                value: b"v1".to_vec(),
            })
            .await
            .expect("campaign")
            .into_inner();
        let header = won.header.expect("header");
        let leader = won.leader.expect("leader key");
        assert_eq!(
            leader,
            LeaderKey {
                name: name.clone(),
                key: format!("E/{lease:x}").into_bytes(),
                rev: header.revision,
                lease,
            }
        );
        let now = el.leader(leader_req()).await.expect("leader").into_inner();
        let kv = now.kv.expect("kv");
        assert_eq!(
            (kv.key.clone(), kv.value, kv.lease),
            (leader.key.clone(), b"v1".to_vec(), lease)
        );
        assert_eq!(now.header.expect("header").revision, header.revision);

        let proclaimed = el
            .proclaim(ProclaimRequest {
                leader: Some(leader.clone()),
                value: b"v2".to_vec(),
            })
            .await
            .expect("proclaim")
            .into_inner();
        assert_eq!(
            proclaimed.header.expect("header").revision,
            header.revision + 1
        );
        let now = el.leader(leader_req()).await.expect("leader").into_inner();
        assert_eq!(now.kv.expect("kv").value, b"v2");

        let stale = LeaderKey {
            rev: leader.rev - 1,
            ..leader.clone()
        };
        let err = el
            .proclaim(ProclaimRequest {
                leader: Some(stale),
                value: b"x".to_vec(),
            })
            .await
            .expect_err("stale proclaim");
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unknown, "election: not leader")
        );
        let err = el
            .proclaim(ProclaimRequest {
                leader: None,
                value: b"x".to_vec(),
            })
            .await
            .expect_err("proclaim without a leader key");
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unknown, "\"leader\" field must be provided")
        );
        let err = el
            .resign(ResignRequest { leader: None })
            .await
            .expect_err("resign without a leader key");
        assert_eq!(err.code(), Code::Unknown);

        let resigned = el
            .resign(ResignRequest {
                leader: Some(leader.clone()),
            })
            .await
            .expect("resign")
            .into_inner();
        assert_eq!(
            resigned.header.expect("header").revision,
            header.revision + 2
        );
        let err = el
            .leader(leader_req())
            .await
            .expect_err("no leader after resign");
        assert_eq!(err.message(), "election: no leader");
    });
}

#[test]
fn election_service_observe_and_succession_needs_watch() {
    let s = Server::start(Kind::Cairn);
    with_channel(&s, |ch| async move {
        let mut el = ElectionClient::new(ch.clone());
        let name = b"E".to_vec();
        // grpc-go (etcd) sends a stream's response headers only with its
        // first message, and there is no leader to report yet: the call is
        // awaited on a task of its own while the campaign goes ahead.
        let mut el_o = el.clone();
        let observing = tokio::spawn(async move {
            el_o.observe(LeaderRequest {
                name: b"E".to_vec(),
            })
            .await
        });
        let a = grant(&ch, 60).await;
        let b = grant(&ch, 60).await;
        let a_won = el
            .campaign(CampaignRequest {
                name: name.clone(),
                lease: a,
                value: b"a1".to_vec(),
            })
            .await
            .expect("a campaigns")
            .into_inner()
            .leader
            .expect("leader key");
        let mut observed = timeout(DEADLINE, observing)
            .await
            .expect("observe answered in time")
            .expect("task")
            .expect("observe")
            .into_inner();
        let mut next = async || {
            let resp = timeout(DEADLINE, observed.message())
                .await
                .expect("observed in time")
                .expect("stream ok")
                .expect("stream open");
            let kv = resp.kv.expect("kv");
            assert!(resp.header.expect("header").revision >= kv.mod_revision);
            String::from_utf8(kv.value).expect("utf-8")
        };
        assert_eq!(next().await, "a1");
        el.proclaim(ProclaimRequest {
            leader: Some(a_won.clone()),
            value: b"a2".to_vec(),
        })
        .await
        .expect("proclaim");
        assert_eq!(next().await, "a2");

        let mut el_b = el.clone();
        let b_campaign = tokio::spawn(async move {
            el_b.campaign(CampaignRequest {
                name: b"E".to_vec(),
                lease: b,
                value: b"b1".to_vec(),
            })
            .await
        });
        // b waits behind a (its key exists, its campaign has not returned).
        let mut kv = cairn::proto::etcdserverpb::kv_client::KvClient::new(ch.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let r = kv
                .range(cairn::proto::etcdserverpb::RangeRequest {
                    key: b"E/".to_vec(),
                    range_end: b"E0".to_vec(),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            if r.count == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "b never queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!b_campaign.is_finished(), "b elected while a leads");

        el.resign(ResignRequest {
            leader: Some(a_won),
        })
        .await
        .expect("resign");
        let b_won = timeout(DEADLINE, b_campaign)
            .await
            .expect("b elected in time")
            .expect("task")
            .expect("b campaigns")
            .into_inner();
        assert_eq!(
            b_won.leader.expect("leader").key,
            format!("E/{b:x}").into_bytes()
        );
        assert_eq!(next().await, "b1");
    });
}
