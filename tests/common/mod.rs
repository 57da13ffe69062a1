//! The integration-test harness: start cairn or real etcd on free ports in a
//! temp data dir, drive them with the real `etcdctl`, kill them with SIGKILL,
//! restart them on the same data dir, and normalise etcdctl transcripts so a
//! cairn session can be compared with an etcd session.
//!
//! Both binaries take the very same etcd flags, so one [`Server`] type starts
//! either. `CAIRN_TEST_SERVER=etcd` makes [`Kind::Cairn`] start etcd instead:
//! that is how the suite proves its own expectations against etcd, and how a
//! cairn failure is told apart from a test bug.
//!
//! Every wait is a condition polled against a deadline ([`wait_until`]); no
//! test synchronises with a bare sleep. A [`Server`] kills its process on drop
//! (also while a test panics) and then prints the tail of the server's stderr.

// Each test crate uses a different subset of the harness.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where Debian's etcd-server and etcd-client packages put the binaries.
const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// How long a server gets to serve a linearizable Range after its start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one etcdctl invocation may take before the test fails.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);
/// The member name every test server gets (same for both kinds, so that
/// `member list` transcripts compare without normalising it).
pub const MEMBER_NAME: &str = "n1";

/// Which binary a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The binary under test; etcd if `CAIRN_TEST_SERVER=etcd`.
    Cairn,
    /// The reference: real etcd from `/usr/bin/etcd`.
    Etcd,
}

impl Kind {
    /// The binary this kind starts, after applying `CAIRN_TEST_SERVER`.
    fn binary(self) -> PathBuf {
        match self {
            Kind::Etcd => etcd_path(),
            Kind::Cairn => match std::env::var("CAIRN_TEST_SERVER").as_deref() {
                Ok("etcd") => etcd_path(),
                Ok("cairn") | Ok("") | Err(_) => cairn_path(),
                Ok(other) => panic!("CAIRN_TEST_SERVER={other:?}: expected \"etcd\" or \"cairn\""),
            },
        }
    }
}

/// `flags` when the server under test is cairn, none when
/// `CAIRN_TEST_SERVER=etcd` (cairn-only flags such as `--backend-engine`).
pub fn cairn_flags<'a>(flags: &'a [&'a str]) -> &'a [&'a str] {
    match std::env::var("CAIRN_TEST_SERVER").as_deref() {
        Ok("etcd") => &[],
        _ => flags,
    }
}

/// The `cairn` server binary under test. Tests of the `cairn` package get
/// its path from cargo; other workspace packages that share this harness
/// (the `cairn-bench` smoke tests, which include it with `#[path]`) cannot
/// name another package's binary, so they find it in the workspace target
/// dir, next to their own test executable's `deps/` directory. Cargo builds
/// it there for `cargo test --workspace` (tests/run.sh); fails the test if
/// it is missing.
pub fn cairn_path() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_cairn") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/cairn
    let p = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("cairn"))
        .expect("the test executable lives in target/<profile>/deps/");
    assert!(
        p.is_file(),
        "cairn not found at {}: build it first (`cargo build --bin cairn`; \
         `cargo test --workspace`, as tests/run.sh runs it, builds it too)",
        p.display()
    );
    p
}

fn etcd_path_unchecked() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from(ETCD_BIN), PathBuf::from)
}

/// `/usr/bin/etcd` (or `$ETCD_BIN`); fails the test if it is missing.
pub fn etcd_path() -> PathBuf {
    let p = etcd_path_unchecked();
    assert!(
        p.is_file(),
        "etcd not found at {}: install the Debian package etcd-server (tests/run.sh does this)",
        p.display()
    );
    p
}

/// `/usr/bin/etcdctl` (or `$ETCDCTL_BIN`); fails the test if it is missing.
pub fn etcdctl_path() -> PathBuf {
    let p =
        std::env::var_os("ETCDCTL_BIN").map_or_else(|| PathBuf::from(ETCDCTL_BIN), PathBuf::from);
    assert!(
        p.is_file(),
        "etcdctl not found at {}: install the Debian package etcd-client (tests/run.sh does this)",
        p.display()
    );
    p
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
/// The pause between polls is a poll interval, not a synchronisation.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of `text`, at most `max` bytes (cut at a character boundary):
/// the part of a log that explains a failure.
pub fn tail(text: &str, max: usize) -> &str {
    let mut cut = text.len().saturating_sub(max);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    &text[cut..]
}

/// A test's random seed: `$var` if it holds a number (to replay a run),
/// else one from the clock (odd, so never zero).
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// A port no other test in this process was given, free when asked.
///
/// Ports come from below the kernel's ephemeral range, walked once per
/// process from an offset set by the pid. `bind(0)` and outgoing connections
/// only take ports inside that range, so a port handed out here cannot be
/// taken meanwhile by another test's `bind(0)`, a proxy or a client socket,
/// and no two tests of one process ever share one. (With `bind(0)` a
/// released port could be handed out again: once, in CI, a member added at
/// runtime found its peer port held by another test's cluster, and its
/// peers got `cluster ID mismatch`.) [`Server::start`] still retries with
/// new ports if another process holds one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no test port left in {LOW}..{high}");
        let port = (LOW + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (Linux's default 32768 if
/// it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One cairn or etcd process with its own data dir, ports and stderr log.
pub struct Server {
    /// Which binary was asked for (see [`Kind::binary`] for the override).
    pub kind: Kind,
    binary: PathBuf,
    /// Owns the data dir and the log files; removed when the server drops.
    tmp: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    /// Incremented per start, so each incarnation logs to its own file.
    starts: u32,
    /// Flags added after the harness's own (e.g. `--quota-backend-bytes`).
    pub extra_args: Vec<String>,
    /// Environment variables set for the server (e.g. a failpoint).
    pub extra_env: Vec<(String, String)>,
}

impl Server {
    /// Starts a fresh single-member server on free ports and waits until it
    /// serves a linearizable Range.
    pub fn start(kind: Kind) -> Server {
        Server::start_with(kind, &[])
    }

    /// Like [`Server::start`], with extra flags for the server.
    pub fn start_with(kind: Kind, extra_args: &[&str]) -> Server {
        Server::start_with_env(kind, extra_args, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables.
    pub fn start_with_env(kind: Kind, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let binary = kind.binary();
        let tmp = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("create temp dir");
        let mut server = Server {
            kind,
            binary,
            tmp,
            client_port: 0,
            peer_port: 0,
            child: None,
            starts: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for attempt in 1..=3 {
            server.client_port = free_port();
            server.peer_port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < 3 && e.to_lowercase().contains("address already in use") => {
                    // Someone grabbed a port between our probe and the bind.
                    let _ = std::fs::remove_dir_all(server.data_dir());
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Restarts a killed or stopped server on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() of a running server");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The old incarnation's ports can linger for a moment.
                Err(e)
                    if Instant::now() < deadline
                        && e.to_lowercase().contains("address already in use") =>
                {
                    continue
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// SIGKILLs the server (Child::kill is SIGKILL on Unix) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns
    /// its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("terminate() of a stopped server");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let mut status = None;
        if wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        }) {
            if let Some(status) = status {
                return status;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "server did not exit within {timeout:?} of SIGTERM; logs:\n{}",
            self.logs()
        );
    }

    /// Waits (bounded) for the server to exit on its own; returns its exit
    /// status, or None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the binary really running is etcd (asked for, or
    /// `CAIRN_TEST_SERVER=etcd`): tests of cairn-only features skip then.
    pub fn is_etcd(&self) -> bool {
        self.binary == etcd_path_unchecked()
    }

    /// The address etcdctl's `--endpoints` takes: `127.0.0.1:P`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL gRPC clients connect to: `http://127.0.0.1:P`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.tmp.path().join(format!("server-{start}.stderr"))
    }

    /// The stderr of every incarnation so far, oldest first.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for start in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(start)).unwrap_or_default();
            out.push_str(&format!("----- start #{start} stderr -----\n{text}"));
        }
        out
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = File::create(&log_path).map_err(|e| format!("create {log_path:?}: {e}"))?;
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", MEMBER_NAME])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{MEMBER_NAME}={peer}")])
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "{} ({:?}) exited with {status} before serving on {}; its stderr:\n{log}",
                    self.binary.display(),
                    self.kind,
                    self.endpoint(),
                ));
            }
            if grpc::range_ok(&self.client_url()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "{} ({:?}) did not serve a Range on {} within {READY_TIMEOUT:?}; its stderr:\n{log}",
                    self.binary.display(),
                    self.kind,
                    self.endpoint(),
                ));
            }
        }
    }

    /// The exit status if the process has exited on its own.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            // The tail is what explains a failure; etcd's startup chatter is long.
            let tail = tail(&logs, 20_000);
            eprintln!(
                "===== {:?} server ({}) on {} =====\n{tail}",
                self.kind,
                self.binary.display(),
                self.endpoint()
            );
        }
    }
}

/// Small synchronous gRPC helpers, usable from plain `#[test]`s and from
/// inside a tokio runtime alike (each call runs on its own thread and runtime).
pub mod grpc {
    use cairn::proto::etcdserverpb::kv_client::KvClient;
    use cairn::proto::etcdserverpb::RangeRequest;
    use std::time::Duration;

    /// Runs `f` to completion on a fresh current-thread runtime in a new thread.
    pub fn block_on<T: Send + 'static>(
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build tokio runtime")
                .block_on(f)
        })
        .join()
        .expect("gRPC helper thread panicked")
    }

    /// A channel to `url` whose requests may each take up to 20 s (for
    /// tests where a request waits on purpose); fails the test if it
    /// cannot connect.
    pub async fn patient_channel(url: &str) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("a URL")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .expect("connect")
    }

    /// Connects a KvClient to `url` with short connect and request timeouts.
    pub async fn kv_client(url: &str) -> Result<KvClient<tonic::transport::Channel>, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(KvClient::new(channel))
    }

    /// (revision, hash) of a member's HashKV at its current revision, or
    /// None if it does not answer.
    pub fn hash_kv(url: &str) -> Option<(i64, u32)> {
        use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
        use cairn::proto::etcdserverpb::HashKvRequest;
        let url = url.to_string();
        block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(3))
                .connect()
                .await
                .ok()?;
            let r = MaintenanceClient::new(channel)
                .hash_kv(HashKvRequest { revision: 0 })
                .await
                .ok()?
                .into_inner();
            Some((r.header?.revision, r.hash))
        })
    }

    /// Whether a linearizable Range of key "health" succeeds, or is refused
    /// by auth (readiness).
    pub fn range_ok(url: &str) -> bool {
        let url = url.to_string();
        block_on(async move {
            let Ok(mut kv) = kv_client(&url).await else {
                return false;
            };
            let req = RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            };
            match kv.range(req).await {
                Ok(_) => true,
                // With auth enabled an anonymous read is refused, by a
                // server that serves (as etcdctl endpoint health judges).
                Err(status) => {
                    status.code() == tonic::Code::PermissionDenied
                        || status.message() == "etcdserver: user name is empty"
                }
            }
        })
    }
}

/// Runs `etcdctl --endpoints=<server> <args>` with `ETCDCTL_API=3`, feeding
/// `stdin` if given, and fails the test if it does not finish within
/// [`ETCDCTL_TIMEOUT`].
pub fn etcdctl(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    etcdctl_at(&server.endpoint(), args, stdin)
}

/// [`etcdctl`] with `--endpoints` as given (e.g. a URL with its scheme).
pub fn etcdctl_at(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    // Feed stdin and drain both pipes on threads so no pipe can fill up.
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            // etcdctl may exit before reading everything (e.g. on an error).
            let _ = pipe.write_all(&data);
        })
    });
    let out_reader = drain(child.stdout.take().expect("stdout pipe"));
    let err_reader = drain(child.stderr.take().expect("stderr pipe"));

    let mut status = None;
    let finished = wait_until(ETCDCTL_TIMEOUT, || {
        status = child.try_wait().expect("wait for etcdctl");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIMEOUT:?}");
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status: status.expect("finished"),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs etcdctl and asserts it exits 0; returns its stdout.
pub fn etcdctl_ok(server: &Server, args: &[&str]) -> String {
    let out = etcdctl(server, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("etcdctl stdout is UTF-8")
}

/// Runs etcdctl with `-w json` and parses its stdout.
pub fn etcdctl_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = etcdctl_ok(server, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl {all:?}: bad JSON {e}: {out}"))
}

/// An etcdctl failure, split into the parts a client can observe.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub exit_code: Option<i32>,
    /// The `Error: ...` line etcdctl prints on stderr, without the prefix.
    pub error: String,
    /// The `error` field of clientv3's "retrying of unary invoker failed"
    /// warning, e.g. `rpc error: code = NotFound desc = ...` — the only place
    /// etcdctl shows the gRPC status code. None if no warning was logged.
    pub grpc_error: Option<String>,
    pub stdout: String,
}

/// Splits a failed etcdctl run into a [`Failure`].
pub fn failure(out: &Output) -> Failure {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .unwrap_or_else(|| panic!("no `Error:` line in etcdctl's stderr: {stderr}"))
        .to_string();
    let grpc_error = stderr.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some(v.get("error")?.as_str()?.to_string())
    });
    Failure {
        exit_code: out.status.code(),
        error,
        grpc_error,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Identities of one server, learned from `endpoint status -w json`, that a
/// transcript may legitimately differ in from another server's.
pub struct Identity {
    pub client_port: u16,
    pub peer_port: u16,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    pub fn of(server: &Server) -> Identity {
        let status = etcdctl_json(server, &["endpoint", "status"]);
        let header = &status[0]["Status"]["header"];
        Identity {
            client_port: server.client_port,
            peer_port: server.peer_port,
            member_id: header["member_id"].as_u64().expect("member_id"),
            cluster_id: header["cluster_id"].as_u64().expect("cluster_id"),
        }
    }
}

/// Rewrites one etcdctl result (command, stdout, stderr, exit code) into a
/// canonical text that is equal for etcd and cairn iff they behaved alike.
///
/// Only what legitimately differs between two fresh single-member clusters is
/// replaced, each by a named placeholder:
/// * the client and peer ports (each server listens on its own free ports)
///   → `<CLIENT_PORT>`, `<PEER_PORT>`;
/// * the member id (hex in simple output, decimal in JSON: `member_id`,
///   `ID`, `leader`) → `<MEMBER_ID>`; it is derived from the peer URLs and
///   the start time;
/// * the cluster id (`cluster_id`) → `<CLUSTER_ID>`, derived from the member
///   ids;
/// * the raft term (`raft_term`, `raftTerm`) → `<RAFT_TERM>`: it depends on
///   elections, not on the KV history;
/// * in `endpoint status` only: the DB size (`dbSize`, `dbSizeInUse`, the
///   "20 kB" column) and the raft index (`raftIndex`, `raftAppliedIndex` and
///   their columns): storage layout and internal log entries (e.g. conf
///   changes, cluster-version entries) are implementation details;
/// * durations measured by etcdctl (`took`) → `<TOOK>`;
/// * in clientv3's JSON warning lines on stderr: the timestamp and the
///   per-process client id in `target`, which are dropped; the level, message
///   and the `error` (gRPC code and description) are kept.
///
/// Everything else — revisions, versions, create/mod revisions, values,
/// counts, `more`, error texts, exit codes, the server version — must match.
pub fn normalise(id: &Identity, args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let is_status = args.starts_with(&["endpoint", "status"]);
    let stdout = match serde_json::from_str::<serde_json::Value>(&stdout) {
        Ok(mut v) if !stdout.trim().is_empty() => {
            normalise_json(&mut v, id, is_status);
            // Pretty-printed, so a line diff points at the differing field.
            let pretty = serde_json::to_string_pretty(&v).expect("serialise JSON");
            format!("{pretty}\n")
        }
        _ => stdout.into_owned(),
    };
    let mut stdout = normalise_text(&stdout, id);
    if is_status && !args.contains(&"json") {
        stdout = stdout
            .lines()
            .map(|line| {
                // ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER,
                // RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX, ERRORS
                let mut cols: Vec<&str> = line.split(", ").collect();
                if cols.len() >= 9 {
                    cols[3] = "<DB_SIZE>";
                    cols[6] = "<RAFT_TERM>";
                    cols[7] = "<RAFT_INDEX>";
                    cols[8] = "<RAFT_INDEX>";
                }
                cols.join(", ") + "\n"
            })
            .collect();
    }
    let stderr: String = stderr
        .lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.get("msg").is_some() => format!(
                    "[{}] {}: {}\n",
                    v["level"].as_str().unwrap_or(""),
                    v["msg"].as_str().unwrap_or(""),
                    v["error"].as_str().unwrap_or("")
                ),
                _ => normalise_text(line, id) + "\n",
            },
        )
        .collect();
    let took = normalise_took(&stderr);
    format!(
        "$ etcdctl {}\n{}{}[exit {}]\n",
        args.iter()
            .map(|a| if a.len() > 80 {
                format!("<{} bytes>", a.len())
            } else {
                a.to_string()
            })
            .collect::<Vec<_>>()
            .join(" "),
        stdout,
        took,
        out.status
            .code()
            .map_or_else(|| "signal".to_string(), |c| c.to_string())
    )
}

/// Replaces the duration after "took = " (endpoint health's stderr line).
fn normalise_took(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("took = ") {
            Some(i) => format!("{}took = <TOOK>\n", &line[..i]),
            None => format!("{line}\n"),
        })
        .collect()
}

fn normalise_text(text: &str, id: &Identity) -> String {
    text.replace(&format!(":{}", id.client_port), ":<CLIENT_PORT>")
        .replace(&format!(":{}", id.peer_port), ":<PEER_PORT>")
        .replace(&format!("{:x}", id.member_id), "<MEMBER_ID>")
        .replace(&id.member_id.to_string(), "<MEMBER_ID>")
        .replace(&format!("{:x}", id.cluster_id), "<CLUSTER_ID>")
        .replace(&id.cluster_id.to_string(), "<CLUSTER_ID>")
}

fn normalise_json(v: &mut serde_json::Value, id: &Identity, is_status: bool) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let placeholder = match k.as_str() {
                    "cluster_id" => Some("<CLUSTER_ID>"),
                    "member_id" | "ID" | "leader" => Some("<MEMBER_ID>"),
                    "raft_term" | "raftTerm" => Some("<RAFT_TERM>"),
                    "took" => Some("<TOOK>"),
                    "dbSize" | "dbSizeInUse" if is_status => Some("<DB_SIZE>"),
                    "raftIndex" | "raftAppliedIndex" if is_status => Some("<RAFT_INDEX>"),
                    _ => None,
                };
                match placeholder {
                    Some(p) => *val = Value::String(p.to_string()),
                    None => normalise_json(val, id, is_status),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|x| normalise_json(x, id, is_status)),
        Value::String(s) => *s = normalise_text(s, id),
        _ => {}
    }
}

/// Fails unless etcd's transcript (`want`, one text per step) and the
/// server's (`got`) are equal step by step, showing the steps that differ.
pub fn assert_same_transcripts(want: &[String], got: &[String], kind: Kind) {
    let diffs: Vec<String> = want
        .iter()
        .zip(got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("----- etcd -----\n{w}----- {kind:?} -----\n{g}"))
        .collect();
    assert!(
        diffs.is_empty() && want.len() == got.len(),
        "{} of {} steps differ:\n\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

/// How long a background etcdctl may take to print or exit what a test
/// waits for.
pub const BACKGROUND_DEADLINE: Duration = Duration::from_secs(10);

/// An etcdctl that runs in the background (a lock holder, a campaigner, an
/// observer) with its output collected as it comes.
pub struct Background {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    pub fn start(server: &Server, args: &[&str]) -> Background {
        Background::start_at(&server.endpoint(), args)
    }

    /// [`Background::start`] with `--endpoints` as given.
    pub fn start_at(endpoints: &str, args: &[&str]) -> Background {
        let mut child = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Background {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout buffer").clone()
    }

    /// The end of both outputs, for a failure message (a progress bar can
    /// redraw itself hundreds of times).
    pub fn output(&self) -> String {
        format!(
            "stdout: {:?}\nstderr: {:?}",
            tail(&self.stdout(), 2_000),
            tail(&self.stderr.lock().expect("stderr buffer"), 2_000)
        )
    }

    /// Waits until stdout satisfies `cond`; fails the test after BACKGROUND_DEADLINE.
    pub fn wait_stdout(&self, what: &str, cond: impl Fn(&str) -> bool) {
        assert!(
            wait_until(BACKGROUND_DEADLINE, || cond(&self.stdout())),
            "etcdctl never printed {what}; stdout: {:?}; stderr: {:?}",
            self.stdout(),
            self.stderr.lock().expect("stderr buffer")
        );
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGINT, as a user's Ctrl-C: etcdctl unlocks or resigns, then exits.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn wait(&mut self) -> ExitStatus {
        let status = self.wait_for(BACKGROUND_DEADLINE);
        status.unwrap_or_else(|| panic!("etcdctl did not exit; stdout: {:?}", self.stdout()))
    }

    /// The exit status, or None if it is still running at `timeout`.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects what `pipe` gives, as it comes, on a thread of its own.
pub fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            out.lock().expect("buffer").push_str(&text);
        }
    });
    buf
}
