//! cairn dropped into an etcd deployment unchanged: every flag `etcd --help`
//! lists (etcd 3.4, Debian's etcd-server), as flags and as `ETCD_*`
//! variables; a systemd unit / static pod flag set with an `ETCD_*`
//! environment; etcd's YAML config file; etcd's lifecycle log lines.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cairn::config::Config;
use common::{etcd_path, etcdctl_at, free_port, grpc, wait_until, READY_TIMEOUT};

/// Flags whose features other work adds (TLS, auth tokens, metrics and
/// pprof): they come with the options that implement them, not here.
const ADDED_WITH_THEIR_FEATURE: &[&str] = &["experimental-peer-skip-client-san-verification"];

/// Every `--flag default` pair of `etcd --help`.
fn etcd_help_flags() -> Vec<(String, String)> {
    let out = Command::new(etcd_path())
        .arg("--help")
        .output()
        .expect("run etcd --help");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut flags = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let (name, default) = rest.split_once(' ').unwrap_or((rest, ""));
        let default = default.trim();
        let default = match default.strip_prefix('\'') {
            Some(quoted) => quoted.split('\'').next().unwrap_or_default(),
            None => default.split_whitespace().next().unwrap_or_default(),
        };
        flags.push((name.to_string(), default.to_string()));
    }
    assert!(
        flags.len() > 70,
        "etcd --help listed only {} flags:\n{text}",
        flags.len()
    );
    flags
}

#[test]
fn every_etcd_flag_is_accepted_as_a_flag_and_as_a_variable() {
    let data = tempfile::tempdir().expect("tempdir");
    let flags: Vec<(String, String)> = etcd_help_flags()
        .into_iter()
        .filter(|(name, _)| !ADDED_WITH_THEIR_FEATURE.contains(&name.as_str()))
        .map(|(name, default)| match name.as_str() {
            // etcd's help shows the pattern, not a path.
            "data-dir" => (name, data.path().display().to_string()),
            _ => (name, default),
        })
        .collect();
    let args: Vec<String> = std::iter::once("cairn".to_string())
        .chain(
            flags
                .iter()
                .map(|(name, value)| format!("--{name}={value}")),
        )
        .collect();
    let (config, warnings) = Config::load_with_warnings(args, std::iter::empty())
        .unwrap_or_else(|e| panic!("etcd's flags at their defaults must load: {e}"));
    assert_eq!(
        warnings,
        Vec::<String>::new(),
        "etcd's defaults warn nothing"
    );
    assert_eq!(config.name, "default");

    let env: Vec<(String, String)> = flags
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| {
            let var = format!("ETCD_{}", name.replace('-', "_").to_uppercase());
            (var, value.clone())
        })
        .collect();
    let (_, warnings) = Config::load_with_warnings(["cairn"], env)
        .unwrap_or_else(|e| panic!("etcd's variables at their defaults must load: {e}"));
    assert_eq!(warnings, Vec::<String>::new());

    // And --help lists each of them.
    let help = Config::load(["cairn", "--help"], std::iter::empty())
        .expect_err("help")
        .to_string();
    let listed = |name: &str| {
        help.match_indices(&format!("--{name}")).any(|(at, m)| {
            let next = help[at + m.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    };
    for (name, _) in &flags {
        assert!(listed(name), "cairn --help lacks --{name}");
    }
}

/// A cairn process killed when dropped, its stderr in a file.
struct Running {
    child: Child,
    log: std::path::PathBuf,
    client: String,
}

impl Running {
    fn start(dir: &Path, args: &[String], env: &[(String, String)], client: String) -> Running {
        let log = dir.join("cairn.stderr");
        let file = File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn cairn");
        let mut running = Running { child, log, client };
        let url = running.client.clone();
        let serving = wait_until(READY_TIMEOUT, || {
            running.child.try_wait().ok().flatten().is_none() && grpc::range_ok(&url)
        });
        assert!(serving, "cairn did not serve on {url}:\n{}", running.logs());
        running
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.client, args, None)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- cairn stderr -----\n{}", self.logs());
        }
    }
}

fn check_serves_and_logs(running: &Running, ignored_flag: &str) {
    let put = running.etcdctl(&["put", "dropped-in", "yes"]);
    assert!(put.status.success(), "{put:?}");
    let get = running.etcdctl(&["get", "dropped-in", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "yes");
    let logs = running.logs();
    let published = wait_until(Duration::from_secs(10), || {
        running.logs().contains("published local member to cluster")
    });
    assert!(published, "no publish line:\n{logs}");
    for line in [
        "ready to serve client requests".to_string(),
        format!("flag --{ignored_flag} accepted and ignored"),
    ] {
        assert!(logs.contains(&line), "logs lack {line:?}:\n{logs}");
    }
}

#[test]
fn starts_from_an_etcd_unit_with_etcd_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    // How etcd's container images and many units configure it: variables only.
    let env: Vec<(String, String)> = [
        ("ETCD_NAME", "infra0".to_string()),
        (
            "ETCD_DATA_DIR",
            dir.path().join("etcd").display().to_string(),
        ),
        ("ETCD_LISTEN_CLIENT_URLS", client_url.clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url.clone()),
        ("ETCD_LISTEN_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_CLUSTER", format!("infra0={peer_url}")),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".to_string()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "etcd-cluster-1".to_string()),
        ("ETCD_ENABLE_V2", "true".to_string()),
        ("ETCDCTL_API", "3".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // And the flags kubeadm's static pod adds (TLS and metrics aside).
    let args: Vec<String> = [
        "--experimental-initial-corrupt-check=true",
        "--experimental-watch-progress-notify-interval=5s",
        "--snapshot-count=10000",
        "--logger=zap",
        "--log-outputs=stderr",
        "--auto-compaction-retention=8",
        "--quota-backend-bytes=8589934592",
    ]
    .map(String::from)
    .to_vec();
    let running = Running::start(dir.path(), &args, &env, client_url);
    check_serves_and_logs(&running, "enable-v2");
    assert!(
        dir.path().join("etcd/member").is_dir(),
        "ETCD_DATA_DIR is used"
    );
}

#[test]
fn starts_from_an_etcd_yaml_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let wal = dir.path().join("wal");
    let yaml = format!(
        "name: yaml0\n\
         data-dir: {data}\n\
         wal-dir: {wal}\n\
         listen-client-urls: {client_url}\n\
         advertise-client-urls: {client_url}\n\
         listen-peer-urls: {peer_url}\n\
         initial-advertise-peer-urls: {peer_url}\n\
         initial-cluster: yaml0={peer_url}\n\
         initial-cluster-state: 'new'\n\
         max-wals: 0\n\
         proxy: 'off'\n\
         log-outputs: [stderr]\n\
         client-transport-security:\n  cert-file:\n  auto-tls: false\n\
         pre-vote: true\n\
         discovery-proxy: 'http://proxy:3128'\n",
        data = dir.path().join("data").display(),
        wal = wal.display(),
    );
    let path = dir.path().join("etcd.conf.yml");
    std::fs::write(&path, yaml).expect("write yaml");
    let env = [("ETCD_CONFIG_FILE".to_string(), path.display().to_string())];
    let running = Running::start(dir.path(), &[], &env, client_url);
    check_serves_and_logs(&running, "discovery-proxy");
    assert!(
        std::fs::read_dir(&wal).is_ok_and(|mut d| d.next().is_some()),
        "the raft log lives in wal-dir"
    );
}
