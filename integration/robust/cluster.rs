//! The members of a robustness run: `n` cairn processes on loopback ports,
//! each behind its own peer [`Proxy`], that the nemesis kills, restarts,
//! pauses and cuts off. Killed on drop; if the test failed, the tail of
//! every member's log is printed.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn::proto::etcdserverpb::cluster_client::ClusterClient;
use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::proto::etcdserverpb::{
    MemberAddRequest, MemberRemoveRequest, MoveLeaderRequest, StatusRequest,
};

use super::proxy::Proxy;
use crate::common::{free_port, grpc, wait_until};

const TOKEN: &str = "cairn-robustness";
const HEARTBEAT_MS: u64 = 50;
/// The members' election timeout (`--election-timeout`).
pub const ELECTION_MS: u64 = 500;
/// How long a (re)started member gets to serve a linearizable Range.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// Where the member listens for peers (behind its proxy).
    pub listen_peer_port: u16,
    pub proxy: Proxy,
    child: Option<Child>,
    paused: bool,
    starts: u32,
    /// The ID MemberAdd gave this member when it was replaced (None: the
    /// one derived from its peer URL at bootstrap).
    added_id: Option<u64>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    /// The advertised peer URL: the proxy's.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }
    pub fn id(&self) -> u64 {
        self.added_id
            .unwrap_or_else(|| cairn::cluster::member_id(&[self.peer_url()], TOKEN))
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    tmp: tempfile::TempDir,
    pub members: Vec<Member>,
    /// Environment for every member (e.g. a failpoint).
    env: Vec<(String, String)>,
    /// Extra flags for every member.
    args: Vec<String>,
    binary: PathBuf,
}

impl Cluster {
    /// Starts `n` members of `binary` (cairn, or etcd for the comparison
    /// run; both take the same flags), proxies on `rt`, and waits until
    /// each serves.
    pub fn start(
        binary: PathBuf,
        n: usize,
        env: &[(&str, &str)],
        args: &[&str],
        rt: &tokio::runtime::Handle,
    ) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-robust-")
            .tempdir()
            .expect("create temp dir");
        let members = (1..=n)
            .map(|i| {
                let listen_peer_port = free_port();
                Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    listen_peer_port,
                    proxy: rt.block_on(Proxy::start(listen_peer_port)),
                    child: None,
                    paused: false,
                    starts: 0,
                    added_id: None,
                }
            })
            .collect();
        let mut c = Cluster {
            tmp,
            members,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
            binary,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_ready(i);
        }
        c
    }

    fn log_path(&self, i: usize, start: u32) -> PathBuf {
        self.tmp
            .path()
            .join(format!("{}-{start}.stderr", self.members[i].name))
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    /// Starts member `i` with `extra` environment on top of the cluster's
    /// (e.g. a failpoint armed for this start only).
    pub fn spawn_with(&mut self, i: usize, extra: &[(String, String)]) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        self.members[i].starts += 1;
        let log = File::create(self.log_path(i, self.members[i].starts)).expect("create log");
        let m = &self.members[i];
        let listen_peer = format!("http://127.0.0.1:{}", m.listen_peer_port);
        // Where the nemesis drops trigger files (src/failpoint.rs).
        let triggers = self.trigger_dir(i);
        let _ = std::fs::create_dir_all(&triggers);
        let child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.tmp.path().join(&m.name))
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &listen_peer])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", TOKEN])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(&self.args)
            // A member added at runtime joins the cluster as it is.
            .args(if m.added_id.is_some() {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[]
            })
            .env("CAIRN_FAILPOINT_TRIGGER_DIR", &triggers)
            .envs(self.env.iter().chain(extra).map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn cairn");
        self.members[i].child = Some(child);
        self.members[i].paused = false;
    }

    /// Waits until member `i` serves a linearizable Range; fails the test
    /// if it exits or does not within [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self, i: usize) {
        let url = self.members[i].client_url();
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(c) = self.members[i].child.as_mut() {
                exited = c.try_wait().ok().flatten();
            }
            exited.is_some() || grpc::range_ok(&url)
        });
        assert!(
            ready && exited.is_none(),
            "member {} did not serve within {READY_TIMEOUT:?} (exit: {exited:?})",
            self.members[i].name
        );
    }

    /// Whether member `i` has exited by itself (reaped if so).
    pub fn exited(&mut self, i: usize) -> bool {
        let gone = self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if gone {
            self.members[i].child = None;
        }
        gone
    }

    /// SIGKILL (works on a paused process too) and reap.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(child) = &self.members[i].child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: the process freezes (a GC pause, a frozen VM).
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.members[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        if self.members[i].paused {
            self.signal(i, "-CONT");
            self.members[i].paused = false;
        }
    }

    /// Undoes every fault: resumes, heals proxies, restarts what was
    /// killed, and waits until every member serves.
    pub fn heal_all(&mut self) {
        for i in 0..self.members.len() {
            self.resume(i);
            self.members[i].proxy.heal();
            if !self.members[i].is_running() {
                self.spawn(i);
            }
        }
        for i in 0..self.members.len() {
            self.wait_ready(i);
        }
    }

    /// The member every running member names as leader, if they agree.
    pub fn leader(&self) -> Option<usize> {
        let mut leader = None;
        for m in self.members.iter().filter(|m| m.is_running() && !m.paused) {
            let s = status(&m.client_url())?;
            if s == 0 || leader.is_some_and(|l| l != s) {
                return None;
            }
            leader = Some(s);
        }
        let leader = leader?;
        self.members.iter().position(|m| m.id() == leader)
    }

    /// The highest raft term the running members report (None if none
    /// answers): a change means leadership may have changed.
    pub fn max_term(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.is_running() && !m.paused)
            .filter_map(|m| {
                let url = m.client_url();
                grpc::block_on(async move {
                    let mut m = MaintenanceClient::new(channel(&url).await?);
                    m.status(StatusRequest {})
                        .await
                        .ok()
                        .map(|r| r.into_inner().raft_term)
                })
            })
            .max()
    }

    /// Asks the leader to hand leadership to member `to`.
    pub fn move_leader(&self, from: usize, to: usize) -> Result<(), String> {
        let url = self.members[from].client_url();
        let target_id = self.members[to].id();
        grpc::block_on(async move {
            let channel = channel(&url).await.ok_or("cannot connect")?;
            MaintenanceClient::new(channel)
                .move_leader(MoveLeaderRequest { target_id })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    /// Member replace, as an operator does it: MemberRemove member `i`
    /// (through member `via`), stop it, wipe its data dir, MemberAdd it
    /// again (same name and peer URL, a new ID), and start it afresh with
    /// `--initial-cluster-state existing`; it must catch up from the others.
    /// What happened, or why not.
    pub fn replace(&mut self, i: usize, via: usize) -> Result<String, String> {
        let old = self.members[i].id();
        let url = self.members[via].client_url();
        let peer = self.members[i].peer_url();
        let removed = grpc::block_on({
            let url = url.clone();
            async move {
                let channel = channel(&url).await.ok_or("cannot connect")?;
                ClusterClient::new(channel)
                    .member_remove(MemberRemoveRequest { id: old })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
        removed.map_err(|e| format!("MemberRemove {old:x}: {e}"))?;
        self.kill(i);
        let dir = self.tmp.path().join(&self.members[i].name);
        std::fs::remove_dir_all(&dir).map_err(|e| format!("wiping {}: {e}", dir.display()))?;
        // A few tries: the removal must be applied before the URL is free.
        let mut added = Err(String::new());
        for _ in 0..20 {
            let (url, peer) = (url.clone(), peer.clone());
            added = grpc::block_on(async move {
                let channel = channel(&url).await.ok_or("cannot connect")?;
                ClusterClient::new(channel)
                    .member_add(MemberAddRequest {
                        peer_ur_ls: vec![peer],
                        is_learner: false,
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .member
                    .map(|m| m.id)
                    .ok_or_else(|| "MemberAdd answered no member".to_string())
            });
            if added.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let new = added.map_err(|e| format!("MemberAdd: {e}"))?;
        self.members[i].added_id = Some(new);
        self.spawn(i);
        self.wait_ready(i);
        Ok(format!(
            "m{} replaced: {old:x} removed, {new:x} added",
            i + 1
        ))
    }

    /// Waits until every member reports the same HashKV at the same
    /// revision; that (revision, hash), or what each member said.
    pub fn converged(&self, timeout: Duration) -> Result<(i64, u32), String> {
        let urls: Vec<String> = self.members.iter().map(|m| m.client_url()).collect();
        let mut seen = Vec::new();
        let agreed = wait_until(timeout, || {
            seen = urls.iter().map(|u| grpc::hash_kv(u)).collect();
            seen.iter().all(|h| h.is_some() && *h == seen[0])
        });
        match seen.first() {
            Some(Some(first)) if agreed => Ok(*first),
            _ => Err(format!(
                "members did not converge within {timeout:?}: (revision, hash) = {seen:?}"
            )),
        }
    }

    fn trigger_dir(&self, i: usize) -> PathBuf {
        self.tmp
            .path()
            .join(format!("{}-triggers", self.members[i].name))
    }

    /// Arms failpoint `name` in the running member `i`: its next hit
    /// panics (`CAIRN_FAILPOINT_TRIGGER_DIR`, src/failpoint.rs). The file
    /// to watch: it is gone once the failpoint fired.
    pub fn trigger(&self, i: usize, name: &str) -> PathBuf {
        let file = self.trigger_dir(i).join(name);
        std::fs::write(&file, b"").expect("write a trigger file");
        file
    }

    /// Every incarnation's log of member `i`, oldest first.
    pub fn logs(&self, i: usize) -> String {
        (1..=self.members[i].starts)
            .map(|s| std::fs::read_to_string(self.log_path(i, s)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
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
                    crate::common::tail(&self.logs(i), 6_000)
                );
            }
        }
    }
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

/// The leader a member names (0: none), or None if it does not answer.
fn status(url: &str) -> Option<u64> {
    let url = url.to_string();
    grpc::block_on(async move {
        let mut m = MaintenanceClient::new(channel(&url).await?);
        m.status(StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner().leader)
    })
}
