//! Starting the servers under comparison: real etcd or cairn, with the very
//! same etcd-style flags, on free loopback ports and a fresh data dir; waiting
//! until one serves a linearizable Range; reading its peak RSS; stopping it
//! with SIGTERM; restarting it on the same data dir. A [`Cluster`] is 1, 3 or
//! 5 such members started together with one `--initial-cluster`, as etcd's
//! clustering guide does on one host.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conn::normalise_endpoint;
use crate::BenchError;
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::proto::etcdserverpb::{RangeRequest, StatusRequest};

/// The member name both servers get when they run alone.
const MEMBER_NAME: &str = "bench";

/// Which server a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Etcd,
    Cairn,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Cairn => "cairn",
        }
    }
}

/// One server process with its own data dir.
pub struct ServerProc {
    pub kind: Kind,
    binary: PathBuf,
    /// Holds the data dir and logs; removed on drop.
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    /// `--name`.
    name: String,
    /// `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
    /// Flags after the common ones (the same for both servers).
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Incarnations so far (each logs to its own file).
    starts: u32,
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether one linearizable Range of key "health" succeeds at `url`.
pub async fn serves_range(url: &str) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(normalise_endpoint(url)) else {
        return false;
    };
    let Ok(ch) = ep
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return false;
    };
    KvClient::new(ch)
        .range(RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        })
        .await
        .is_ok()
}

impl ServerProc {
    /// Starts a fresh single-member server and waits (≤ `timeout`) until it
    /// serves a Range. `tmp_root` is where its data dir goes (None: the
    /// system temp dir).
    pub async fn start(
        kind: Kind,
        binary: &Path,
        tmp_root: Option<&Path>,
        timeout: Duration,
    ) -> Result<ServerProc, BenchError> {
        let mut cluster = Cluster::start(kind, binary, tmp_root, 1, &[], timeout).await?;
        cluster
            .members
            .pop()
            .ok_or_else(|| BenchError::Server("a cluster of one has no member".into()))
    }

    /// A member that is not started yet, with a fresh data dir.
    fn new(
        kind: Kind,
        binary: &Path,
        tmp_root: Option<&Path>,
        name: String,
    ) -> Result<ServerProc, BenchError> {
        let prefix = format!("cairn-bench-{}-", kind.name());
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix);
        let dir = match tmp_root {
            Some(root) => b.tempdir_in(root)?,
            None => b.tempdir()?,
        };
        Ok(ServerProc {
            kind,
            binary: binary.to_path_buf(),
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            name,
            initial_cluster: String::new(),
            extra_args: Vec::new(),
            child: None,
            starts: 0,
        })
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Peak RSS of the running incarnation, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.pid().and_then(peak_rss_kib)
    }

    /// Starts the process (same data dir, ports and flags every time).
    pub fn spawn(&mut self) -> Result<(), BenchError> {
        self.starts += 1;
        let log = File::create(self.dir.path().join(format!("server-{}.log", self.starts)))?;
        let client = self.url();
        let peer = self.peer_url();
        let child = Command::new(&self.binary)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Server(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls (every 5 ms) until the server serves a Range; fails if it exits
    /// or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        let url = self.url();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(BenchError::Server(format!(
                        "{} exited with {status} before serving; log:\n{}",
                        self.kind.name(),
                        self.log_tail()
                    )));
                }
            }
            if serves_range(&url).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(BenchError::Server(format!(
                    "{} did not serve a Range within {timeout:?}; log:\n{}",
                    self.kind.name(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last 4 KiB of the current incarnation's log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("server-{}.log", self.starts)))
                .unwrap_or_default();
        let mut cut = text.len().saturating_sub(4096);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text[cut..].to_string()
    }

    /// SIGTERM, then wait (≤ 30 s) for a clean exit; SIGKILL if it hangs.
    pub async fn stop(&mut self) -> Result<(), BenchError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Server(format!(
                    "{} ignored SIGTERM for 30 s",
                    self.kind.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The members of one server kind, started together as one cluster.
pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<ServerProc>,
}

impl Cluster {
    /// Starts `n` fresh members (`bench` alone, else `m1`…`mn`) with the same
    /// flags plus `extra_args`, and waits (≤ `timeout`) until every one serves
    /// a linearizable Range (so the cluster has a leader).
    pub async fn start(
        kind: Kind,
        binary: &Path,
        tmp_root: Option<&Path>,
        n: usize,
        extra_args: &[String],
        timeout: Duration,
    ) -> Result<Cluster, BenchError> {
        if n == 0 {
            return Err(BenchError::Usage("a cluster needs a member".into()));
        }
        let mut members = (1..=n)
            .map(|i| {
                let name = if n == 1 {
                    MEMBER_NAME.to_string()
                } else {
                    format!("m{i}")
                };
                ServerProc::new(kind, binary, tmp_root, name)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
            m.extra_args = extra_args.to_vec();
            m.spawn()?;
        }
        let mut cluster = Cluster { kind, members };
        cluster.wait_ready(timeout).await?;
        Ok(cluster)
    }

    /// Waits until every running member serves a linearizable Range.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        for m in &mut self.members {
            if m.child.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                m.wait_ready(left.max(Duration::from_millis(1))).await?;
            }
        }
        Ok(())
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(ServerProc::url).collect()
    }

    /// The highest peak RSS of the running members, in KiB (the leader's,
    /// usually: it does the most work).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(ServerProc::peak_rss_kib)
            .max()
    }

    /// The index in `members` of the leader, as the members' Status says
    /// (polled for up to 5 s while an election settles).
    pub async fn leader(&self) -> Result<usize, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut statuses = Vec::with_capacity(self.members.len());
            for m in &self.members {
                statuses.push(match m.child {
                    Some(_) => member_status(&m.url()).await.ok(),
                    None => None,
                });
            }
            let found = statuses.iter().flatten().find_map(|s| {
                statuses
                    .iter()
                    .position(|o| o.as_ref().is_some_and(|o| o.member_id == s.leader))
            });
            if let Some(i) = found {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Setup(format!(
                    "no {} member says who leads",
                    self.kind.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every member (SIGTERM).
    pub async fn stop(&mut self) -> Result<(), BenchError> {
        let mut first_err = None;
        for m in &mut self.members {
            if let Err(e) = m.stop().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Starts every member again on its data dir.
    pub fn spawn(&mut self) -> Result<(), BenchError> {
        self.members.iter_mut().try_for_each(ServerProc::spawn)
    }
}

/// What a member's Status says: its id and the leader it knows.
pub struct MemberStatus {
    pub member_id: u64,
    pub leader: u64,
    pub raft_index: u64,
}

/// Maintenance.Status of the member at `url`.
pub async fn member_status(url: &str) -> Result<MemberStatus, BenchError> {
    let ep = tonic::transport::Endpoint::from_shared(normalise_endpoint(url))
        .map_err(|e| BenchError::Usage(format!("endpoint {url}: {e}")))?;
    let ch = ep
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| BenchError::Connect(format!("{url}: {e}")))?;
    let s = MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map_err(|e| BenchError::Connect(format!("status of {url}: {e}")))?
        .into_inner();
    Ok(MemberStatus {
        member_id: s.header.map_or(0, |h| h.member_id),
        leader: s.leader,
        raft_index: s.raft_index,
    })
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}
