//! Authentication and RBAC through the real etcdctl: users, roles, key-range
//! permissions, enabling and disabling auth, wrong passwords; the same
//! session against real etcd 3.4 with identical output; and the auth store
//! surviving a restart.

mod common;

use common::{etcdctl, normalise, Identity, Kind, Server};

/// A cheap bcrypt cost, so the session does not spend seconds hashing
/// (both etcd and cairn take the flag).
const FAST_BCRYPT: [&str; 2] = ["--bcrypt-cost", "4"];

fn session() -> Vec<Vec<&'static str>> {
    let root = "--user=root:rootpw";
    vec![
        vec!["auth", "enable"],
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec!["user", "add", "root", "--new-user-password=again"],
        vec!["role", "add", "app"],
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "--prefix",
            "readwrite",
            "/app/",
        ],
        vec!["role", "grant-permission", "app", "read", "cfg"],
        vec![
            "role",
            "grant-permission",
            "app",
            "--from-key",
            "write",
            "z",
        ],
        vec!["role", "grant-permission", "nope", "read", "x"],
        vec!["role", "get", "app"],
        vec!["role", "list"],
        vec!["user", "add", "alice", "--new-user-password=alicepw"],
        vec!["user", "add", "bob", "--no-password"],
        vec!["user", "grant-role", "alice", "app"],
        vec!["user", "grant-role", "alice", "nope"],
        vec!["user", "grant-role", "carol", "app"],
        vec!["user", "get", "alice"],
        vec!["user", "list"],
        vec!["put", "/app/a", "1"],
        // etcdctl grants root the root role itself when enable says it lacks it.
        vec!["auth", "enable"],
        vec!["auth", "enable"],
        // Auth is on: anonymous, wrong password, missing user.
        vec!["put", "/app/a", "1"],
        vec!["get", "/app/a"],
        vec!["--user=alice:wrong", "get", "/app/a"],
        vec!["--user=nobody:pw", "get", "/app/a"],
        vec!["--user=bob:", "get", "/app/a"],
        // A user with a role: allowed and denied keys.
        vec!["--user=alice:alicepw", "put", "/app/a", "2"],
        vec!["--user=alice:alicepw", "get", "/app/a"],
        vec!["--user=alice:alicepw", "get", "/app/", "--prefix"],
        vec!["--user=alice:alicepw", "get", "/", "--prefix"],
        vec!["--user=alice:alicepw", "put", "/other", "x"],
        vec!["--user=alice:alicepw", "get", "/other"],
        vec!["--user=alice:alicepw", "get", "cfg"],
        vec!["--user=alice:alicepw", "put", "cfg", "x"],
        vec!["--user=alice:alicepw", "put", "zebra", "x"],
        vec!["--user=alice:alicepw", "get", "zebra"],
        vec!["--user=alice:alicepw", "del", "/app/a"],
        vec!["--user=alice:alicepw", "del", "/other"],
        vec!["--user=alice:alicepw", "user", "list"],
        vec!["--user=alice:alicepw", "role", "add", "sneaky"],
        vec!["--user=alice:alicepw", "auth", "disable"],
        // root may do everything.
        vec![root, "put", "/other", "x"],
        vec![root, "get", "/other"],
        vec![root, "user", "get", "alice"],
        vec![root, "user", "revoke-role", "alice", "app"],
        vec![root, "user", "revoke-role", "alice", "app"],
        vec!["--user=alice:alicepw", "get", "/app/a"],
        vec![root, "user", "grant-role", "alice", "app"],
        vec![
            root,
            "role",
            "revoke-permission",
            "app",
            "/app/",
            "--prefix",
        ],
        vec![
            root,
            "role",
            "revoke-permission",
            "app",
            "/app/",
            "--prefix",
        ],
        vec!["--user=alice:alicepw", "get", "/app/a"],
        vec![root, "user", "passwd", "alice", "--new-user-password=newpw"],
        vec!["--user=alice:alicepw", "get", "cfg"],
        vec!["--user=alice:newpw", "get", "cfg"],
        vec![root, "user", "delete", "root"],
        vec![root, "user", "revoke-role", "root", "root"],
        vec![root, "role", "delete", "app"],
        vec![root, "role", "delete", "app"],
        vec![root, "user", "get", "alice"],
        vec![root, "user", "delete", "bob"],
        vec![root, "user", "delete", "bob"],
        vec![root, "user", "list"],
        vec!["--user=root:wrong", "auth", "disable"],
        vec![root, "auth", "disable"],
        vec!["get", "/other"],
        vec!["user", "delete", "alice"],
        vec!["user", "list"],
    ]
}

fn transcript(server: &Server) -> Vec<String> {
    let id = Identity::of(server);
    session()
        .iter()
        .map(|args| normalise(&id, args, &etcdctl(server, args, None)))
        .collect()
}

#[test]
fn etcdctl_auth_session_matches_etcd() {
    let etcd = Server::start_with(Kind::Etcd, &FAST_BCRYPT);
    let want = transcript(&etcd);
    drop(etcd);
    let cairn = Server::start_with(Kind::Cairn, &FAST_BCRYPT);
    let got = transcript(&cairn);
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("--- etcd\n{w}+++ {:?}\n{g}", cairn.kind))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
    // The session saw both sides of the checks, or it proves little.
    let all = want.concat();
    for expected in [
        "Authentication Enabled",
        "etcdserver: permission denied",
        "etcdserver: authentication failed, invalid user ID or password",
        "etcdserver: user name is empty",
        "etcdserver: root user does not exist",
        "etcdserver: role name not found",
        "etcdserver: user name not found",
        "Authentication Disabled",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn auth_store_survives_a_restart() {
    let mut server = Server::start_with(Kind::Cairn, &FAST_BCRYPT);
    let ok = |server: &Server, args: &[&str]| {
        let out = etcdctl(server, args, None);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&server, &["user", "add", "root", "--new-user-password=pw"]);
    ok(&server, &["user", "grant-role", "root", "root"]);
    ok(&server, &["role", "add", "reader"]);
    ok(
        &server,
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix",
            "read",
            "/r/",
        ],
    );
    ok(
        &server,
        &["user", "add", "ann", "--new-user-password=annpw"],
    );
    ok(&server, &["user", "grant-role", "ann", "reader"]);
    ok(&server, &["auth", "enable"]);
    ok(&server, &["--user=root:pw", "put", "/r/k", "v"]);

    server.kill();
    server.restart();

    // Still enabled, with the same users, roles and password hashes.
    let anonymous = etcdctl(&server, &["get", "/r/k"], None);
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("etcdserver: user name is empty"),
        "auth is still enabled after the restart: {anonymous:?}"
    );
    assert_eq!(
        ok(&server, &["--user=ann:annpw", "get", "/r/k"]),
        "/r/k\nv\n"
    );
    let denied = etcdctl(&server, &["--user=ann:annpw", "put", "/r/k", "w"], None);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("etcdserver: permission denied"),
        "ann may only read: {denied:?}"
    );
    let roles = ok(&server, &["--user=root:pw", "role", "get", "reader"]);
    assert!(roles.contains("prefix /r/"), "{roles}");
}
