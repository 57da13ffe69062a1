//! Disaster recovery as an etcd operator runs it: `etcdctl snapshot save`
//! against cairn, `cairn snapshot status`, `cairn snapshot restore` into a
//! new data dir, and a member started on it that holds the same data (same
//! keys, revisions and HashKV at the snapshot's revision, same leases),
//! also for a snapshot taken while clients write. A damaged file is refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::proto::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};
use common::{etcdctl_json, etcdctl_ok, grpc, Kind, Server};

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn")
}

/// Every key with its revisions and version, at `rev` (0: now).
fn all_kvs(server: &Server, rev: i64) -> Vec<(String, i64, i64, i64, String)> {
    let rev = rev.to_string();
    let json = etcdctl_json(server, &["get", "", "--from-key", "--rev", &rev]);
    let mut out = Vec::new();
    for kv in json["kvs"].as_array().cloned().unwrap_or_default() {
        let text = |f: &str| kv[f].as_str().unwrap_or_default().to_string();
        let num = |f: &str| kv[f].as_i64().unwrap_or(0);
        out.push((
            text("key"),
            num("create_revision"),
            num("mod_revision"),
            num("version"),
            text("value"),
        ));
    }
    out
}

fn hash_kv(server: &Server, revision: i64) -> (u32, i64) {
    let url = server.client_url();
    grpc::block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let h = MaintenanceClient::new(channel)
            .hash_kv(HashKvRequest { revision })
            .await
            .expect("hashkv")
            .into_inner();
        (h.hash, h.compact_revision)
    })
}

fn save(server: &Server, file: &Path) {
    let out = etcdctl_ok(server, &["snapshot", "save", &file.to_string_lossy()]);
    assert!(out.contains("Snapshot saved at"), "{out}");
}

/// Starts a fresh member, replaces its data dir with the restored `file`
/// (same name, ports and cluster flags it runs with), and restarts it.
fn restore_into_new_member(file: &Path) -> Server {
    restore_into_new_member_with(file, &[])
}

/// The same, with extra flags for the new member and its restore
/// (`--backend-engine sled`).
fn restore_into_new_member_with(file: &Path, flags: &[&str]) -> Server {
    let mut server = Server::start_with(Kind::Cairn, flags);
    server.kill();
    std::fs::remove_dir_all(server.data_dir()).expect("remove data dir");
    let peer = format!("http://127.0.0.1:{}", server.peer_port);
    let out = cairn(
        &[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            "--name",
            common::MEMBER_NAME,
            "--data-dir",
            &server.data_dir().to_string_lossy(),
            "--initial-cluster",
            &format!("{}={peer}", common::MEMBER_NAME),
            "--initial-advertise-peer-urls",
            &peer,
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    server
}

fn revision_of(json: &serde_json::Value) -> i64 {
    json["header"]["revision"].as_i64().expect("revision")
}

#[test]
fn save_status_restore_keeps_every_key_revision_and_lease() {
    let source = Server::start(Kind::Cairn);
    assert!(!source.is_etcd(), "cairn's snapshot tools are cairn's");
    for i in 0..50 {
        etcdctl_ok(&source, &["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    for i in 0..10 {
        etcdctl_ok(&source, &["put", &format!("k{i:02}"), &format!("w{i}")]);
    }
    etcdctl_ok(&source, &["del", "k4", "--prefix"]);
    let compact_at = revision_of(&etcdctl_json(&source, &["get", "k00", "-w", "json"])) - 5;
    etcdctl_ok(&source, &["compaction", &compact_at.to_string()]);
    let lease = etcdctl_ok(&source, &["lease", "grant", "600"]);
    let lease_id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl_ok(&source, &["put", "leased", "x", "--lease", &lease_id]);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    save(&source, &file);
    let revision = revision_of(&etcdctl_json(&source, &["get", "k00", "-w", "json"]));

    let status = cairn(&["snapshot", "status", &file.to_string_lossy(), "-w", "json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["revision"], revision, "{status}");
    assert!(status["totalKey"].as_u64().unwrap_or(0) > 50, "{status}");
    let table = cairn(&["snapshot", "status", &file.to_string_lossy(), "-w", "table"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains(" HASH ") && table.contains(" TOTAL KEYS "),
        "{table}"
    );

    let restored = restore_into_new_member(&file);
    assert_eq!(all_kvs(&restored, 0), all_kvs(&source, 0));
    assert_eq!(hash_kv(&restored, revision), hash_kv(&source, revision));
    let leases = etcdctl_ok(&restored, &["lease", "list"]);
    assert!(
        leases.contains(&lease_id),
        "lease {lease_id} lost: {leases}"
    );
    // History below the compaction stays compacted; above it, it is there.
    let old = common::etcdctl(
        &restored,
        &["get", "k00", "--rev", &(compact_at - 1).to_string()],
        None,
    );
    assert!(String::from_utf8_lossy(&old.stderr).contains("compacted"));
    assert_eq!(
        all_kvs(&restored, compact_at + 1),
        all_kvs(&source, compact_at + 1)
    );
    // The restored member takes writes at the next revision.
    let put = etcdctl_json(&restored, &["put", "after", "restore", "-w", "json"]);
    assert_eq!(revision_of(&put), revision + 1);
}

/// The sled engine (the default is fjall) behind the same save and
/// restore: a member on sled saves, the file restores into a new sled data
/// dir, and the two agree; asking for fjall on that data dir is refused by
/// name.
#[test]
fn a_sled_member_saves_and_restores_onto_sled() {
    const SLED: &[&str] = &["--backend-engine", "sled"];
    let source = Server::start_with(Kind::Cairn, SLED);
    for i in 0..30 {
        etcdctl_ok(&source, &["put", &format!("f{i:02}"), &format!("v{i}")]);
    }
    etcdctl_ok(&source, &["del", "f1", "--prefix"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    save(&source, &file);
    let revision = revision_of(&etcdctl_json(&source, &["get", "f00", "-w", "json"]));
    let mut restored = restore_into_new_member_with(&file, SLED);
    let engine = std::fs::read_to_string(restored.data_dir().join("member/state.engine"));
    assert_eq!(
        engine.ok().as_deref(),
        Some("sled"),
        "the restored data dir's engine"
    );
    assert_eq!(all_kvs(&restored, 0), all_kvs(&source, 0));
    assert_eq!(hash_kv(&restored, revision), hash_kv(&source, revision));

    restored.kill();
    let client = restored.client_url();
    let out = cairn(&[
        "--data-dir",
        &restored.data_dir().to_string_lossy(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--backend-engine",
        "fjall",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "fjall opened sled's data dir: {stderr}"
    );
    assert!(
        stderr.contains("written by the sled state engine"),
        "{stderr}"
    );
}

#[test]
fn a_snapshot_taken_under_writes_restores_the_state_at_its_revision() {
    let source = Server::start(Kind::Cairn);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (source.client_url(), stop.clone());
        std::thread::spawn(move || {
            grpc::block_on(async move {
                let mut kv = grpc::kv_client(&url).await.expect("connect");
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 20_000 {
                    let put = PutRequest {
                        key: format!("w{:03}", n % 300).into_bytes(),
                        value: n.to_string().into_bytes(),
                        ..Default::default()
                    };
                    kv.put(put).await.expect("put");
                    n += 1;
                }
                n
            })
        })
    };
    common::wait_until(std::time::Duration::from_secs(20), || {
        all_kvs(&source, 0).len() >= 300
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    save(&source, &file);
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    assert!(written > 300, "the writer made progress: {written}");

    let restored = restore_into_new_member(&file);
    let revision = revision_of(&etcdctl_json(&restored, &["get", "w000", "-w", "json"]));
    assert_eq!(all_kvs(&restored, revision), all_kvs(&source, revision));
    assert_eq!(hash_kv(&restored, revision), hash_kv(&source, revision));
    // Nothing newer than the snapshot leaked in.
    let url = restored.client_url();
    let newest = grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url).await.expect("connect");
        let r = kv
            .range(RangeRequest {
                key: b"w".to_vec(),
                range_end: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        r.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0)
    });
    assert!(newest <= revision);
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let source = Server::start(Kind::Cairn);
    etcdctl_ok(&source, &["put", "k", "v"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    save(&source, &file);
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, bytes).expect("write");

    let status = cairn(&["snapshot", "status", &file.to_string_lossy()]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("hash mismatch"));
    let target = dir.path().join("restored");
    let out = cairn(&[
        "snapshot",
        "restore",
        &file.to_string_lossy(),
        "--data-dir",
        &target.to_string_lossy(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hash mismatch"));
    assert!(
        !target.join("member").exists(),
        "nothing restored from a damaged file"
    );
}

#[test]
fn a_snapshot_keeps_users_roles_and_the_enabled_auth() {
    let source = Server::start_with(Kind::Cairn, &["--bcrypt-cost", "4"]);
    for args in [
        &["user", "add", "root", "--new-user-password=pw"][..],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix",
            "read",
            "/app/",
        ],
        &["user", "add", "alice", "--new-user-password=apw"],
        &["user", "grant-role", "alice", "app"],
        &["put", "/app/a", "1"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&source, args);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("auth.db");
    // Snapshot is root only while auth is enabled, as in etcd.
    let out = etcdctl_ok(
        &source,
        &[
            "--user=root:pw",
            "snapshot",
            "save",
            &file.to_string_lossy(),
        ],
    );
    assert!(out.contains("Snapshot saved at"), "{out}");

    let restored = restore_into_new_member(&file);
    let anonymous = common::etcdctl(&restored, &["get", "/app/a"], None);
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("etcdserver: user name is empty"),
        "auth is enabled in the restored member: {anonymous:?}"
    );
    assert_eq!(
        etcdctl_ok(&restored, &["--user=alice:apw", "get", "/app/a"]),
        "/app/a\n1\n"
    );
    let roles = etcdctl_ok(&restored, &["--user=root:pw", "user", "get", "alice"]);
    assert!(roles.contains("Roles: app"), "{roles}");
}
