//! One scripted etcdctl session, run against a fresh real etcd and a fresh
//! server under test; the two transcripts must be equal once normalised.
//!
//! The normalisation (see `common::normalise`) replaces only what two fresh
//! single-member clusters legitimately differ in: ports, member and cluster
//! ids, raft term, `took` durations, clientv3's log timestamps and client ids,
//! and in `endpoint status` the DB size and raft indexes. Revisions, versions,
//! values, counts, error texts, gRPC codes and exit codes must match exactly.
//!
//! Leases: etcdctl 3.4 cannot choose a lease id, so each server picks its
//! own. A step refers to the n-th lease granted in the session as `{Ln}`;
//! the ids are learnt from the grant outputs and replaced by `<LEASE_n>` in
//! the transcript, as is the remaining TTL of `lease timetolive` (it
//! depends on timing).

mod common;

use common::{etcdctl, normalise, Identity, Kind, Server};

/// One etcdctl invocation of the session.
struct Step {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
}

fn cmd(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
    }
}

fn with_stdin(args: &[&str], stdin: impl Into<Vec<u8>>) -> Step {
    Step {
        stdin: Some(stdin.into()),
        ..cmd(args)
    }
}

/// A txn of `n` puts (keys `t0..`), as etcdctl's txn stdin.
fn txn_of_puts(n: usize) -> String {
    let puts: String = (0..n).map(|i| format!("put t{i} v{i}\n")).collect();
    format!("\n{puts}\n\n")
}

fn session() -> Vec<Step> {
    vec![
        cmd(&["endpoint", "health"]),
        cmd(&["endpoint", "status"]),
        cmd(&["endpoint", "status", "-w", "json"]),
        cmd(&["member", "list"]),
        cmd(&["member", "list", "-w", "json"]),
        cmd(&["get", "foo", "-w", "json"]),
        cmd(&["put", "foo", "bar"]),
        cmd(&["put", "foo", "baz", "--prev-kv"]),
        cmd(&["put", "foo2", "x", "-w", "json"]),
        cmd(&["put", "foo3", "y", "--prev-kv", "-w", "json"]),
        cmd(&["get", "foo"]),
        cmd(&["get", "foo", "--prefix", "-w", "json"]),
        cmd(&["put", "", "v"]),
        cmd(&["get", ""]),
        cmd(&["put", "--ignore-value", "missing"]),
        cmd(&["put", "--ignore-value", "foo", "-w", "json"]),
        cmd(&["put", "--ignore-lease", "missing", "v"]),
        cmd(&["put", "--lease=1234", "k", "v"]),
        with_stdin(&["put", "big"], vec![b'x'; 1536 * 1024]),
        cmd(&["put", "a", "3"]),
        cmd(&["put", "b", "1"]),
        cmd(&["put", "c", "2"]),
        cmd(&["put", "a", "0"]),
        cmd(&["get", "", "--from-key", "--sort-by=VERSION", "--order=DESCEND"]),
        cmd(&["get", "", "--from-key", "--sort-by=MODIFY", "-w", "json"]),
        cmd(&["get", "", "--from-key", "--sort-by=CREATE", "--order=DESCEND", "--limit=2", "-w", "json"]),
        cmd(&["get", "", "--from-key", "--sort-by=VALUE", "--keys-only"]),
        cmd(&["get", "a", "c", "--print-value-only"]),
        cmd(&["get", "a", "--rev=7", "-w", "json"]),
        with_stdin(
            &["txn"],
            "value(\"foo\") = \"baz\"\nversion(\"a\") = \"2\"\ncreate(\"b\") > \"0\"\nmod(\"c\") < \"100\"\n\nput t yes\nget a\n\nput t no\n\n",
        ),
        with_stdin(&["txn", "-w", "json"], "version(\"a\") = \"9\"\n\nput t yes\n\nput t no\ndel b --prev-kv\nget t\n\n"),
        with_stdin(&["txn", "-w", "json"], "create(\"missing\") = \"0\"\n\nput lock me\n\n\n"),
        with_stdin(&["txn"], txn_of_puts(129)),
        with_stdin(&["txn"], "\nput d 1\nput d 2\n\n\n"),
        with_stdin(&["txn"], "\nput d1 1\ndel d --prefix\n\n\n"),
        with_stdin(&["txn", "-w", "json"], txn_of_puts(128)),
        cmd(&["get", "t", "--prefix", "--limit=3", "-w", "json"]),
        cmd(&["del", "foo", "--prev-kv"]),
        cmd(&["del", "t", "--prefix"]),
        cmd(&["del", "foo", "--prefix", "--prev-kv", "-w", "json"]),
        cmd(&["del", "nothing", "-w", "json"]),
        cmd(&["compaction", "5"]),
        cmd(&["get", "foo", "--rev=4"]),
        cmd(&["get", "foo", "--rev=5", "-w", "json"]),
        cmd(&["get", "foo", "--rev=1000"]),
        cmd(&["compaction", "3"]),
        cmd(&["compaction", "1000"]),
        cmd(&["get", "", "--from-key", "-w", "json"]),
        // Leases.
        cmd(&["lease", "grant", "100"]),
        cmd(&["lease", "grant", "1"]),
        cmd(&["lease", "revoke", "{L2}"]),
        cmd(&["put", "--lease={L1}", "lk1", "a"]),
        cmd(&["put", "--lease={L1}", "lk2", "b", "-w", "json"]),
        cmd(&["put", "lk3", "c"]),
        cmd(&["get", "lk", "--prefix", "-w", "json"]),
        cmd(&["lease", "timetolive", "{L1}"]),
        cmd(&["lease", "keep-alive", "--once", "{L1}"]),
        cmd(&["lease", "list"]),
        cmd(&["put", "--lease={L2}", "lk4", "x"]),
        with_stdin(&["txn"], "\nput lk5 y --lease={L2}\n\n\n"),
        cmd(&["lease", "revoke", "{L1}"]),
        cmd(&["get", "lk", "--prefix", "-w", "json"]),
        cmd(&["lease", "timetolive", "{L1}"]),
        cmd(&["lease", "timetolive", "{L1}", "-w", "json"]),
        cmd(&["lease", "keep-alive", "--once", "{L1}"]),
        cmd(&["lease", "revoke", "{L1}"]),
        cmd(&["lease", "grant", "9000000001"]),
        cmd(&["lease", "grant", "50", "-w", "json"]),
        cmd(&["lease", "list"]),
        cmd(&["endpoint", "status", "-w", "json"]),
    ]
}

/// Replaces `{Ln}` in a step's argument with the n-th lease id granted.
fn with_leases(arg: &str, leases: &[String]) -> String {
    leases
        .iter()
        .enumerate()
        .fold(arg.to_string(), |a, (i, id)| {
            a.replace(&format!("{{L{}}}", i + 1), id)
        })
}

/// The lease id (hex, as etcdctl prints it) a successful `lease grant` printed.
fn granted_lease(args: &[&str], out: &std::process::Output) -> Option<String> {
    if !args.starts_with(&["lease", "grant"]) || !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
        return v["ID"].as_i64().map(|id| format!("{id:016x}"));
    }
    stdout.split_whitespace().nth(1).map(str::to_string)
}

/// Replaces lease ids (hex and decimal) by `<LEASE_n>` and the remaining
/// TTL of `lease timetolive` by `<REMAINING>`.
fn normalise_leases(text: &str, args: &[&str], leases: &[String]) -> String {
    let mut text = text.to_string();
    for (i, hex) in leases.iter().enumerate() {
        let name = format!("<LEASE_{}>", i + 1);
        text = text.replace(hex, &name);
        if let Ok(dec) = i64::from_str_radix(hex, 16) {
            text = text.replace(&dec.to_string(), &name);
        }
    }
    if args.starts_with(&["lease", "timetolive"]) {
        if let Some(start) = text.find("remaining(") {
            if let Some(len) = text[start..].find(')') {
                text.replace_range(start..start + len + 1, "remaining(<REMAINING>)");
            }
        }
        if let Some(start) = text.find("\"TTL\": ") {
            let from = start + "\"TTL\": ".len();
            let len = text[from..]
                .find(|c: char| c != '-' && !c.is_ascii_digit())
                .unwrap_or(0);
            // An expired lease's TTL (-1) is deterministic; keep it.
            if &text[from..from + len] != "-1" {
                text.replace_range(from..from + len, "\"<REMAINING>\"");
            }
        }
    }
    text
}

/// Runs the session against `server`; returns one normalised text per step.
fn transcript(server: &Server) -> Vec<String> {
    let id = Identity::of(server);
    let mut leases = Vec::new();
    session()
        .iter()
        .map(|step| {
            let template: Vec<&str> = step.args.iter().map(String::as_str).collect();
            let real: Vec<String> = template.iter().map(|a| with_leases(a, &leases)).collect();
            let args: Vec<&str> = real.iter().map(String::as_str).collect();
            let stdin = step
                .stdin
                .as_ref()
                .map(|s| with_leases(&String::from_utf8_lossy(s), &leases).into_bytes());
            let out = etcdctl(server, &args, stdin.as_deref());
            leases.extend(granted_lease(&args, &out));
            normalise_leases(&normalise(&id, &template, &out), &template, &leases)
        })
        .collect()
}

/// Lines of `want` and `got` side by side, marking the ones that differ.
fn line_diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    (0..w.len().max(g.len()))
        .map(|i| match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => format!("  {a}\n"),
            (a, b) => format!(
                "- {}\n+ {}\n",
                a.unwrap_or(&"<missing>"),
                b.unwrap_or(&"<missing>")
            ),
        })
        .collect()
}

#[test]
fn etcdctl_session_matches_etcd() {
    let etcd = Server::start(Kind::Etcd);
    let want = transcript(&etcd);
    drop(etcd);
    let cairn = Server::start(Kind::Cairn);
    let got = transcript(&cairn);

    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| line_diff(w, g))
        .collect();
    if !diffs.is_empty() {
        panic!(
            "{} of {} steps differ (- etcd, + {:?}):\n\n{}\n===== full etcd transcript =====\n{}",
            diffs.len(),
            want.len(),
            cairn.kind,
            diffs.join("\n"),
            want.concat()
        );
    }
    // The session must have exercised both outcomes, or it proves little.
    let all = want.concat();
    assert!(
        all.contains("[exit 0]") && all.contains("[exit 1]"),
        "{all}"
    );
    // The lease steps ran with real ids (a grant that failed would leave
    // `{L1}` in place and prove nothing).
    for want in [
        "lease <LEASE_1> granted with TTL(100s)",
        "remaining(<REMAINING>)",
        "lease <LEASE_1> keepalived with TTL(100)",
        "lease <LEASE_1> already expired",
        "found 1 leases\n<LEASE_3>",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}
