//! The server as an operator meets it: bad configuration, graceful
//! shutdown, the space quota and its alarm, auto-compaction.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{etcdctl, etcdctl_ok, failure, wait_until, Kind, Server};

fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

#[test]
fn an_invalid_setting_stops_start_up_with_one_line_naming_it() {
    struct Case {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        names: &'static str,
    }
    let cases = [
        Case {
            args: &["--election-timeout", "100"],
            env: &[],
            names: "--election-timeout",
        },
        Case {
            args: &["--listen-client-urls", "ftp://x:1"],
            env: &[],
            names: "--listen-client-urls",
        },
        Case {
            args: &["--max-txn-ops", "0"],
            env: &[],
            names: "--max-txn-ops",
        },
        Case {
            args: &["--no-such-flag"],
            env: &[],
            names: "--no-such-flag",
        },
        Case {
            args: &[],
            env: &[("CAIRN_HEARTBEAT_INTERVAL", "fast")],
            names: "CAIRN_HEARTBEAT_INTERVAL",
        },
        Case {
            args: &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            env: &[],
            names: "--auto-compaction-retention",
        },
    ];
    for c in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(cairn_bin())
            .args(["--data-dir", &dir.path().join("d").to_string_lossy()])
            .args(c.args)
            .envs(c.env.iter().copied())
            .output()
            .expect("run cairn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{:?} {:?} must fail; stderr: {stderr}",
            c.args,
            c.env
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line for {:?}: {stderr}",
            c.args
        );
        assert!(
            stderr.contains(c.names),
            "{:?}: the line must name {}: {stderr}",
            c.args,
            c.names
        );
        assert!(
            !dir.path().join("d").exists(),
            "nothing may be created on a bad config"
        );
    }
}

#[test]
fn sigterm_shuts_down_gracefully_and_a_restart_keeps_every_write() {
    let mut server = Server::start(Kind::Cairn);
    for i in 0..20 {
        etcdctl_ok(&server, &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    // cairn exits 0 after draining and flushing (etcd 3.4 instead dies by
    // the re-raised signal): a clean stop is not a failure for a supervisor.
    let status = server.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "SIGTERM must end in exit 0, got {status}; logs:\n{}",
        server.logs()
    );
    server.restart();
    let values = etcdctl_ok(&server, &["get", "k", "--prefix", "--print-value-only"]);
    let mut got: Vec<&str> = values.lines().collect();
    got.sort_by_key(|v| v[1..].parse::<u32>().unwrap_or(0));
    let want: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    assert_eq!(got, want);
    // Revisions continue where they were: 20 puts after revision 1.
    let out = etcdctl_ok(&server, &["put", "after", "restart", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["header"]["revision"], 22, "{out}");
}

/// Puts 64 KiB values until the store refuses one; returns how many went in.
/// The member identity is stored at bootstrap: a restart with flags that
/// contradict it (another name, another cluster token) stops with one line
/// naming the flag and the stored member, and leaves the data dir usable.
#[test]
fn a_restart_with_another_identity_is_refused() {
    let mut server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        return; // etcd ignores --initial-cluster* on restart; a cairn check
    }
    etcdctl_ok(&server, &["put", "k", "v"]);
    assert!(server.terminate(Duration::from_secs(20)).success());
    let data_dir = server.data_dir();
    let peer = format!("http://127.0.0.1:{}", server.peer_port);
    let client = server.client_url();
    let cases: [(&str, &str, &str); 2] = [
        ("other", "etcd-cluster", "--name other"),
        (
            common::MEMBER_NAME,
            "another-token",
            "--initial-cluster-token another-token",
        ),
    ];
    for (name, token, names) in cases {
        let out = Command::new(cairn_bin())
            .args(["--data-dir", &data_dir.to_string_lossy()])
            .args(["--name", name])
            .args(["--initial-cluster-token", token])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .output()
            .expect("run cairn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{names} must be refused: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("contradicts"))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {names}: {stderr}");
        assert!(
            lines[0].contains(names) && lines[0].contains(common::MEMBER_NAME),
            "the line names {names} and the stored member: {stderr}"
        );
    }
    // The right flags still start it, with the data.
    server.restart();
    assert_eq!(
        etcdctl_ok(&server, &["get", "k", "--print-value-only"]).trim(),
        "v"
    );
}

fn fill_until_nospace(server: &Server) -> usize {
    let value = vec![b'x'; 64 * 1024];
    for i in 0..200usize {
        let out = etcdctl(server, &["put", &format!("big{i}")], Some(&value));
        if !out.status.success() {
            let f = failure(&out);
            assert_eq!(
                f.error, "etcdserver: mvcc: database space exceeded",
                "{f:?}"
            );
            return i;
        }
    }
    panic!(
        "200 puts of 64 KiB never exceeded the quota; logs:\n{}",
        server.logs()
    );
}

#[test]
fn the_quota_raises_nospace_which_blocks_writes_until_disarmed() {
    let mut server = Server::start_with(Kind::Cairn, &["--quota-backend-bytes", "1000000"]);
    let accepted = fill_until_nospace(&server);
    assert!(accepted > 0, "some puts must fit in 1 MB");

    let id = etcdctl_ok(&server, &["endpoint", "status", "-w", "fields"]);
    let member = id
        .lines()
        .find_map(|l| l.strip_prefix("\"MemberID\" : "))
        .expect("MemberID in endpoint status fields")
        .trim()
        .to_string();
    assert_eq!(
        etcdctl_ok(&server, &["alarm", "list"]).trim(),
        format!("memberID:{member} alarm:NOSPACE")
    );
    let status = etcdctl_ok(&server, &["endpoint", "status"]);
    assert!(
        status.contains("alarm:NOSPACE"),
        "status errors show the alarm: {status}"
    );

    // Reads and deletes still work; writes do not, even small ones.
    assert_eq!(
        etcdctl_ok(&server, &["get", "big0", "--keys-only"]).trim(),
        "big0"
    );
    let small = etcdctl(&server, &["put", "small", "v"], None);
    assert_eq!(
        failure(&small).error,
        "etcdserver: mvcc: database space exceeded"
    );
    assert_eq!(etcdctl_ok(&server, &["del", "big0"]).trim(), "1");

    // The operator's way out, as with etcd: more quota, restart, disarm.
    server.kill();
    server.extra_args = vec!["--quota-backend-bytes".into(), "100000000".into()];
    server.restart();
    let still = etcdctl(&server, &["put", "small", "v"], None);
    assert_eq!(
        failure(&still).error,
        "etcdserver: mvcc: database space exceeded",
        "the alarm survives a restart"
    );
    assert_eq!(
        etcdctl_ok(&server, &["alarm", "disarm"]).trim(),
        format!("memberID:{member} alarm:NOSPACE")
    );
    assert_eq!(etcdctl_ok(&server, &["alarm", "list"]).trim(), "");
    assert_eq!(etcdctl_ok(&server, &["put", "small", "v"]).trim(), "OK");
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let server = Server::start_with(
        Kind::Cairn,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    etcdctl_ok(&server, &["put", "flag", "v1"]);
    etcdctl_ok(&server, &["put", "flag", "v2"]);
    let compacted = wait_until(Duration::from_secs(15), || {
        let out = etcdctl(&server, &["get", "flag", "--rev", "2"], None);
        !out.status.success()
            && failure(&out).error == "etcdserver: mvcc: required revision has been compacted"
    });
    assert!(
        compacted,
        "revision 2 was not compacted within 15 s; logs:\n{}",
        server.logs()
    );
    assert_eq!(
        etcdctl_ok(&server, &["get", "flag", "--print-value-only"]).trim(),
        "v2"
    );
}
