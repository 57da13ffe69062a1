//! Replication across real members: N `cairn` processes on free 127.0.0.1
//! ports, each with its own data dir, bootstrapped together with
//! `--initial-cluster` and driven through the etcd gRPC API.
//!
//! * three members elect exactly one leader, and a write sent to a follower
//!   is forwarded, committed and readable (linearizably) on every member;
//! * SIGKILL of the leader: a new leader within a few election timeouts,
//!   writes resume, no acknowledged write is lost, and the old leader
//!   rejoins and converges (same revision, same HashKV at it everywhere);
//!   then the same again with the second leader, so the rejoined member
//!   has to take part in the election;
//! * a leader cut off from both followers answers no linearizable read;
//! * a panicking peer link (failpoint) restarts by itself while writes keep
//!   committing;
//! * a member of another cluster is refused with etcd's "cluster ID mismatch".
//!
//! Short raft timings (50 ms heartbeat, 500 ms election timeout) keep the
//! file fast; every wait is a condition with a deadline.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::proto::etcdserverpb::{
    HashKvRequest, PutRequest, RangeRequest, StatusRequest, StatusResponse,
};
use common::grpc::hash_kv;
use common::{free_port, wait_until};

const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;
const TOKEN: &str = "cairn-cluster-test";
/// How long a fresh cluster gets to elect a leader and serve reads.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const LINK_PANIC_ENV: &str = "CAIRN_FAILPOINT_PEER_LINK_PANIC";

/// One member process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Incremented per start, so each incarnation logs to its own file.
    starts: u32,
    /// The id `member add` gave it (members added at runtime get a new
    /// id; bootstrapped ones have etcd's derived id).
    added_id: Option<u64>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    /// The client address as etcdctl's `--endpoints` takes it.
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    /// etcd's (and cairn's) member id for this member.
    fn id(&self) -> u64 {
        self.added_id
            .unwrap_or_else(|| cairn::cluster::member_id(&[self.peer_url()], TOKEN))
    }
}

/// N members sharing one temp dir (a data dir and log files per member);
/// killed on drop, with the tail of every log printed if the test failed.
struct Cluster {
    tmp: tempfile::TempDir,
    members: Vec<Member>,
    /// Arms the link-panic failpoint in every member: (index of the member
    /// whose incoming links panic, at which batch). Resolved to a member id
    /// at each spawn, since ids follow the ports.
    link_panic: Option<(usize, u32)>,
    /// The server binary: cairn, or real etcd for the differential test.
    binary: PathBuf,
    /// Flags given to every member besides the cluster's own.
    extra_args: Vec<String>,
    /// Environment given to the members spawned while it is set.
    extra_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `n` members and waits until every one serves a linearizable
    /// Range (so a leader is elected and known everywhere).
    fn start(n: usize) -> Cluster {
        let mut cluster = Cluster::new(n);
        cluster.spawn_all_and_wait();
        cluster
    }

    /// [`Cluster::start`] with a log the leader truncates soon (a snapshot
    /// every 100 entries, keeping 20 for followers): a member that was
    /// down for a few hundred writes catches up from a raft snapshot.
    fn start_with_short_log(n: usize) -> Cluster {
        Cluster::start_with_short_log_and_env(n, Vec::new())
    }

    /// [`Cluster::start_with_short_log`] with `env` given to every member.
    fn start_with_short_log_and_env(n: usize, env: Vec<(String, String)>) -> Cluster {
        let mut cluster = Cluster::new(n);
        cluster.extra_args = [
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "20",
        ]
        .map(String::from)
        .to_vec();
        cluster.extra_env = env;
        cluster.spawn_all_and_wait();
        cluster.extra_env.clear();
        cluster
    }

    /// The same with real etcd (`/usr/bin/etcd`), for differential tests.
    fn start_etcd(n: usize) -> Cluster {
        let mut cluster = Cluster::new(n);
        cluster.binary = common::etcd_path();
        cluster.spawn_all_and_wait();
        cluster
    }

    /// Starts every member and waits until all serve. A free port can be
    /// taken by another process between the probe and the bind: then every
    /// member starts again, from scratch, on new ports.
    fn spawn_all_and_wait(&mut self) {
        for attempt in 1..=3 {
            self.spawn_all();
            let mut ready = vec![false; self.members.len()];
            let mut lost_port = false;
            let settled = wait_until(START_TIMEOUT, || {
                for (i, ready) in ready.iter_mut().enumerate() {
                    if !*ready {
                        *ready = common::grpc::range_ok(&self.members[i].client_url());
                    }
                    if self.exited(i) {
                        lost_port = self.logs(i).contains("Address already in use");
                        return true;
                    }
                }
                ready.iter().all(|r| *r)
            });
            if settled && !lost_port && ready.iter().all(|r| *r) {
                return;
            }
            assert!(
                lost_port && attempt < 3,
                "the cluster did not start within {START_TIMEOUT:?} (ready: {ready:?})"
            );
            for i in 0..self.members.len() {
                self.kill(i);
                let _ = std::fs::remove_dir_all(self.tmp.path().join(&self.members[i].name));
                self.members[i].client_port = free_port();
                self.members[i].peer_port = free_port();
            }
        }
    }

    /// Whether member `i`'s process has exited on its own.
    /// Waits (≤ `timeout`) for member `i` to exit by itself; its exit code
    /// (None: still running, or killed by a signal).
    fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.members[i]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            status.is_some()
        });
        if status.is_some() {
            self.members[i].child = None;
        }
        status.and_then(|s| s.code())
    }

    fn exited(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        match m.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                m.child = None;
                true
            }
            _ => false,
        }
    }

    /// Picks ports and a temp dir for `n` members; starts none.
    fn new(n: usize) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-cluster-")
            .tempdir()
            .expect("create temp dir");
        let members = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                starts: 0,
                added_id: None,
            })
            .collect();
        Cluster {
            tmp,
            members,
            link_panic: None,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
        }
    }

    fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn_member(i);
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize, start: u32) -> PathBuf {
        self.tmp
            .path()
            .join(format!("{}-{start}.stderr", self.members[i].name))
    }

    /// Every incarnation's stderr of member `i`, oldest first.
    fn logs(&self, i: usize) -> String {
        (1..=self.members[i].starts)
            .map(|s| std::fs::read_to_string(self.log_path(i, s)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let env: Vec<(&str, String)> = self
            .link_panic
            .iter()
            .map(|&(target, batch)| {
                let id = self.members[target].id();
                (LINK_PANIC_ENV, format!("{id:x}:{batch}"))
            })
            .collect();
        let data_dir = self.tmp.path().join(&self.members[i].name);
        self.members[i].starts += 1;
        let log = File::create(self.log_path(i, self.members[i].starts)).expect("create log");
        let m = &self.members[i];
        let child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", TOKEN])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(&self.extra_args)
            .envs(env)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn cairn");
        self.members[i].child = Some(child);
    }

    /// SIGKILL and reap member `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    fn wait_ready(&self) {
        for i in self.live() {
            let url = self.members[i].client_url();
            assert!(
                wait_until(START_TIMEOUT, || common::grpc::range_ok(&url)),
                "member {} did not serve a linearizable Range within {START_TIMEOUT:?}",
                self.members[i].name
            );
        }
    }

    /// The index of the member every live member names as leader, once they
    /// agree and that member says it leads.
    fn agreed_leader(&self) -> Option<usize> {
        let live = self.live();
        let mut leader = None;
        for &i in &live {
            let s = status(&self.members[i].client_url())?;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
        }
        let leader = leader?;
        live.into_iter().find(|&i| self.members[i].id() == leader)
    }

    fn wait_leader(&self, timeout: Duration) -> usize {
        let mut leader = None;
        assert!(
            wait_until(timeout, || {
                leader = self.agreed_leader();
                leader.is_some()
            }),
            "no leader agreed on by every live member within {timeout:?}"
        );
        leader.expect("checked")
    }

    /// Waits until every live member has applied the same revision and
    /// reports the same HashKV at it; returns that revision.
    fn wait_converged(&self, timeout: Duration) -> i64 {
        let mut seen = Vec::new();
        let converged = wait_until(timeout, || {
            seen = self
                .live()
                .into_iter()
                .map(|i| hash_kv(&self.members[i].client_url()))
                .collect();
            seen.iter().all(|s| s.is_some() && *s == seen[0])
        });
        assert!(
            converged,
            "members did not converge within {timeout:?}: (revision, hash) = {seen:?}"
        );
        seen[0].expect("checked").0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                eprintln!(
                    "===== member {} ({:x}) =====\n{}",
                    self.members[i].name,
                    self.members[i].id(),
                    common::tail(&self.logs(i), 8_000)
                );
            }
        }
    }
}

fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    common::grpc::block_on(f)
}

async fn channel(url: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .ok()
}

/// Maintenance Status of one member (None if it does not answer).
fn status(url: &str) -> Option<StatusResponse> {
    let url = url.to_string();
    block_on(async move {
        let mut m = MaintenanceClient::new(channel(&url).await?);
        m.status(StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    })
}

/// etcd's errors of a write that met an election (or a member too starved
/// to answer in time): the write may be tried again.
const TRANSIENT: [&str; 3] = ["no leader", "leader changed", "request timed out"];

fn transient(error: &str) -> bool {
    TRANSIENT.iter().any(|t| error.contains(t))
}

/// Puts `key` through member `url`; the revision it was committed at. A
/// write that meets an election is tried again for up to 10 s: the shared
/// test machine can starve a leader long enough for its followers to elect
/// another, and these writes are not the subject of the test.
fn put(url: &str, key: &str, value: &str) -> Result<i64, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put_once(url, key, value) {
            Err(e) if transient(&e) && Instant::now() < deadline => {}
            done => return done,
        }
    }
}

/// One put through member `url`, whatever its outcome.
fn put_once(url: &str, key: &str, value: &str) -> Result<i64, String> {
    let (url, key, value) = (url.to_string(), key.to_string(), value.to_string());
    block_on(async move {
        let mut kv = KvClient::new(channel(&url).await.ok_or("cannot connect")?);
        let r = kv
            .put(PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    })
}

/// Puts through whichever member is up, retrying until `timeout`: a write
/// may meet an election (the shared test machine can starve a member long
/// enough for one), and must then commit once there is a leader again.
fn put_within(c: &Cluster, key: &str, value: &str, timeout: Duration) -> Result<i64, String> {
    let deadline = Instant::now() + timeout;
    let live = c.live();
    let mut attempt = 0;
    loop {
        let url = c.members[live[attempt % live.len()]].client_url();
        match put_once(&url, key, value) {
            Ok(rev) => return Ok(rev),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => attempt += 1,
        }
    }
}

/// Every key and value under `prefix`, read linearizably from member `url`.
fn get_prefix(url: &str, prefix: &str) -> Result<Vec<(String, String)>, String> {
    let (url, prefix) = (url.to_string(), prefix.to_string());
    block_on(async move {
        let mut kv = KvClient::new(channel(&url).await.ok_or("cannot connect")?);
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let r = kv
            .range(RangeRequest {
                key: prefix.into_bytes(),
                range_end: end,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.into_inner()
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect())
    })
}

#[test]
fn three_members_elect_one_leader_and_serve_follower_writes_everywhere() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let statuses: Vec<StatusResponse> = (0..3)
        .map(|i| status(&c.members[i].client_url()).expect("status"))
        .collect();
    let cluster_ids: Vec<u64> = statuses
        .iter()
        .map(|s| s.header.as_ref().expect("header").cluster_id)
        .collect();
    assert!(
        cluster_ids.iter().all(|&id| id == cluster_ids[0]),
        "one cluster id: {cluster_ids:x?}"
    );
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(
            s.header.as_ref().expect("header").member_id,
            c.members[i].id(),
            "member ids derived as etcd does"
        );
    }

    let follower = (leader + 1) % 3;
    let rev = put(
        &c.members[follower].client_url(),
        "f/key",
        "from-a-follower",
    )
    .expect("put on a follower is forwarded to the leader");
    assert!(rev > 1);
    for m in &c.members {
        // Linearizable: answered only once the member has applied the put.
        assert_eq!(
            get_prefix(&m.client_url(), "f/").expect("linearizable read"),
            vec![("f/key".to_string(), "from-a-follower".to_string())],
            "member {}",
            m.name
        );
    }
    c.wait_converged(Duration::from_secs(5));

    // The peer links count their bytes with etcd's metric names.
    let (l, f) = (&c.members[leader], &c.members[follower]);
    let sent = format!("etcd_network_peer_sent_bytes_total{{To=\"{:x}\"}}", f.id());
    let received = format!(
        "etcd_network_peer_received_bytes_total{{From=\"{:x}\"}}",
        l.id()
    );
    for (m, series) in [(l, sent), (f, received)] {
        let bytes = metric_sample(m.client_port, &series);
        assert!(bytes.is_some_and(|b| b > 0.0), "{series} = {bytes:?}");
    }
}

/// A member's /metrics (a plain HTTP/1.0 GET).
fn metrics_text(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    Some(text)
}

/// One sample of a member's /metrics.
fn metric_sample(port: u16, series: &str) -> Option<f64> {
    metrics_text(port)?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Every metric name that etcd's published Grafana dashboards and alert
/// rules read, from etcd's repository:
/// Documentation/op-guide/grafana.json (the sample dashboard),
/// contrib/mixin/dashboards/targets.libsonnet (the mixin's dashboard) and
/// contrib/mixin/alerts/alerts.libsonnet (the alerts). `up` is left out:
/// Prometheus makes it, not the target.
const DASHBOARD_AND_ALERT_METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_sent_failures_total",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "process_resident_memory_bytes",
];

/// etcd's dashboards and alerts find every metric they read on a cairn
/// member: the peer round trips are measured to each other member (the
/// prober), and a member that goes down shows in the others' send failures
/// (what `etcdMembersDown` reads).
#[test]
fn etcds_dashboards_and_alerts_find_their_metrics() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    put(&c.members[(leader + 1) % 3].client_url(), "k", "v").expect("put");
    for (i, m) in c.members.iter().enumerate() {
        for (j, peer) in c.members.iter().enumerate() {
            if i == j {
                continue;
            }
            let rtt = format!(
                "etcd_network_peer_round_trip_time_seconds_count{{To=\"{:x}\"}}",
                peer.id()
            );
            assert!(
                wait_until(Duration::from_secs(15), || metric_sample(
                    m.client_port,
                    &rtt
                )
                .is_some_and(|n| n > 0.0)),
                "member {} never timed a round trip to {}: {rtt}",
                m.name,
                peer.name
            );
            let sum = rtt.replace("_count{", "_sum{");
            let total = metric_sample(m.client_port, &sum).expect("the histogram's sum");
            assert!(
                total > 0.0 && total < 5.0,
                "{sum} = {total}: a loopback round trip"
            );
        }
    }

    let down = (leader + 2) % 3;
    let watcher = 3 - leader - down;
    // etcd's active_peers: 1 while the link is up, 0 once its member is down.
    let active = format!(
        "etcd_network_active_peers{{Local=\"{:x}\",Remote=\"{:x}\"}}",
        c.members[watcher].id(),
        c.members[down].id()
    );
    let port = c.members[watcher].client_port;
    assert!(
        wait_until(Duration::from_secs(10), || metric_sample(port, &active)
            == Some(1.0)),
        "{active} is not 1 while the link is up"
    );
    c.kill(down);
    assert!(
        wait_until(Duration::from_secs(10), || metric_sample(port, &active)
            == Some(0.0)),
        "{active} is not 0 once the member is down"
    );
    let failures = format!(
        "etcd_network_peer_sent_failures_total{{To=\"{:x}\"}}",
        c.members[down].id()
    );
    assert!(
        wait_until(Duration::from_secs(10), || metric_sample(
            c.members[watcher].client_port,
            &failures
        )
        .is_some_and(|n| n > 0.0)),
        "no {failures} on a live member once it is down"
    );
    let text = metrics_text(c.members[watcher].client_port).expect("/metrics");
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .collect();
    let missing: Vec<&&str> = DASHBOARD_AND_ALERT_METRICS
        .iter()
        .filter(|name| !names.contains(name))
        .collect();
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}");
}

/// Snapshot images count as peer traffic, and etcd's snapshot transfer
/// metrics count them: a member that comes back behind the leader's
/// truncated log receives an image; the leader counts it sent, the member
/// received, both with durations, and the received bytes cover the image.
#[test]
fn snapshot_transfers_show_in_the_peer_metrics() {
    let mut c = Cluster::start_with_short_log(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let lagging = (leader + 1) % 3;
    // Values big enough that the image outweighs the raft traffic the
    // member gets after it.
    let value = "v".repeat(2048);
    leave_behind(&mut c, (leader, lagging), (300, 150), &value);
    c.spawn_member(lagging);
    assert!(
        wait_until(Duration::from_secs(30), || c
            .logs(lagging)
            .contains("raft snapshot received")),
        "the member never received a snapshot"
    );
    c.wait_converged(Duration::from_secs(20));
    let logs = c.logs(lagging);
    let image: f64 = logs
        .lines()
        .filter(|l| l.contains("raft snapshot received"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("bytes=")?.parse().ok())
        })
        .expect("the image's size in the log");
    let (l, m) = (&c.members[leader], &c.members[lagging]);
    let to = format!("{{To=\"{:x}\"}}", m.id());
    let from = format!("{{From=\"{:x}\"}}", l.id());
    let sample = |port: u16, series: String| {
        let value = metric_sample(port, &series);
        assert!(value.is_some(), "no {series}");
        (series, value.unwrap_or_default())
    };
    for (series, value) in [
        sample(
            l.client_port,
            format!("etcd_network_snapshot_send_success{to}"),
        ),
        sample(
            l.client_port,
            format!("etcd_network_snapshot_send_total_duration_seconds_count{to}"),
        ),
        sample(
            m.client_port,
            format!("etcd_network_snapshot_receive_success{from}"),
        ),
        sample(
            m.client_port,
            format!("etcd_network_snapshot_receive_total_duration_seconds_count{from}"),
        ),
    ] {
        assert!(value >= 1.0, "{series} = {value}");
    }
    for (series, value) in [
        sample(
            l.client_port,
            format!("etcd_network_snapshot_send_inflights_total{to}"),
        ),
        sample(
            m.client_port,
            format!("etcd_network_snapshot_receive_inflights_total{from}"),
        ),
    ] {
        assert_eq!(value, 0.0, "{series}");
    }
    let (series, received) = sample(
        m.client_port,
        format!("etcd_network_peer_received_bytes_total{from}"),
    );
    assert!(
        received >= image,
        "{series} = {received}, image {image} bytes"
    );
    let (series, sent) = sample(
        l.client_port,
        format!("etcd_network_peer_sent_bytes_total{to}"),
    );
    assert!(sent >= image, "{series} = {sent}, image {image} bytes");
}

#[test]
fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let old = c.wait_leader(START_TIMEOUT);
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut seq = 0u32;
    // Writes through every member in turn until `until` holds; failures
    // (the killed member, no leader yet) are retried on the next member.
    let mut write_until = |c: &Cluster, acked: &mut Vec<(String, String)>, want: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let live = c.live();
        while acked.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} writes acknowledged",
                acked.len()
            );
            seq += 1;
            let (key, value) = (format!("w/{seq:05}"), format!("v{seq}"));
            let url = c.members[live[seq as usize % live.len()]].client_url();
            if put_once(&url, &key, &value).is_ok() {
                acked.push((key, value));
            }
        }
    };
    write_until(&c, &mut acked, 30);

    c.kill(old);
    let killed = Instant::now();
    let new = c.wait_leader(Duration::from_secs(10));
    let elected_after = killed.elapsed();
    assert_ne!(new, old);
    eprintln!("new leader elected {elected_after:?} after SIGKILL of the old one");
    assert!(
        elected_after < Duration::from_millis(ELECTION_MS * 8),
        "election took {elected_after:?}"
    );
    write_until(&c, &mut acked, 60);

    c.spawn_member(old);
    c.wait_ready();
    write_until(&c, &mut acked, 70);
    let rev = c.wait_converged(Duration::from_secs(10));
    assert!(rev > 70, "revision {rev} after 70 acknowledged puts");

    // The rejoined member is a full voter again: without the current
    // leader, it and the third member elect a leader and commit.
    let second = c.wait_leader(Duration::from_secs(5));
    c.kill(second);
    let next = c.wait_leader(Duration::from_secs(10));
    assert_ne!(next, second);
    write_until(&c, &mut acked, 90);
    c.spawn_member(second);
    c.wait_ready();
    c.wait_converged(Duration::from_secs(10));
    for m in &c.members {
        let got = get_prefix(&m.client_url(), "w/").expect("linearizable read");
        for (k, v) in &acked {
            assert!(
                got.iter().any(|(gk, gv)| gk == k && gv == v),
                "acknowledged {k}={v} missing on member {}",
                m.name
            );
        }
    }
}

#[test]
fn a_panicking_link_restarts_while_writes_keep_committing() {
    // Every member's link to m3 panics once, when it is about to send its
    // 40th batch: on the leader that is mid-way through the writes below.
    let mut c = Cluster::new(3);
    c.link_panic = Some((2, 40));
    c.spawn_all_and_wait();
    let m3 = format!("{:x}", c.members[2].id());
    c.wait_leader(START_TIMEOUT);

    let mut panicked = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while panicked.is_none() || n < 100 {
        assert!(
            Instant::now() < deadline,
            "after {n} writes: link panicked = {panicked:?}"
        );
        n += 1;
        put_within(&c, &format!("p/{n:04}"), "x", Duration::from_secs(5))
            .expect("writes keep committing while a link restarts");
        if panicked.is_none() {
            panicked = (0..3).find(|&i| c.logs(i).contains("peer link sender panicked"));
        }
    }
    let who = panicked.expect("checked");
    // The link came back: a new stream to m3 after the panic.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let logs = c.logs(who);
            let at = logs.find("peer link sender panicked").expect("seen");
            logs[at..]
                .lines()
                .any(|l| l.contains("peer link connected") && l.contains(&m3))
        }),
        "the link from {} to m3 did not reconnect after its panic",
        c.members[who].name
    );
    c.wait_converged(Duration::from_secs(10));
    let got = get_prefix(&c.members[2].client_url(), "p/").expect("read on m3");
    assert_eq!(got.len(), n, "m3 has every write");
}

#[test]
fn a_member_of_another_cluster_is_refused() {
    let c = Cluster::start(1);
    // A stranger whose --initial-cluster names the first member's peer URL
    // under another token: its link sends to that URL with its own cluster id.
    let stranger_peer = free_port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let log_path = tmp.path().join("stranger.stderr");
    let log = File::create(&log_path).expect("log");
    let peer = format!("http://127.0.0.1:{stranger_peer}");
    let client = format!("http://127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--name", "stranger"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args([
            "--initial-cluster",
            &format!("stranger={peer},m1={}", c.members[0].peer_url()),
        ])
        .args(["--initial-cluster-token", "another-cluster"])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("spawn stranger");
    let refused = wait_until(Duration::from_secs(15), || {
        c.logs(0).contains("request cluster ID mismatch")
            && std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("request sent was ignored by remote peer due to cluster ID mismatch")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        refused,
        "no cluster ID mismatch logged; stranger's log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    // The member carries on.
    put(&c.members[0].client_url(), "still", "serving").expect("put");
}

/// A linearizable Range of `key` through `url`, with a client deadline
/// longer than the server's request timeout (5 s + 2 election timeouts).
fn get_slowly(url: &str, key: &str) -> Result<usize, tonic::Status> {
    let (url, key) = (url.to_string(), key.to_string());
    block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| tonic::Status::unknown(e.to_string()))?
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = KvClient::new(channel)
            .range(RangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().kvs.len())
    })
}

#[test]
fn a_leader_cut_off_from_its_followers_answers_no_linearizable_read() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let url = c.members[leader].client_url();
    put(&url, "before", "x").expect("put while the cluster is whole");
    assert_eq!(get_slowly(&url, "before").map_err(|e| e.to_string()), Ok(1));
    for i in (0..3).filter(|&i| i != leader) {
        c.kill(i);
    }
    // It may still believe it leads for an election timeout (check-quorum
    // then deposes it), but without a quorum it must not confirm a read.
    let started = Instant::now();
    let read = get_slowly(&url, "before");
    let status = read.expect_err("a member without a quorum answered a linearizable read");
    assert_eq!(
        status.message(),
        "etcdserver: request timed out",
        "{status:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    let s = status_of_minority(&url);
    assert!(
        s.is_none_or(|leader| leader == 0),
        "still reports leader {s:?}"
    );
}

/// The leader a lone member reports (None when Status fails, as it does
/// with no leader).
fn status_of_minority(url: &str) -> Option<u64> {
    status(url).map(|s| s.leader)
}

/// A membership change through etcdctl, asked again while it is refused
/// with `unhealthy cluster` (etcd's strict check counts a peer as active
/// only once its link has been up for 5 s, so right after a start or a
/// leader change it refuses; so does cairn). Checked to succeed.
fn member_change(endpoint: &str, args: &[&str]) -> String {
    let mut last = None;
    let done = wait_until(Duration::from_secs(20), || {
        let out = common::etcdctl_at(endpoint, args, None);
        let refused = String::from_utf8_lossy(&out.stderr).contains("unhealthy cluster");
        last = Some(out);
        !refused
    });
    let out = last.expect("asked at least once");
    assert!(
        done && out.status.success(),
        "etcdctl {args:?} on {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl against one member (`host:port`), checked to succeed.
fn etcdctl_on(endpoint: &str, args: &[&str]) -> String {
    let args: Vec<&str> = ["--command-timeout=10s"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    // As `put`: a command that met an election is run again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = common::etcdctl_at(endpoint, &args, None);
        let failed = !out.status.success() && transient(&String::from_utf8_lossy(&out.stderr));
        if !failed || Instant::now() >= deadline {
            break out;
        }
    };
    assert!(
        out.status.success(),
        "etcdctl {args:?} on {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Keep-alive and time-to-live sent to a follower reach the leader's
/// lessor (etcd forwards them); grant, attach and revoke go through raft.
#[test]
fn leases_work_through_a_follower() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let follower = c.members[(leader + 1) % 3].client_url();
    let ep = follower.trim_start_matches("http://").to_string();

    let granted = etcdctl_on(&ep, &["lease", "grant", "30"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl_on(&ep, &["put", "svc/a", "10.0.0.1", "--lease", &id]);
    let kept = etcdctl_on(&ep, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(kept.trim(), format!("lease {id} keepalived with TTL(30)"));
    let ttl = etcdctl_on(&ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([svc/a])"),
        "{ttl}"
    );
    let unknown = etcdctl_on(&ep, &["lease", "timetolive", "1234abcd"]);
    assert!(unknown.contains("already expired"), "{unknown}");

    etcdctl_on(&ep, &["lease", "revoke", &id]);
    for m in &c.members {
        assert_eq!(get_prefix(&m.client_url(), "svc/").expect("read"), vec![]);
    }
}

/// A member whose disk died must not come back under its old identity with
/// an empty data dir: the leader still counts on the entries it had
/// acknowledged. As in etcd ("tocommit is out of range ... was the raft log
/// corrupted, truncated, or lost?"), the member stops loudly at once (exit
/// 70, one fatal line) and the rest of the cluster carries on. The etcd
/// runbook's way out is member remove + add (runtime reconfiguration).
#[test]
fn a_member_with_a_wiped_data_dir_stops_loudly_and_harms_nothing() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let victim = (leader + 1) % 3;
    let writer = c.members[leader].client_url();
    for i in 0..20 {
        put(&writer, &format!("r/{i:02}"), "before").expect("put");
    }
    c.kill(victim);
    std::fs::remove_dir_all(c.tmp.path().join(&c.members[victim].name)).expect("wipe");
    c.spawn_member(victim);
    assert_eq!(
        c.wait_exit(victim, START_TIMEOUT),
        Some(70),
        "the wiped member kept running; logs:\n{}",
        c.logs(victim)
    );
    let logs = c.logs(victim);
    let fatal: Vec<&str> = logs.lines().filter(|l| l.contains("fatal:")).collect();
    assert_eq!(fatal.len(), 1, "{logs}");
    assert!(fatal[0].contains("out of range"), "{}", fatal[0]);

    // The two others still form a quorum: writes and reads go on.
    put(&writer, "after", "x").expect("put with 2 of 3");
    c.wait_converged(Duration::from_secs(10));
    assert_eq!(get_prefix(&writer, "r/").expect("read").len(), 20);
}

/// A member that was down while the log moved on past it catches up from a
/// raft snapshot: the leader truncates its log (short --snapshot-count and
/// catch-up window), the member comes back needing entries the leader no
/// longer has, and the leader streams it an image of its applied state.
/// The first time, the member crashes (failpoint) half-way through
/// installing the image; restarted, it finishes the install from the state
/// it prepared and kept. Afterwards it holds every key, revision, lease and compaction
/// the leader does (HashKV equal at the same revision) and goes on
/// replicating.
#[test]
fn a_member_behind_the_truncated_log_catches_up_from_a_snapshot() {
    let mut c = Cluster::start_with_short_log(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let lagging = (leader + 1) % 3;
    let writer = c.members[leader].client_url();
    let ep = writer.trim_start_matches("http://").to_string();
    put(&writer, "before", "1").expect("put");
    let granted = etcdctl_on(&ep, &["lease", "grant", "600"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl_on(&ep, &["put", "leased", "x", "--lease", &lease]);
    c.wait_converged(Duration::from_secs(10));

    c.kill(lagging);
    for i in 0..300 {
        put(&writer, &format!("s/{:03}", i % 150), &format!("v{i}")).expect("put");
    }
    etcdctl_on(&ep, &["del", "before"]);
    let compact_at = put(&writer, "mark", "m").expect("put");
    etcdctl_on(&ep, &["compaction", &compact_at.to_string()]);
    for i in 0..100 {
        put(&writer, &format!("t/{i:03}"), "w").expect("put");
    }
    assert!(
        wait_until(Duration::from_secs(20), || c
            .logs(leader)
            .contains("raft log truncated")),
        "the leader never truncated its log"
    );

    c.extra_env = vec![(
        "CAIRN_FAILPOINT_PANIC".to_string(),
        "snapshot-install".to_string(),
    )];
    c.spawn_member(lagging);
    c.extra_env.clear();
    assert_eq!(
        c.wait_exit(lagging, Duration::from_secs(30)),
        Some(70),
        "the member did not crash while installing the snapshot"
    );
    c.spawn_member(lagging);
    // fjall (the default engine) kept the state it ingested while the
    // image arrived; no copy of the image was written to a file.
    assert!(
        wait_until(Duration::from_secs(30), || c.logs(lagging).contains(
            "finishing the install of a raft snapshot (the state it prepared)"
        )),
        "the restarted member did not finish the install"
    );
    let snap_dir = c
        .tmp
        .path()
        .join(&c.members[lagging].name)
        .join("member")
        .join("snap");
    let files: Vec<_> = std::fs::read_dir(&snap_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "files in {}: {files:?}",
        snap_dir.display()
    );
    assert!(c.logs(leader).contains("raft snapshot sent"));
    c.wait_ready();
    let rev = c.wait_converged(Duration::from_secs(20));
    assert!(rev >= compact_at + 100, "revision {rev}");
    let url = c.members[lagging].client_url();
    let lagging_ep = url.trim_start_matches("http://").to_string();
    assert_eq!(get_prefix(&url, "s/").expect("read").len(), 150);
    assert_eq!(get_prefix(&url, "before").expect("read"), vec![]);
    let ttl = etcdctl_on(&lagging_ep, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    let below = (compact_at - 1).to_string();
    let old = common::etcdctl_at(&lagging_ep, &["get", "s/000", "--rev", &below], None);
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && err.contains("required revision has been compacted"),
        "a read below the leader's compaction on the member: {err}"
    );

    // It replicates on from the snapshot like any member.
    put(&writer, "after", "1").expect("put");
    c.wait_converged(Duration::from_secs(10));
    assert_eq!(
        get_prefix(&url, "after").expect("read"),
        vec![("after".to_string(), "1".to_string())]
    );
}

/// Kills `lagging`, then writes `puts` values to keys `s/000`… (`keys` of
/// them, in turn) through `leader` and waits until it truncated its log:
/// restarted, the member needs a raft snapshot.
fn leave_behind(
    c: &mut Cluster,
    (leader, lagging): (usize, usize),
    (puts, keys): (usize, usize),
    value: &str,
) {
    let writer = c.members[leader].client_url();
    c.kill(lagging);
    for i in 0..puts {
        put(&writer, &format!("s/{:03}", i % keys), value).expect("put");
    }
    assert!(
        wait_until(Duration::from_secs(20), || c
            .logs(leader)
            .contains("raft log truncated")),
        "the leader never truncated its log"
    );
}

/// A snapshot stream cut half-way (the leader's image reader panics at its
/// third 1 MiB chunk: a restartable part, the leader lives on) while the
/// member ingests it as it arrives: the member drops what it ingested,
/// keeps its state, and the leader's next stream goes in. Afterwards the
/// member's fjall keyspace holds one state partition (the half-ingested
/// one is gone) and it reads every key the leader does.
#[test]
fn a_snapshot_stream_cut_half_way_leaves_the_old_state_and_the_retry_goes_in() {
    let mut c = Cluster::start_with_short_log_and_env(
        3,
        vec![(
            "CAIRN_FAILPOINT_PANIC".to_string(),
            "snapshot-send-chunk@3".to_string(),
        )],
    );
    let leader = c.wait_leader(START_TIMEOUT);
    let lagging = (leader + 1) % 3;
    let writer = c.members[leader].client_url();
    put(&writer, "before", "1").expect("put");
    c.wait_converged(Duration::from_secs(10));
    // About 6 MiB of image: several chunks.
    let value = "v".repeat(16 << 10);
    leave_behind(&mut c, (leader, lagging), (400, 400), &value);
    c.spawn_member(lagging);
    assert!(
        wait_until(Duration::from_secs(30), || c
            .logs(lagging)
            .contains("raft snapshot stream cut")),
        "the member never saw a cut stream; leader:\n{}",
        c.logs(leader)
    );
    // Whoever led then (an election under load may have moved it).
    let sender_logs = || (0..3).map(|i| c.logs(i)).collect::<String>();
    assert!(sender_logs().contains("panic in a restartable part"));
    let rev = c.wait_converged(Duration::from_secs(30));
    let url = c.members[lagging].client_url();
    // A few keys at a time: all 400 values are past a response's size limit.
    for first in ["s/00", "s/19", "s/39"] {
        let got = get_prefix(&url, first).expect("read");
        assert_eq!(got.len(), 10, "{first}");
        assert!(got.iter().all(|(_, v)| *v == value), "{first}");
    }
    assert_eq!(
        get_prefix(&writer, "s/39").expect("read"),
        get_prefix(&url, "s/39").expect("read")
    );
    assert_eq!(
        get_prefix(&url, "before").expect("read"),
        vec![("before".to_string(), "1".to_string())]
    );
    let logs = c.logs(lagging);
    assert!(logs.contains("pipelined=true"), "{logs}");
    let partitions = c
        .tmp
        .path()
        .join(&c.members[lagging].name)
        .join("member/state-fjall/partitions");
    let cairn_partitions = || {
        std::fs::read_dir(&partitions)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("cairn-mvcc"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || cairn_partitions() == 1),
        "{} state partitions left in {} at revision {rev}",
        cairn_partitions(),
        partitions.display()
    );
    assert!(sender_logs().contains("raft snapshot sent"));
}

/// `member add` through `ep`, then starts the new member as etcdctl says
/// (`--initial-cluster-state existing`, every member's name and peer URL in
/// `--initial-cluster`); returns its index in `c.members`.
fn add_member(c: &mut Cluster, ep: &str, name: &str, learner: bool) -> usize {
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let mut args = vec!["member", "add", name, "--peer-urls", &peer];
    if learner {
        args.push("--learner");
    }
    let out = member_change(ep, &args);
    let id = out
        .split_whitespace()
        .nth(1)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("member add said {out:?}"));
    assert!(out.contains(&format!("ETCD_NAME=\"{name}\"")), "{out}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    c.members.push(Member {
        name: name.to_string(),
        client_port: free_port(),
        peer_port: port,
        child: None,
        starts: 0,
        added_id: Some(id),
    });
    let i = c.members.len() - 1;
    c.extra_args = vec!["--initial-cluster-state".into(), "existing".into()];
    c.spawn_member(i);
    c.extra_args.clear();
    i
}

/// A member added at runtime has a random id, which `--initial-cluster`
/// (names and URLs) cannot give. A member that joins later must still take
/// that member's raft stream before its first snapshot: here the runtime
/// member leads, so the joiner's snapshot can only come from it. (Found by
/// the robustness harness's member-replace runs: the joiner refused the
/// leader's stream as "not in this cluster" and never served.)
#[test]
fn a_member_joining_takes_the_stream_of_a_leader_added_at_runtime() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let ep = c.members[leader].endpoint();
    put(&c.members[leader].client_url(), "k/0", "before").expect("put");
    let fourth = add_member(&mut c, &ep, "m4", false);
    c.wait_ready();
    let fourth_hex = format!("{:x}", c.members[fourth].id());
    assert!(
        wait_until(START_TIMEOUT, || common::etcdctl_at(
            &ep,
            &["move-leader", &fourth_hex],
            None
        )
        .status
        .success()),
        "leadership never moved to the runtime member"
    );
    assert_eq!(c.wait_leader(START_TIMEOUT), fourth);
    let ep4 = c.members[fourth].endpoint();
    let fifth = add_member(&mut c, &ep4, "m5", false);
    c.wait_ready();
    assert!(
        !c.logs(fifth).contains("not in this cluster refused"),
        "the joiner refused a member's stream:\n{}",
        c.logs(fifth)
    );
    assert_eq!(
        get_prefix(&c.members[fifth].client_url(), "k/").expect("read on the joiner"),
        vec![("k/0".to_string(), "before".to_string())]
    );
}

/// The runtime reconfiguration runbook with etcdctl: `member add` a fourth
/// member and start it with `--initial-cluster-state existing` (it learns
/// its id from the cluster and its state from the leader's snapshot), add
/// a learner that refuses writes and linearizable reads until `member
/// promote`, and `member remove` a follower, which stops by itself while
/// the others carry on; every member ends with the same data.
#[test]
fn members_are_added_promoted_and_removed_at_runtime() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let ep = c.members[leader].endpoint();
    put(&c.members[leader].client_url(), "k/0", "before").expect("put");

    let add = |c: &mut Cluster, name: &str, learner: bool| add_member(c, &ep, name, learner);
    let fourth = add(&mut c, "m4", false);
    c.wait_ready();
    let url4 = c.members[fourth].client_url();
    assert_eq!(
        get_prefix(&url4, "k/").expect("read on the new member"),
        vec![("k/0".to_string(), "before".to_string())]
    );
    put(&url4, "k/1", "through m4").expect("write through the new member");
    c.wait_converged(Duration::from_secs(10));
    let list = etcdctl_on(&ep, &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(
        list.contains(&c.members[fourth].client_url()),
        "m4 published its URLs: {list}"
    );

    // A learner: replicated, but no writes and no linearizable reads.
    let learner = add(&mut c, "m5", true);
    let url5 = c.members[learner].client_url();
    let ep5 = url5.trim_start_matches("http://").to_string();
    assert!(
        wait_until(START_TIMEOUT, || common::etcdctl_at(
            &ep5,
            &["get", "k/1", "--consistency=s"],
            None
        )
        .stdout
        .starts_with(b"k/1")),
        "the learner did not catch up"
    );
    let refused = common::etcdctl_at(&ep5, &["put", "k/2", "x"], None);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("rpc not supported for learner"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let learner_id = format!("{:x}", c.members[learner].id());
    assert!(etcdctl_on(&ep, &["member", "list"]).contains("true"));
    let promoted = etcdctl_on(&ep, &["member", "promote", &learner_id]);
    assert!(promoted.contains("promoted"), "{promoted}");
    assert!(
        wait_until(Duration::from_secs(10), || put(&url5, "k/2", "promoted")
            .is_ok()),
        "the promoted member takes no writes"
    );

    // Remove a follower: it stops by itself; the others go on.
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = (0..c.members.len())
        .find(|&i| i != leader && i != fourth && i != learner)
        .expect("a follower");
    let victim_id = format!("{:x}", c.members[victim].id());
    etcdctl_on(&ep, &["member", "remove", &victim_id]);
    assert_eq!(
        c.wait_exit(victim, Duration::from_secs(20)),
        Some(0),
        "the removed member kept running"
    );
    assert!(c
        .logs(victim)
        .contains("permanently removed from the cluster"));
    let list = etcdctl_on(&ep, &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(!list.contains(&victim_id), "{list}");
    put(&c.members[fourth].client_url(), "k/3", "after").expect("put");
    c.wait_converged(Duration::from_secs(10));

    // etcd's errors.
    let again = common::etcdctl_at(&ep, &["member", "remove", &victim_id], None);
    assert!(String::from_utf8_lossy(&again.stderr).contains("member not found"));
    let taken = common::etcdctl_at(
        &ep,
        &[
            "member",
            "add",
            "dup",
            "--peer-urls",
            &c.members[fourth].peer_url(),
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&taken.stderr).contains("Peer URLs already exists"));

    // Strict reconfiguration: with a voter down, adding one is refused
    // (etcd's `unhealthy cluster`); removing the one that is down is fine.
    let asker = (0..c.members.len())
        .find(|&i| {
            c.members[i]
                .client_url()
                .ends_with(&ep[ep.find(':').unwrap_or(0)..])
        })
        .expect("the member etcdctl talks to");
    let down = c
        .live()
        .into_iter()
        .find(|&i| i != asker && i != c.wait_leader(Duration::from_secs(10)))
        .expect("a follower to stop");
    let down_id = format!("{:x}", c.members[down].id());
    let lost = |c: &Cluster| {
        c.logs(asker)
            .lines()
            .filter(|l| l.contains("lost the stream") && l.contains(&down_id))
            .count()
    };
    let before = lost(&c);
    c.kill(down);
    assert!(
        wait_until(Duration::from_secs(20), || lost(&c) > before),
        "the link to the stopped member never noticed"
    );
    let refused = common::etcdctl_at(
        &ep,
        &[
            "member",
            "add",
            "m6",
            "--peer-urls",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        None,
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unhealthy cluster"),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    etcdctl_on(&ep, &["member", "remove", &down_id]);
    put(&c.members[asker].client_url(), "k/4", "after").expect("put");
}

/// etcd's disaster recovery when a quorum is lost for good: two of three
/// members are gone; the survivor restarts with `--force-new-cluster` as
/// the only member of its cluster, with every acknowledged write, serves
/// writes again, and stays a one-member cluster after a normal restart.
#[test]
fn force_new_cluster_recovers_a_survivor_of_a_lost_quorum() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let url = c.members[leader].client_url();
    for i in 0..30 {
        put(&url, &format!("f/{i:02}"), "kept").expect("put");
    }
    c.wait_converged(Duration::from_secs(10));
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        c.kill(i);
    }
    c.extra_args = vec!["--force-new-cluster".into()];
    c.spawn_member(survivor);
    c.extra_args.clear();
    let url = c.members[survivor].client_url();
    let ep = url.trim_start_matches("http://").to_string();
    assert!(
        wait_until(START_TIMEOUT, || put(&url, "f/after", "new").is_ok()),
        "the survivor takes no writes after --force-new-cluster"
    );
    assert!(c.logs(survivor).contains("forcing a new cluster"));
    assert_eq!(get_prefix(&url, "f/").expect("read").len(), 31);
    let list = etcdctl_on(&ep, &["member", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");

    // A normal restart keeps it a one-member cluster.
    c.kill(survivor);
    c.spawn_member(survivor);
    assert!(
        wait_until(START_TIMEOUT, || put(&url, "f/again", "x").is_ok()),
        "no writes after a normal restart"
    );
    assert_eq!(get_prefix(&url, "f/").expect("read").len(), 32);
}

/// `etcdctl move-leader` (Maintenance.MoveLeader): leadership moves to the
/// named voter; a follower refuses the RPC and an unknown id is a bad
/// transferee, with etcd's errors.
#[test]
fn move_leader_hands_leadership_to_the_named_member() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let target = (leader + 1) % 3;
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let all = endpoints.join(",");
    let target_hex = format!("{:x}", c.members[target].id());
    let out = etcdctl_on(&all, &["move-leader", &target_hex]);
    assert_eq!(
        out.trim(),
        format!(
            "Leadership transferred from {:x} to {target_hex}",
            c.members[leader].id()
        )
    );
    assert_eq!(c.wait_leader(START_TIMEOUT), target);
    put(&c.members[leader].client_url(), "after/move", "x").expect("writes go on");

    let follower = (target + 1) % 3;
    let url = c.members[follower].client_url();
    let refused = block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut m = MaintenanceClient::new(channel);
        let not_leader = m
            .move_leader(cairn::proto::etcdserverpb::MoveLeaderRequest { target_id: 1 })
            .await
            .expect_err("a follower refuses");
        (not_leader.code(), not_leader.message().to_string())
    });
    assert_eq!(
        refused,
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: not leader".to_string()
        )
    );
    let url = c.members[target].client_url();
    let bad = block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let e = MaintenanceClient::new(channel)
            .move_leader(cairn::proto::etcdserverpb::MoveLeaderRequest { target_id: 0x1234 })
            .await
            .expect_err("not a member");
        e.message().to_string()
    });
    assert_eq!(bad, "etcdserver: bad leader transferee");
}

/// Members publish their name and client URLs through the log (etcd's
/// publish): every member lists every member's client URLs, so etcdctl's
/// `--cluster` forms reach the whole cluster from any one endpoint.
#[test]
fn every_member_lists_every_client_url() {
    let c = Cluster::start(3);
    c.wait_leader(START_TIMEOUT);
    let mut want: Vec<String> = c
        .members
        .iter()
        .map(|m| {
            // etcdctl 3.4: ID, status, name, peer URLs, client URLs, is learner.
            format!(
                "{:x}, started, {}, {}, {}, false",
                m.id(),
                m.name,
                m.peer_url(),
                m.client_url()
            )
        })
        .collect();
    want.sort();
    for m in &c.members {
        let ep = m.endpoint();
        let mut got = Vec::new();
        let listed = wait_until(Duration::from_secs(10), || {
            let out = etcdctl_on(&ep, &["member", "list"]);
            got = out.lines().map(str::to_string).collect();
            got.sort();
            got == want
        });
        assert!(listed, "member list on {}: {got:?}, want {want:?}", m.name);
    }
    let ep = c.members[0].endpoint();
    let status = etcdctl_on(&ep, &["endpoint", "status", "--cluster"]);
    for m in &c.members {
        assert!(status.contains(&m.client_url()), "{status}");
    }
}

/// HashKV of a member at `revision`.
fn hash_kv_at(url: &str, revision: i64) -> Option<u32> {
    let url = url.to_string();
    block_on(async move {
        let mut m = MaintenanceClient::new(channel(&url).await?);
        let r = m.hash_kv(HashKvRequest { revision }).await.ok()?;
        Some(r.into_inner().hash)
    })
}

/// etcd's disaster recovery: a snapshot saved from a running cluster under
/// write load, restored into every member of a new 3-member cluster (new
/// ports, so new member and cluster ids), which then serves the same data:
/// HashKV at the snapshot's revision equals the old cluster's on every
/// member, and the new cluster takes writes.
#[test]
fn a_new_cluster_restored_from_a_snapshot_taken_under_writes_holds_the_data() {
    let old = Cluster::start(3);
    let leader = old.wait_leader(START_TIMEOUT);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (old.members[leader].client_url(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 5_000 {
                put(&url, &format!("w/{:03}", n % 200), &n.to_string()).expect("put");
                n += 1;
            }
            n
        })
    };
    assert!(wait_until(Duration::from_secs(20), || {
        get_prefix(&old.members[leader].client_url(), "w/").is_ok_and(|kvs| kvs.len() == 200)
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let follower = old.members[(leader + 1) % 3].client_url();
    let ep = follower.trim_start_matches("http://").to_string();
    let saved = etcdctl_on(&ep, &["snapshot", "save", &file.to_string_lossy()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.join().expect("writer") > 200);

    let mut new = Cluster::new(3);
    let initial = new.initial_cluster();
    for m in &new.members {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["snapshot", "restore", &file.to_string_lossy()])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(new.tmp.path().join(&m.name))
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                TOKEN,
            ])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .output()
            .expect("run cairn snapshot restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    new.spawn_all();
    new.wait_ready();
    new.wait_leader(START_TIMEOUT);
    let status = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["snapshot", "status", &file.to_string_lossy(), "-w", "json"])
        .output()
        .expect("snapshot status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let revision = status["revision"].as_i64().expect("revision");
    let want = hash_kv_at(&old.members[leader].client_url(), revision).expect("old hash");
    for m in &new.members {
        assert_eq!(
            hash_kv_at(&m.client_url(), revision),
            Some(want),
            "member {}",
            m.name
        );
    }
    let rev = put(&new.members[0].client_url(), "after/restore", "x")
        .expect("the new cluster takes writes");
    assert_eq!(rev, revision + 1);
    new.wait_converged(Duration::from_secs(10));
}

/// A two-put Txn through `url` with a long client timeout: the server's
/// own error (or success) and how long it took.
fn txn_slowly(url: &str, a: &str, b: &str) -> (Result<(), tonic::Status>, Duration) {
    use cairn::proto::etcdserverpb::{request_op, RequestOp, TxnRequest};
    let (url, a, b) = (url.to_string(), a.to_string(), b.to_string());
    block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect");
        let put = |k: String| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        let started = Instant::now();
        let r = KvClient::new(channel)
            .txn(TxnRequest {
                success: vec![put(a), put(b)],
                ..Default::default()
            })
            .await
            .map(|_| ());
        (r, started.elapsed())
    })
}

/// With a majority of members stopped, a write fails with etcd's error
/// within the request timeout (5 s + 2 election timeouts), and once the
/// quorum is back nothing is half-applied: the Txn's two keys are both
/// there or both absent, on every member.
#[test]
fn a_majority_down_fails_writes_in_time_and_half_applies_nothing() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            c.kill(i);
        }
    }
    let (result, took) = txn_slowly(&c.members[survivor].client_url(), "q/a", "q/b");
    let err = result.expect_err("no quorum: the write cannot be acknowledged");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        [
            "etcdserver: request timed out",
            "etcdserver: no leader",
            "etcdserver: leader changed"
        ]
        .contains(&err.message()),
        "{err:?}"
    );
    let request_timeout = Duration::from_secs(5) + 2 * Duration::from_millis(ELECTION_MS);
    assert!(
        took <= request_timeout + Duration::from_secs(2),
        "took {took:?}"
    );

    for i in 0..3 {
        if i != survivor {
            c.spawn_member(i);
        }
    }
    c.wait_ready();
    c.wait_converged(Duration::from_secs(20));
    for m in &c.members {
        let kvs = get_prefix(&m.client_url(), "q/").expect("read");
        assert!(
            kvs.is_empty() || kvs.len() == 2,
            "half-applied on {}: {kvs:?}",
            m.name
        );
    }
}

/// Five members tolerate two down, the leader among them: a new leader is
/// elected, writes and linearizable reads go on, and the two rejoin and
/// converge with everything written meanwhile.
#[test]
fn five_members_survive_two_down_including_the_leader() {
    let mut c = Cluster::start(5);
    let leader = c.wait_leader(START_TIMEOUT);
    let other = (leader + 2) % 5;
    put(&c.members[other].client_url(), "five/before", "x").expect("put");
    c.kill(leader);
    c.kill((leader + 1) % 5);
    let new_leader = c.wait_leader(START_TIMEOUT);
    assert!(new_leader != leader);
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("five/{i:02}");
        put_within(&c, &key, "during", Duration::from_secs(10)).expect("put with 3 of 5");
        acked.push(key);
    }
    c.spawn_member(leader);
    c.spawn_member((leader + 1) % 5);
    c.wait_ready();
    c.wait_converged(Duration::from_secs(20));
    for m in &c.members {
        let got = get_prefix(&m.client_url(), "five/").expect("linearizable read");
        assert_eq!(got.len(), acked.len() + 1, "member {}", m.name);
    }
}

/// A leader stopped with SIGTERM hands leadership to the most up-to-date
/// voter before it exits (etcd does the same), so the others need no
/// election timeout: they agree on the member it named.
#[test]
fn a_leader_stopping_gracefully_hands_leadership_over() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(START_TIMEOUT);
    put(&c.members[leader].client_url(), "k", "v").expect("put");
    let mut child = c.members[leader].child.take().expect("running");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let mut exited = None;
    assert!(wait_until(Duration::from_secs(20), || {
        exited = child.try_wait().ok().flatten();
        exited.is_some()
    }));
    assert!(
        exited.is_some_and(|s| s.success()),
        "exit status {exited:?}"
    );
    let logs = c.logs(leader);
    let line = logs
        .lines()
        .find(|l| l.contains("leadership handed over"))
        .unwrap_or_else(|| panic!("no hand-over logged:\n{logs}"));
    let new_leader = c.wait_leader(START_TIMEOUT);
    assert!(
        line.contains(&format!("{:x}", c.members[new_leader].id())),
        "handed to the member now leading: {line}"
    );
    put(&c.members[new_leader].client_url(), "k2", "v").expect("writes go on");
}

/// One etcdctl session of the clustering commands an operator runs, against
/// a 3-member etcd 3.4.23 cluster and a 3-member cairn cluster: the
/// transcripts must be identical once what legitimately differs is
/// normalised (ports and member ids → member names or roles; sizes, raft
/// terms and indexes, hashes and timings masked; which member leads is a
/// role, since elections pick differently).
#[test]
fn cluster_etcdctl_session_matches_etcd() {
    let etcd = cluster_session(Cluster::start_etcd(3));
    let cairn = cluster_session(Cluster::start(3));
    assert_eq!(
        cairn, etcd,
        "cairn's transcript (left) differs from etcd's (right)"
    );
}

/// Runs the session; returns the normalised transcript.
fn cluster_session(c: Cluster) -> Vec<String> {
    let leader = c.wait_leader(START_TIMEOUT);
    let target = (leader + 1) % 3;
    let endpoint = |i: usize| c.members[i].endpoint();
    let all = (0..3).map(endpoint).collect::<Vec<_>>().join(",");
    let url_of_first = c.members[0].client_url();

    // Names stand for each member's id and ports; roles where it matters
    // which member leads.
    let by_name = |text: &str| -> String {
        let mut out = text.to_string();
        for m in &c.members {
            out = out
                .replace(&format!("{:x}", m.id()), &format!("<{}-id>", m.name))
                .replace(&m.client_port.to_string(), &format!("<{}-client>", m.name))
                .replace(&m.peer_port.to_string(), &format!("<{}-peer>", m.name));
        }
        out
    };
    let by_role = |text: &str| -> String {
        text.replace(&format!("{:x}", c.members[leader].id()), "<leader>")
            .replace(&format!("{:x}", c.members[target].id()), "<target>")
    };
    // endpoint status: URL, id, version, db size, is leader, is learner,
    // raft term, raft index, applied index, errors.
    let mask_status = |line: &str| -> String {
        let f: Vec<&str> = line.split(", ").collect();
        if f.len() < 9 {
            return line.to_string();
        }
        format!(
            "{}, {}, {}, <size>, <is-leader>, {}, <term>, <index>, <applied>",
            f[0], f[1], f[2], f[5]
        )
    };
    let mask_after = |line: &str, marker: &str| -> String {
        match line.find(marker) {
            Some(i) => format!("{}{marker}<masked>", &line[..i]),
            None => line.to_string(),
        }
    };
    let sorted = |text: String| -> Vec<String> {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };

    let mut t = Vec::new();
    let mut step = |title: &str, lines: Vec<String>| {
        t.push(format!("$ {title}"));
        t.extend(lines);
    };
    step("put k v", sorted(etcdctl_on(&all, &["put", "k", "v"])));
    step(
        "member list",
        sorted(by_name(&etcdctl_on(&all, &["member", "list"]))),
    );
    let status = etcdctl_on(&url_of_first, &["endpoint", "status", "--cluster"]);
    step(
        "endpoint status --cluster",
        sorted(by_name(
            &status
                .lines()
                .map(mask_status)
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    );
    let hashes = etcdctl_on(&url_of_first, &["endpoint", "hashkv", "--cluster"]);
    step(
        "endpoint hashkv --cluster",
        sorted(by_name(
            &hashes
                .lines()
                .map(|l| mask_after(l, ", "))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    );
    let target_hex = format!("{:x}", c.members[target].id());
    step(
        "move-leader <target>",
        sorted(by_role(&etcdctl_on(&all, &["move-leader", &target_hex]))),
    );
    assert_eq!(c.wait_leader(START_TIMEOUT), target);
    step(
        "get k",
        sorted(etcdctl_on(&endpoint(target), &["get", "k"])),
    );
    let leaders = etcdctl_on(&all, &["endpoint", "status"])
        .lines()
        .filter(|l| l.split(", ").nth(4) == Some("true"))
        .count();
    step("leaders after move-leader", vec![leaders.to_string()]);

    // Runtime reconfiguration: a learner added, listed, promoted refused
    // (it never started, so it is not in sync), removed; etcd's errors.
    let port = free_port().to_string();
    let peer = format!("http://127.0.0.1:{port}");
    let added = member_change(
        &all,
        &["member", "add", "m4", "--learner", "--peer-urls", &peer],
    );
    let new_id = added
        .split_whitespace()
        .nth(1)
        .expect("member add prints the new id")
        .to_string();
    let cluster_id = added
        .split_whitespace()
        .nth(5)
        .expect("member add prints the cluster id")
        .to_string();
    // Ids and ports by name; etcdctl's ETCD_INITIAL_CLUSTER in a stable
    // order (it prints a Go map); of an error, etcdctl's own line (the
    // client's retry warning before it carries a time and a uuid).
    let masked = |text: &str| -> String {
        let text = by_name(
            &text
                .replace(&new_id, "<new-id>")
                .replace(&cluster_id, "<cluster-id>")
                .replace(&port, "<new-peer>"),
        );
        text.lines()
            .filter(|l| !l.starts_with("{\"level\""))
            .map(|l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
                Some(rest) => {
                    let mut items: Vec<&str> = rest.trim_end_matches('"').split(',').collect();
                    items.sort_unstable();
                    format!("ETCD_INITIAL_CLUSTER=\"{}\"", items.join(","))
                }
                // etcdctl prints ids with %16x: a shorter random id is
                // padded with spaces.
                None => l
                    .split(' ')
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    step("member add m4 --learner", sorted(masked(&added)));
    step(
        "member list (with the learner)",
        sorted(masked(&etcdctl_on(&all, &["member", "list"]))),
    );
    let promote = common::etcdctl_at(&all, &["member", "promote", &new_id], None);
    step(
        "member promote <new-id> (not in sync)",
        vec![masked(String::from_utf8_lossy(&promote.stderr).trim())],
    );
    let second = common::etcdctl_at(
        &all,
        &[
            "member",
            "add",
            "m5",
            "--learner",
            "--peer-urls",
            "http://127.0.0.1:1",
        ],
        None,
    );
    step(
        "member add m5 --learner (a second learner)",
        vec![masked(String::from_utf8_lossy(&second.stderr).trim())],
    );
    step(
        "member remove <new-id>",
        sorted(masked(&etcdctl_on(&all, &["member", "remove", &new_id]))),
    );
    let again = common::etcdctl_at(&all, &["member", "remove", &new_id], None);
    step(
        "member remove <new-id> again",
        vec![masked(String::from_utf8_lossy(&again.stderr).trim())],
    );
    step(
        "member list (after)",
        sorted(by_name(&etcdctl_on(&all, &["member", "list"]))),
    );

    // member update: a second peer URL for the target (its first still
    // reaches it), etcd's errors for a URL another member has and for an
    // unknown id, and back.
    let own_peer = c.members[target].peer_url();
    // Which member is which depends on who led: members by role.
    let roles = |text: &str| -> String {
        let mut out = masked(text);
        for (i, role) in [
            (leader, "leader"),
            (target, "target"),
            (3 - leader - target, "other"),
        ] {
            out = out.replace(&format!("<{}-", c.members[i].name), &format!("<{role}-"));
            out = out.replace(
                &format!(", {}, ", c.members[i].name),
                &format!(", <{role}>, "),
            );
        }
        out
    };
    let two_urls = format!(
        "{own_peer},http://localhost:{}",
        c.members[target].peer_port
    );
    step(
        "member update <target> --peer-urls=<own>,<localhost>",
        sorted(masked(&by_role(&etcdctl_on(
            &all,
            &[
                "member",
                "update",
                &target_hex,
                &format!("--peer-urls={two_urls}"),
            ],
        )))),
    );
    step(
        "member list (updated)",
        sorted(roles(&etcdctl_on(&all, &["member", "list"]))),
    );
    let taken = common::etcdctl_at(
        &all,
        &[
            "member",
            "update",
            &target_hex,
            &format!("--peer-urls={}", c.members[leader].peer_url()),
        ],
        None,
    );
    step(
        "member update <target> --peer-urls=<leader's>",
        vec![masked(String::from_utf8_lossy(&taken.stderr).trim())],
    );
    let unknown = common::etcdctl_at(
        &all,
        &[
            "member",
            "update",
            "1234abcd",
            "--peer-urls=http://127.0.0.1:1",
        ],
        None,
    );
    step(
        "member update <unknown id>",
        vec![masked(String::from_utf8_lossy(&unknown.stderr).trim())],
    );
    step(
        "member update <target> --peer-urls=<own>",
        sorted(masked(&by_role(&etcdctl_on(
            &all,
            &[
                "member",
                "update",
                &target_hex,
                &format!("--peer-urls={own_peer}"),
            ],
        )))),
    );
    step(
        "member list (restored)",
        sorted(by_name(&etcdctl_on(&all, &["member", "list"]))),
    );
    step(
        "put k2 v2 (cluster still writes)",
        sorted(etcdctl_on(&all, &["put", "k2", "v2"])),
    );
    t
}

/// etcd's corruption checks (src/corrupt.rs), driven by the test-only
/// failpoint that rewrites one revision record of a member's state store
/// behind raft's back (debug builds only):
/// * restarted with `--experimental-initial-corrupt-check`, the corrupted
///   member compares its HashKV with its peers' and refuses to start, with
///   etcd's `<id> found data inconsistency with peers`;
/// * restarted without it, it serves, and the leader's periodic check
///   (`--experimental-corrupt-check-time`) raises the CORRUPT alarm for it
///   through raft: `etcdctl alarm list` names it (and only it) on every
///   member, and every write is refused with `etcdserver: corrupt cluster`.
#[test]
fn a_corrupted_member_is_refused_at_start_and_raises_the_corrupt_alarm() {
    const CORRUPT_ENV: &str = "CAIRN_FAILPOINT_CORRUPT_STATE";
    let mut c = Cluster::new(3);
    c.extra_args = vec!["--experimental-corrupt-check-time=300ms".into()];
    c.spawn_all_and_wait();
    let leader = c.wait_leader(START_TIMEOUT);
    let url = c.members[leader].client_url();
    for i in 0..10 {
        put(&url, &format!("c/{i}"), "v").expect("put");
    }
    c.wait_converged(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    let victim_id = c.members[victim].id();
    c.kill(victim);

    // Corrupted, with the start-up check: refused.
    c.extra_env = vec![(CORRUPT_ENV.into(), "1".into())];
    c.extra_args
        .push("--experimental-initial-corrupt-check=true".into());
    c.spawn_member(victim);
    let refusal = format!("{victim_id:016x} found data inconsistency with peers");
    assert!(
        wait_until(START_TIMEOUT, || c.exited(victim)),
        "the corrupted member started despite --experimental-initial-corrupt-check"
    );
    let logs = std::fs::read_to_string(c.log_path(victim, c.members[victim].starts))
        .expect("read the refused start's log");
    assert!(logs.contains(&refusal), "no {refusal:?} in its log");
    assert!(logs.contains("found different hash values from remote peer"));
    assert!(!logs.contains("ready to serve client requests"));

    // Corrupted, without the start-up check: it serves until the leader's
    // periodic check raises CORRUPT for it.
    c.extra_args.pop();
    c.spawn_member(victim);
    c.extra_env.clear();
    let corrupt = format!("memberID:{victim_id} alarm:CORRUPT");
    let mut listed = String::new();
    let raised = wait_until(Duration::from_secs(30), || {
        let ep = c.members[leader].client_url().replace("http://", "");
        let out = common::etcdctl_at(&ep, &["alarm", "list"], None);
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        listed.contains(&corrupt)
    });
    assert!(
        raised,
        "no CORRUPT alarm for the corrupted member: {listed:?}"
    );
    assert_eq!(listed.trim(), corrupt, "only the corrupted member is named");
    for m in &c.members {
        let ep = m.client_url().replace("http://", "");
        assert!(
            wait_until(Duration::from_secs(10), || {
                String::from_utf8_lossy(&common::etcdctl_at(&ep, &["alarm", "list"], None).stdout)
                    .contains(&corrupt)
            }),
            "member {} does not list the alarm",
            m.name
        );
    }
    let refused = put_once(&url, "c/after", "x").expect_err("a write while CORRUPT is raised");
    assert!(refused.contains("etcdserver: corrupt cluster"), "{refused}");
    assert!((0..3).any(|i| c.logs(i).contains("raising the CORRUPT alarm")));
}

/// NOSPACE is replicated state (src/quota.rs): the member that takes a write
/// over `--quota-backend-bytes` proposes the alarm instead of the write, and
/// from then on every member refuses the same writes (each one's own size
/// does not matter), and the members stay identical. Compaction, defragment
/// and `etcdctl alarm disarm` let writes through again everywhere.
#[test]
fn nospace_is_raised_for_the_whole_cluster_and_disarmed_after_compaction() {
    const QUOTA: u64 = 2_000_000;
    const FULL: &str = "etcdserver: mvcc: database space exceeded";
    let mut c = Cluster::new(3);
    c.extra_args = vec![format!("--quota-backend-bytes={QUOTA}")];
    c.spawn_all_and_wait();
    let leader = c.wait_leader(START_TIMEOUT);
    // Through a follower: the edge is whichever member takes the write.
    let taker = (leader + 1) % 3;
    let url = c.members[taker].client_url();
    let big = "x".repeat(64 * 1024);
    let mut accepted = 0;
    let refused = loop {
        assert!(
            accepted < 200,
            "200 puts of 64 KiB never exceeded the quota"
        );
        match put(&url, &format!("big/{}", accepted % 4), &big) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(refused.contains(FULL), "{refused}");
    assert!(accepted > 0, "some puts must fit under the quota");
    let taker_alarm = format!("memberID:{} alarm:NOSPACE", c.members[taker].id());
    let endpoints: Vec<String> = c
        .members
        .iter()
        .map(|m| m.client_url().replace("http://", ""))
        .collect();
    let alarm_lists = || -> Vec<String> {
        endpoints
            .iter()
            .map(|ep| etcdctl_on(ep, &["alarm", "list"]))
            .collect()
    };
    let mut lists = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            lists = alarm_lists();
            lists.iter().all(|l| l.contains(&taker_alarm))
        }),
        "not every member lists {taker_alarm:?}: {lists:?}"
    );
    // Every member refuses every write that adds data, whatever its own size.
    for m in &c.members {
        let e = put_once(&m.client_url(), "small", "v").expect_err("a write under NOSPACE");
        assert!(e.contains(FULL), "{}: {e}", m.name);
    }
    // (A member over the quota itself raises its own alarm too, as etcd's.)
    let rev = c.wait_converged(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(10), || {
            lists = alarm_lists();
            lists.iter().all(|l| *l == lists[0])
        }),
        "members disagree on the alarms: {lists:?}"
    );

    // The way out, as with etcd: compact, defragment, disarm.
    etcdctl_on(
        &endpoints[taker],
        &["compaction", "--physical", &rev.to_string()],
    );
    for ep in &endpoints {
        etcdctl_on(ep, &["defrag"]);
    }
    for m in &c.members {
        assert!(
            wait_until(Duration::from_secs(20), || {
                status(&m.client_url()).is_some_and(|s| (s.db_size as u64) < QUOTA / 2)
            }),
            "{}'s state store did not shrink below half the quota",
            m.name
        );
    }
    let disarmed = etcdctl_on(&endpoints[leader], &["alarm", "disarm"]);
    assert!(disarmed.contains(&taker_alarm), "{disarmed}");
    for (m, ep) in c.members.iter().zip(&endpoints) {
        assert!(
            wait_until(Duration::from_secs(10), || etcdctl_on(
                ep,
                &["alarm", "list"]
            )
            .is_empty()),
            "{} still lists an alarm",
            m.name
        );
        put(&m.client_url(), &format!("after/{}", m.name), "v").expect("a write after disarm");
    }
    c.wait_converged(Duration::from_secs(10));
}
