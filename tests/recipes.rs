//! The concurrency recipes (`cairn::recipes`: session, mutex, election) as a
//! client library, run against real etcd 3.4 and against cairn.
//!
//! Every scenario is one async function run twice: `*_on_etcd` proves the
//! recipe (and the test's expectations) against the reference, `*_on_cairn`
//! proves cairn serves what the recipe needs. Scenarios where someone has to
//! wait (a contended lock or election, an observer) use Watch; their cairn
//! variants are named `*_on_cairn` like the rest and fail until cairn serves
//! Watch. Every wait is a condition with a deadline.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use cairn::error::EtcdError;
use cairn::proto::etcdserverpb::{LeaseTimeToLiveRequest, RangeRequest};
use cairn::recipes::election::{self, LeaderResponse};
use cairn::recipes::{mutex, Client, Error, Session};
use common::{Kind, Server};
use tokio::time::timeout;

/// Flags giving a 1 s minimum lease TTL (ceil(1.5 × 200 ms)), for expiry.
const FAST: &[&str] = &["--heartbeat-interval", "20", "--election-timeout", "200"];

/// How long anything that should happen may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Starts `kind` (with `flags`) and runs `scenario` against it, on a
/// runtime of its own (multi-threaded: spawned waiters run alongside).
fn run<F, Fut>(kind: Kind, flags: &[&str], scenario: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let server = Server::start_with(kind, flags);
    let url = server.client_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        scenario(Client::new(channel)).await
    });
    drop(server);
}

/// The keys under `prefix`, oldest first.
async fn keys(client: &Client, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let resp = client
        .kv
        .clone()
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            sort_target: 2, // CREATE
            sort_order: 1,  // ASCEND
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    resp.kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).expect("utf-8 key"))
        .collect()
}

/// Polls `cond` every 20 ms until it holds; panics after [`DEADLINE`].
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ttl(client: &Client, lease: i64) -> i64 {
    client
        .lease
        .clone()
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .expect("time to live")
        .into_inner()
        .ttl
}

fn value(resp: &LeaderResponse) -> &[u8] {
    &resp.kv.as_ref().expect("kv").value
}

// ---------------------------------------------------------------- no Watch

async fn uncontended_lock(client: Client) {
    let session = Session::new(client.clone(), 0).await.expect("session");
    assert!(session.lease() > 0);
    let left = ttl(&client, session.lease()).await;
    assert!((59..=60).contains(&left), "default session TTL: {left}");

    let locked = mutex::lock(&session, b"L").await.expect("lock");
    assert_eq!(locked.key, format!("L/{:x}", session.lease()).into_bytes());
    assert_eq!(locked.header.revision, locked.create_revision);
    assert_eq!(
        keys(&client, "L/").await,
        [format!("L/{:x}", session.lease())]
    );

    // The same session locking again reuses its key: same revision, no write.
    let again = mutex::lock(&session, b"L").await.expect("relock");
    assert_eq!(again.key, locked.key);
    assert_eq!(again.create_revision, locked.create_revision);
    assert_eq!(again.header.revision, locked.header.revision);

    let header = mutex::unlock(&client, &locked.key).await.expect("unlock");
    assert_eq!(header.revision, locked.create_revision + 1);
    assert!(keys(&client, "L/").await.is_empty());

    // A session on a lease that does not exist fails at the first write.
    let ghost = Session::new(client.clone(), 0x7777).await.expect("session");
    match mutex::lock(&ghost, b"L").await {
        Err(Error::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::NotFound);
            assert_eq!(s.message(), "etcdserver: requested lease not found");
        }
        other => panic!("lock on a missing lease: {other:?}"),
    }
    session.close().await.expect("close");
}

#[test]
fn uncontended_lock_on_etcd() {
    run(Kind::Etcd, &[], uncontended_lock);
}

#[test]
fn uncontended_lock_on_cairn() {
    run(Kind::Cairn, &[], uncontended_lock);
}

async fn uncontended_election(client: Client) {
    match election::leader(&client, b"E").await {
        Err(Error::Etcd(EtcdError::ElectionNoLeader)) => {}
        other => panic!("leader before any campaign: {other:?}"),
    }
    let session = Session::new(client.clone(), 0).await.expect("session");
    let elected = election::campaign(&session, b"E", b"v1")
        .await
        .expect("campaign");
    let key = format!("E/{:x}", session.lease()).into_bytes();
    assert_eq!(elected.leader.name, b"E");
    assert_eq!(elected.leader.key, key);
    assert_eq!(elected.leader.lease, session.lease());
    assert_eq!(elected.leader.rev, elected.header.revision);

    let now = election::leader(&client, b"E").await.expect("leader");
    assert_eq!(value(&now), b"v1");
    assert_eq!(now.kv.as_ref().map(|kv| kv.lease), Some(session.lease()));

    let header = election::proclaim(&session, &elected.leader, b"v2")
        .await
        .expect("proclaim");
    assert_eq!(header.revision, elected.header.revision + 1);
    assert_eq!(
        value(&election::leader(&client, b"E").await.expect("leader")),
        b"v2"
    );

    // A stale leadership (other create revision) may not proclaim.
    let mut stale = elected.leader.clone();
    stale.rev -= 1;
    match election::proclaim(&session, &stale, b"x").await {
        Err(Error::Etcd(EtcdError::ElectionNotLeader)) => {}
        other => panic!("proclaim with a stale revision: {other:?}"),
    }
    // Resigning it is harmless and changes nothing.
    election::resign(&client, &stale)
        .await
        .expect("stale resign");
    assert_eq!(
        value(&election::leader(&client, b"E").await.expect("leader")),
        b"v2"
    );

    // Campaigning again with the same session keeps the key and takes the value.
    let again = election::campaign(&session, b"E", b"v3")
        .await
        .expect("campaign again");
    assert_eq!(again.leader, elected.leader);
    assert_eq!(
        value(&election::leader(&client, b"E").await.expect("leader")),
        b"v3"
    );

    election::resign(&client, &elected.leader)
        .await
        .expect("resign");
    assert!(matches!(
        election::leader(&client, b"E").await,
        Err(Error::Etcd(EtcdError::ElectionNoLeader))
    ));
}

#[test]
fn uncontended_election_on_etcd() {
    run(Kind::Etcd, &[], uncontended_election);
}

#[test]
fn uncontended_election_on_cairn() {
    run(Kind::Cairn, &[], uncontended_election);
}

async fn session_keep_alive(client: Client) {
    let mut session = Session::with_ttl(client.clone(), 0, 1)
        .await
        .expect("session");
    let lease = session.lease();
    session.keep_alive();
    // Three TTLs pass; the lease must stay (this loop waits for time to pass,
    // checking all along, it does not synchronise with anything).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        // TimeToLive rounds down: a live 1 s lease may report 0; gone is -1.
        assert!(
            ttl(&client, lease).await >= 0,
            "lease expired while kept alive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(session.is_kept_alive());
    session.orphan();
    eventually("orphaned lease expires", async || {
        ttl(&client, lease).await == -1
    })
    .await;
}

#[test]
fn session_keep_alive_on_etcd() {
    run(Kind::Etcd, FAST, session_keep_alive);
}

#[test]
fn session_keep_alive_on_cairn() {
    run(Kind::Cairn, FAST, session_keep_alive);
}

// ------------------------------------------------------------- needs Watch

async fn contended_lock(client: Client) {
    let a = Session::new(client.clone(), 0).await.expect("session a");
    let b = Session::new(client.clone(), 0).await.expect("session b");
    let held = mutex::lock(&a, b"L").await.expect("a locks");
    let waiter = tokio::spawn(async move {
        let locked = mutex::lock(&b, b"L").await;
        (b, locked)
    });
    eventually("b queues", async || keys(&client, "L/").await.len() == 2).await;
    assert!(!waiter.is_finished(), "b got the lock while a holds it");

    let released = mutex::unlock(&client, &held.key).await.expect("unlock");
    let (b, locked) = timeout(DEADLINE, waiter)
        .await
        .expect("b locks in time")
        .expect("task");
    let locked = locked.expect("b locks");
    assert_eq!(locked.key, format!("L/{:x}", b.lease()).into_bytes());
    assert!(locked.create_revision < released.revision);
    // Acquired by waiting: the header is that of the Range that saw a's key gone.
    assert!(locked.header.revision >= released.revision);
}

#[test]
fn contended_lock_on_etcd() {
    run(Kind::Etcd, &[], contended_lock);
}

#[test]
fn contended_lock_on_cairn() {
    run(Kind::Cairn, &[], contended_lock);
}

async fn lease_expiry_releases_the_lock(client: Client) {
    let short = Session::with_ttl(client.clone(), 0, 1)
        .await
        .expect("short");
    let long = Session::new(client.clone(), 0).await.expect("long");
    let held = mutex::lock(&short, b"L").await.expect("short locks");
    let waiter = tokio::spawn(async move { mutex::lock(&long, b"L").await });
    let locked = timeout(DEADLINE, waiter)
        .await
        .expect("the lease expired and released the lock in time")
        .expect("task")
        .expect("lock");
    assert_ne!(locked.key, held.key);
    assert_eq!(
        keys(&client, "L/").await,
        [String::from_utf8(locked.key).expect("utf-8")]
    );
}

#[test]
fn lease_expiry_releases_the_lock_on_etcd() {
    run(Kind::Etcd, FAST, lease_expiry_releases_the_lock);
}

#[test]
fn lease_expiry_releases_the_lock_on_cairn() {
    run(Kind::Cairn, FAST, lease_expiry_releases_the_lock);
}

async fn abandoned_waiter_withdraws(client: Client) {
    let a = Session::new(client.clone(), 0).await.expect("session a");
    let b = Session::new(client.clone(), 0).await.expect("session b");
    mutex::lock(&a, b"L").await.expect("a locks");
    let waiter = tokio::spawn(async move { mutex::lock(&b, b"L").await });
    eventually("b queues", async || keys(&client, "L/").await.len() == 2).await;
    waiter.abort();
    eventually("b's key is withdrawn", async || {
        keys(&client, "L/").await == [format!("L/{:x}", a.lease())]
    })
    .await;
}

#[test]
fn abandoned_waiter_withdraws_on_etcd() {
    run(Kind::Etcd, &[], abandoned_waiter_withdraws);
}

#[test]
fn abandoned_waiter_withdraws_on_cairn() {
    run(Kind::Cairn, &[], abandoned_waiter_withdraws);
}

async fn observed_election(client: Client) {
    // Observing before anyone campaigns: the observer waits for a candidate.
    let mut observed = election::observe(client.clone(), b"E");
    let mut next = async || {
        let resp = timeout(DEADLINE, observed.recv())
            .await
            .expect("observed in time")
            .expect("observer alive");
        String::from_utf8(value(&resp).to_vec()).expect("utf-8")
    };

    let a = Session::new(client.clone(), 0).await.expect("session a");
    let b = Session::new(client.clone(), 0).await.expect("session b");
    let a_won = election::campaign(&a, b"E", b"a1")
        .await
        .expect("a campaigns");
    assert_eq!(next().await, "a1");
    election::proclaim(&a, &a_won.leader, b"a2")
        .await
        .expect("proclaim");
    assert_eq!(next().await, "a2");

    let b_campaign = tokio::spawn(async move {
        let won = election::campaign(&b, b"E", b"b1").await;
        (b, won)
    });
    eventually("b is a candidate", async || {
        keys(&client, "E/").await.len() == 2
    })
    .await;
    assert!(!b_campaign.is_finished(), "b elected while a leads");

    election::resign(&client, &a_won.leader)
        .await
        .expect("resign");
    let (b, b_won) = timeout(DEADLINE, b_campaign)
        .await
        .expect("b elected in time")
        .expect("task");
    let b_won = b_won.expect("b campaigns");
    assert_eq!(b_won.leader.key, format!("E/{:x}", b.lease()).into_bytes());
    assert_eq!(next().await, "b1");
    let leader = election::leader(&client, b"E").await.expect("leader");
    assert_eq!(value(&leader), b"b1");
}

#[test]
fn observed_election_on_etcd() {
    run(Kind::Etcd, &[], observed_election);
}

#[test]
fn observed_election_on_cairn() {
    run(Kind::Cairn, &[], observed_election);
}
