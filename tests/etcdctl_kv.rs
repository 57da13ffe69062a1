//! The real etcdctl (3.4) against the server under test, for the KV API:
//! get/put/del with their options, txn, compaction, endpoint and member
//! commands, and every KV error etcd reports.
//!
//! Each test starts its own fresh single-member server, so revisions are
//! deterministic (a fresh store is at revision 1). Every expected output
//! below was observed from etcd 3.4.23; `CAIRN_TEST_SERVER=etcd cargo test
//! --test etcdctl_kv` re-checks them against etcd.

mod common;

use common::{etcdctl, etcdctl_json, etcdctl_ok, failure, Failure, Kind, Server, MEMBER_NAME};
use serde_json::Value;

/// Puts keys so that each sort target orders `k1 k2 k3` differently:
///
/// | key | value | create | mod | version |
/// |-----|-------|--------|-----|---------|
/// | k1  | c     | 3      | 7   | 2       |
/// | k2  | b     | 4      | 4   | 1       |
/// | k3  | a     | 2      | 6   | 3       |
/// | other | o   | 8      | 8   | 1       |
///
/// KEY: k1 k2 k3; CREATE: k3 k1 k2; MODIFY: k2 k3 k1; VERSION: k2 k1 k3;
/// VALUE: k3 k2 k1. Revision 5 holds k3=x (version 2). Ends at revision 8.
fn seed(server: &Server) {
    for (k, v) in [
        ("k3", "x"),
        ("k1", "x"),
        ("k2", "b"),
        ("k3", "x"),
        ("k3", "a"),
        ("k1", "c"),
        ("other", "o"),
    ] {
        assert_eq!(etcdctl_ok(server, &["put", k, v]), "OK\n");
    }
}

/// The current store revision, from a `get` header.
fn revision(server: &Server) -> i64 {
    etcdctl_json(server, &["get", "health"])["header"]["revision"]
        .as_i64()
        .expect("header.revision")
}

fn kv_lines(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
}

/// A command and the exact stdout etcd gives for it (exit status 0).
struct Case {
    args: &'static [&'static str],
    want: String,
}

fn check_cases(server: &Server, cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        let got = etcdctl_ok(server, case.args);
        if got != case.want {
            failed.push(format!(
                "etcdctl {:?}\n--- want\n{}--- got\n{}",
                case.args, case.want, got
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn get_range_options() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    let (k1, k2, k3, other) = (("k1", "c"), ("k2", "b"), ("k3", "a"), ("other", "o"));
    let cases = [
        Case {
            args: &["get", "k1"],
            want: kv_lines(&[k1]),
        },
        Case {
            args: &["get", "nope"],
            want: String::new(),
        },
        Case {
            args: &["get", "k", "--prefix"],
            want: kv_lines(&[k1, k2, k3]),
        },
        // A second argument is the range end (exclusive).
        Case {
            args: &["get", "k1", "k3"],
            want: kv_lines(&[k1, k2]),
        },
        Case {
            args: &["get", "k2", "--from-key"],
            want: kv_lines(&[k2, k3, other]),
        },
        Case {
            args: &["get", "", "--from-key", "--keys-only"],
            want: "k1\n\nk2\n\nk3\n\nother\n\n".into(),
        },
        Case {
            args: &["get", "k", "--prefix", "--limit=2"],
            want: kv_lines(&[k1, k2]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=KEY"],
            want: kv_lines(&[k1, k2, k3]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=KEY", "--order=DESCEND"],
            want: kv_lines(&[k3, k2, k1]),
        },
        // --order alone sorts by key.
        Case {
            args: &["get", "k", "--prefix", "--order=DESCEND"],
            want: kv_lines(&[k3, k2, k1]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=CREATE"],
            want: kv_lines(&[k3, k1, k2]),
        },
        Case {
            args: &[
                "get",
                "k",
                "--prefix",
                "--sort-by=CREATE",
                "--order=DESCEND",
            ],
            want: kv_lines(&[k2, k1, k3]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=MODIFY"],
            want: kv_lines(&[k2, k3, k1]),
        },
        Case {
            args: &[
                "get",
                "k",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
            ],
            want: kv_lines(&[k1, k3, k2]),
        },
        Case {
            args: &[
                "get",
                "k",
                "--prefix",
                "--sort-by=VERSION",
                "--order=ASCEND",
            ],
            want: kv_lines(&[k2, k1, k3]),
        },
        Case {
            args: &[
                "get",
                "k",
                "--prefix",
                "--sort-by=VERSION",
                "--order=DESCEND",
            ],
            want: kv_lines(&[k3, k1, k2]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=VALUE"],
            want: kv_lines(&[k3, k2, k1]),
        },
        Case {
            args: &["get", "k", "--prefix", "--sort-by=VALUE", "--order=DESCEND"],
            want: kv_lines(&[k1, k2, k3]),
        },
        // The limit applies after sorting.
        Case {
            args: &[
                "get",
                "k",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--limit=1",
            ],
            want: kv_lines(&[k1]),
        },
        Case {
            args: &["get", "k3", "--rev=5"],
            want: kv_lines(&[("k3", "x")]),
        },
        Case {
            args: &["get", "k1", "--rev=2"],
            want: String::new(),
        },
        Case {
            args: &["get", "k", "--prefix", "--rev=4"],
            want: "k1\nx\nk2\nb\nk3\nx\n".into(),
        },
        Case {
            args: &["get", "k", "--prefix", "--keys-only"],
            want: "k1\n\nk2\n\nk3\n\n".into(),
        },
        Case {
            args: &["get", "k", "--prefix", "--print-value-only"],
            want: "c\nb\na\n".into(),
        },
        // Keys-only responses carry no values, so only blank lines remain.
        Case {
            args: &["get", "k", "--prefix", "--keys-only", "--print-value-only"],
            want: "\n\n\n".into(),
        },
    ];
    check_cases(&server, &cases);
}

/// Reads one kv of a `-w json` response as (key, create, mod, version, value).
fn json_kv(kv: &Value) -> (String, i64, i64, i64, String) {
    let b64 = |v: &Value| -> String {
        let s = v.as_str().unwrap_or("");
        String::from_utf8(base64_decode(s)).expect("utf-8")
    };
    (
        b64(&kv["key"]),
        kv["create_revision"].as_i64().unwrap_or(0),
        kv["mod_revision"].as_i64().unwrap_or(0),
        kv["version"].as_i64().unwrap_or(0),
        b64(&kv["value"]),
    )
}

/// Standard base64 (what etcdctl's JSON uses for bytes), decoded.
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn get_json_reports_revisions_and_versions() {
    let server = Server::start(Kind::Cairn);
    seed(&server);

    let all = etcdctl_json(&server, &["get", "", "--from-key"]);
    assert_eq!(all["header"]["revision"], 8, "{all}");
    assert_eq!(all["count"], 4, "{all}");
    assert_eq!(all.get("more"), None, "`more` is omitted when false: {all}");
    let kvs: Vec<_> = all["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(json_kv)
        .collect();
    let s = String::from;
    assert_eq!(
        kvs,
        [
            (s("k1"), 3, 7, 2, s("c")),
            (s("k2"), 4, 4, 1, s("b")),
            (s("k3"), 2, 6, 3, s("a")),
            (s("other"), 8, 8, 1, s("o")),
        ]
    );

    // A limit keeps count at the full range size and sets `more`.
    let limited = etcdctl_json(&server, &["get", "k", "--prefix", "--limit=2"]);
    assert_eq!(limited["count"], 3, "{limited}");
    assert_eq!(limited["more"], true, "{limited}");
    assert_eq!(
        limited["kvs"].as_array().map(Vec::len),
        Some(2),
        "{limited}"
    );

    // A read in the past shows the old version; the header has the current revision.
    let old = etcdctl_json(&server, &["get", "k3", "--rev=5"]);
    assert_eq!(old["header"]["revision"], 8, "{old}");
    assert_eq!(json_kv(&old["kvs"][0]), (s("k3"), 2, 5, 2, s("x")));

    // No match: no kvs and no count fields at all (zero values are omitted).
    let none = etcdctl_json(&server, &["get", "nope"]);
    assert_eq!(none.get("kvs"), None, "{none}");
    assert_eq!(none.get("count"), None, "{none}");

    // keys-only drops values but keeps the revisions.
    let keys = etcdctl_json(&server, &["get", "k1", "--keys-only"]);
    assert_eq!(json_kv(&keys["kvs"][0]), (s("k1"), 3, 7, 2, s("")));
    assert_eq!(keys["kvs"][0].get("value"), None, "{keys}");

    // put --prev-kv -w json returns the previous kv and the new revision.
    let put = etcdctl_json(&server, &["put", "k2", "b2", "--prev-kv"]);
    assert_eq!(put["header"]["revision"], 9, "{put}");
    assert_eq!(json_kv(&put["prev_kv"]), (s("k2"), 4, 4, 1, s("b")));
    let after = etcdctl_json(&server, &["get", "k2"]);
    assert_eq!(json_kv(&after["kvs"][0]), (s("k2"), 4, 9, 2, s("b2")));

    // Header fields identify the member; raft_term is at least 1.
    let header = &after["header"];
    assert!(
        header["cluster_id"].as_u64().is_some_and(|id| id != 0),
        "{header}"
    );
    assert!(
        header["member_id"].as_u64().is_some_and(|id| id != 0),
        "{header}"
    );
    assert!(
        header["raft_term"].as_u64().is_some_and(|t| t >= 1),
        "{header}"
    );
}

/// etcdctl 3.4 has no `--count-only` (it arrived in 3.5), so count-only
/// ranges are checked over gRPC, the way etcdctl 3.5 and kube-apiserver send them.
#[test]
fn count_only_over_grpc() {
    use cairn::proto::etcdserverpb::RangeRequest;
    let server = Server::start(Kind::Cairn);
    seed(&server);
    let url = server.client_url();
    let resp = common::grpc::block_on(async move {
        let mut kv = common::grpc::kv_client(&url).await.expect("connect");
        let count = |key: &[u8], end: &[u8], rev: i64| RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            count_only: true,
            revision: rev,
            ..Default::default()
        };
        let mut out = Vec::new();
        for req in [
            count(b"k", b"l", 0),
            count(b"\0", b"\0", 0),
            count(b"k", b"l", 3),
            count(b"z", b"", 0),
        ] {
            out.push(kv.range(req).await.expect("range").into_inner());
        }
        out
    });
    let counts: Vec<_> = resp
        .iter()
        .map(|r| (r.count, r.kvs.len(), r.more))
        .collect();
    assert_eq!(
        counts,
        [(3, 0, false), (4, 0, false), (2, 0, false), (0, 0, false)]
    );
    assert!(resp
        .iter()
        .all(|r| r.header.as_ref().map(|h| h.revision) == Some(8)));
}

#[test]
fn put_prev_kv_and_ignore_value() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    check_cases(
        &server,
        &[
            // With a previous value, --prev-kv prints it after OK.
            Case {
                args: &["put", "k1", "c2", "--prev-kv"],
                want: "OK\nk1\nc\n".into(),
            },
            Case {
                args: &["put", "new", "v", "--prev-kv"],
                want: "OK\n".into(),
            },
            // --ignore-value keeps the value and bumps version and mod revision.
            Case {
                args: &["put", "k2", "--ignore-value"],
                want: "OK\n".into(),
            },
            Case {
                args: &["get", "k2"],
                want: "k2\nb\n".into(),
            },
        ],
    );
    let k2 = etcdctl_json(&server, &["get", "k2"]);
    assert_eq!(json_kv(&k2["kvs"][0]), ("k2".into(), 4, 11, 2, "b".into()));
}

#[test]
fn del_prev_kv_prefix_and_range() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    check_cases(
        &server,
        &[
            Case {
                args: &["del", "nothing", "--prev-kv"],
                want: "0\n".into(),
            },
            Case {
                args: &["del", "k1", "--prev-kv"],
                want: "1\nk1\nc\n".into(),
            },
            Case {
                args: &["del", "k", "--prefix", "--prev-kv"],
                want: "2\nk2\nb\nk3\na\n".into(),
            },
            Case {
                args: &["del", "k", "--prefix"],
                want: "0\n".into(),
            },
            Case {
                args: &["put", "a", "1"],
                want: "OK\n".into(),
            },
            Case {
                args: &["put", "b", "2"],
                want: "OK\n".into(),
            },
            Case {
                args: &["put", "c", "3"],
                want: "OK\n".into(),
            },
            // [a, c): the end is exclusive.
            Case {
                args: &["del", "a", "c"],
                want: "2\n".into(),
            },
            Case {
                args: &["get", "", "--from-key"],
                want: "c\n3\nother\no\n".into(),
            },
        ],
    );
    // A delete that removes nothing does not create a revision; one that does, does.
    assert_eq!(revision(&server), 14);
    let del = etcdctl_json(&server, &["del", "", "--from-key", "--prev-kv"]);
    assert_eq!(del["header"]["revision"], 15, "{del}");
    assert_eq!(del["deleted"], 2, "{del}");
    let prev: Vec<_> = del["prev_kvs"]
        .as_array()
        .expect("prev_kvs")
        .iter()
        .map(json_kv)
        .collect();
    assert_eq!(
        prev,
        [
            ("c".into(), 13, 13, 1, "3".into()),
            ("other".into(), 8, 8, 1, "o".into())
        ]
    );
    let none = etcdctl_json(&server, &["del", "nothing"]);
    assert_eq!(none["header"]["revision"], 15, "{none}");
    assert_eq!(none.get("deleted"), None, "{none}");
}

/// A txn script on stdin and etcdctl's exact stdout.
struct TxnCase {
    stdin: &'static str,
    want: &'static str,
}

#[test]
fn txn_compares_and_branches() {
    let server = Server::start(Kind::Cairn);
    seed(&server); // k1: create 3, mod 7, version 2, value c
    let cases = [
        TxnCase { stdin: "value(\"k1\") = \"c\"\n\nput r yes\n\nput r no\n\n", want: "SUCCESS\n\nOK\n" },
        TxnCase { stdin: "value(\"k1\") != \"c\"\n\nput r yes\n\nput r no\n\n", want: "FAILURE\n\nOK\n" },
        TxnCase { stdin: "value(\"k1\") > \"b\"\n\nget r\n\n\n", want: "SUCCESS\n\nr\nno\n" },
        TxnCase { stdin: "version(\"k1\") = \"2\"\n\nput r v2\n\nput r bad\n\n", want: "SUCCESS\n\nOK\n" },
        TxnCase { stdin: "version(\"k1\") > \"5\"\n\nput r bad\n\nget k1\n\n", want: "FAILURE\n\nk1\nc\n" },
        TxnCase { stdin: "create(\"k1\") = \"3\"\n\nget k3\n\n\n", want: "SUCCESS\n\nk3\na\n" },
        TxnCase { stdin: "create(\"k1\") < \"3\"\n\n\nget k2\n\n", want: "FAILURE\n\nk2\nb\n" },
        // A missing key has create revision 0: the lock/lease-election idiom.
        TxnCase { stdin: "create(\"missing\") = \"0\"\n\nput m 1\n\n\n", want: "SUCCESS\n\nOK\n" },
        // A value compare on a missing key fails.
        TxnCase { stdin: "value(\"missing2\") = \"\"\n\nput m2 1\n\n\n", want: "FAILURE\n" },
        TxnCase { stdin: "mod(\"k1\") = \"7\"\n\nget k1\n\n\n", want: "SUCCESS\n\nk1\nc\n" },
        // Several compares must all hold; several ops print in order.
        TxnCase {
            stdin: "mod(\"k1\") < \"100\"\nvalue(\"k2\") = \"b\"\n\ndel r\nput s 1\nget k --prefix\n\nput r no\n\n",
            want: "SUCCESS\n\n1\n\nOK\n\nk1\nc\nk2\nb\nk3\na\n",
        },
        TxnCase {
            stdin: "mod(\"k1\") < \"100\"\nvalue(\"k2\") = \"x\"\n\ndel s\n\nget s\nget k1\n\n",
            want: "FAILURE\n\ns\n1\n\nk1\nc\n",
        },
        // No compares: success; reads and writes of the same key are fine.
        TxnCase { stdin: "\nput x 1\nget x\n\n\n", want: "SUCCESS\n\nOK\n\nx\n1\n" },
        // The same key in both branches is not a duplicate.
        TxnCase { stdin: "\nput x 2\n\nput x 3\n\n", want: "SUCCESS\n\nOK\n" },
        // Overlapping deletes are not duplicates either.
        TxnCase { stdin: "\ndel x --prefix\ndel x1\n\n\n", want: "SUCCESS\n\n1\n\n0\n" },
    ];
    let mut failed = Vec::new();
    for case in &cases {
        let out = etcdctl(&server, &["txn"], Some(case.stdin.as_bytes()));
        let got = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || got != case.want {
            failed.push(format!(
                "txn <<<{:?}\n--- want\n{}--- got ({})\n{}{}",
                case.stdin,
                case.want,
                out.status,
                got,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} txn case(s) differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Revisions: one per successful write txn (each txn is one revision).
    assert_eq!(revision(&server), 16);
}

#[test]
fn txn_json_and_op_limits() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    let run = |stdin: &str| -> Value {
        let out = etcdctl(&server, &["txn", "-w", "json"], Some(stdin.as_bytes()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("txn json")
    };

    // Success: `succeeded` true; nested response headers carry only the revision.
    let ok = run("version(\"k1\") = \"2\"\n\nput a 1\nput b 2\nget k1\n\n\n");
    assert_eq!(ok["succeeded"], true, "{ok}");
    assert_eq!(ok["header"]["revision"], 9, "{ok}");
    let responses = ok["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 3, "{ok}");
    assert_eq!(
        responses[0]["Response"]["ResponsePut"]["header"],
        serde_json::json!({"revision": 9})
    );
    assert_eq!(
        responses[1]["Response"]["ResponsePut"]["header"],
        serde_json::json!({"revision": 9})
    );
    let range = &responses[2]["Response"]["ResponseRange"];
    assert_eq!(range["header"], serde_json::json!({"revision": 9}), "{ok}");
    assert_eq!(range["count"], 1, "{ok}");
    assert_eq!(
        json_kv(&range["kvs"][0]),
        ("k1".into(), 3, 7, 2, "c".into())
    );

    // Both puts of one txn share its revision.
    let a = etcdctl_json(&server, &["get", "a"]);
    let b = etcdctl_json(&server, &["get", "b"]);
    assert_eq!(json_kv(&a["kvs"][0]), ("a".into(), 9, 9, 1, "1".into()));
    assert_eq!(json_kv(&b["kvs"][0]), ("b".into(), 9, 9, 1, "2".into()));

    // Failure: `succeeded` is omitted (false); the failure ops ran.
    let failed = run("version(\"k1\") = \"9\"\n\nput a x\n\ndel b --prev-kv\n\n");
    assert_eq!(failed.get("succeeded"), None, "{failed}");
    assert_eq!(failed["header"]["revision"], 10, "{failed}");
    let del = &failed["responses"][0]["Response"]["ResponseDeleteRange"];
    assert_eq!(del["deleted"], 1, "{failed}");
    assert_eq!(
        json_kv(&del["prev_kvs"][0]),
        ("b".into(), 9, 9, 1, "2".into())
    );

    // A read-only txn does not create a revision.
    let read = run("\nget a\n\n\n");
    assert_eq!(read["header"]["revision"], 10, "{read}");

    // max-txn-ops (128) bounds compares, success ops and failure ops each,
    // not their sum: 128 + 128 + 128 is accepted.
    let lines = |f: &dyn Fn(usize) -> String| (1..=128).map(f).collect::<String>();
    let big = format!(
        "{}\n{}\n{}\n",
        lines(&|i| format!("version(\"c{i}\") = \"0\"\n")),
        lines(&|i| format!("put s{i} v\n")),
        lines(&|i| format!("put f{i} v\n")),
    );
    let accepted = run(&big);
    assert_eq!(accepted["succeeded"], true, "{accepted}");
    assert_eq!(accepted["responses"].as_array().map(Vec::len), Some(128));
    assert_eq!(accepted["header"]["revision"], 11, "{accepted}");
}

#[test]
fn compaction_and_read_revisions() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    assert_eq!(
        etcdctl_ok(&server, &["compaction", "5"]),
        "compacted revision 5\n"
    );
    check_cases(
        &server,
        &[
            // Reading exactly at the compacted revision still works.
            Case {
                args: &["get", "k3", "--rev=5"],
                want: "k3\nx\n".into(),
            },
            Case {
                args: &["get", "k3", "--rev=8"],
                want: "k3\na\n".into(),
            },
            Case {
                args: &["get", "k3"],
                want: "k3\na\n".into(),
            },
        ],
    );
    // Compaction does not create a revision.
    assert_eq!(revision(&server), 8);
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    let future = "etcdserver: mvcc: required revision is a future revision";
    let cases: [(&[&str], &str); 5] = [
        (&["get", "k3", "--rev=4"], compacted),
        (&["get", "k3", "--rev=9"], future),
        (&["compaction", "5"], compacted),
        (&["compaction", "3"], compacted),
        (&["compaction", "100"], future),
    ];
    for (args, error) in cases {
        let out = etcdctl(&server, args, None);
        assert_eq!(
            failure(&out),
            Failure {
                exit_code: Some(1),
                error: error.into(),
                grpc_error: Some(format!("rpc error: code = OutOfRange desc = {error}")),
                stdout: String::new(),
            },
            "etcdctl {args:?}"
        );
    }
    // Compaction survives and later ones proceed.
    assert_eq!(
        etcdctl_ok(&server, &["compaction", "8"]),
        "compacted revision 8\n"
    );
    let out = etcdctl(&server, &["get", "k3", "--rev=7"], None);
    assert_eq!(failure(&out).error, compacted);
}

#[test]
fn endpoint_status_health_and_member_list() {
    let server = Server::start(Kind::Cairn);
    let ep = server.endpoint();
    let peer_url = format!("http://127.0.0.1:{}", server.peer_port);

    // endpoint health prints its verdict on stderr, not stdout.
    let health = etcdctl(&server, &["endpoint", "health"], None);
    assert!(health.status.success());
    assert_eq!(String::from_utf8_lossy(&health.stdout), "");
    let line = String::from_utf8_lossy(&health.stderr)
        .trim_end()
        .to_string();
    let prefix = format!("{ep} is healthy: successfully committed proposal: took = ");
    assert!(line.starts_with(&prefix), "{line:?}");
    let health_json = etcdctl_json(&server, &["endpoint", "health"]);
    assert_eq!(health_json[0]["endpoint"], ep.as_str(), "{health_json}");
    assert_eq!(health_json[0]["health"], true, "{health_json}");
    assert_eq!(health_json[0].get("error"), None, "{health_json}");

    let status = etcdctl_json(&server, &["endpoint", "status"]);
    let s = &status[0]["Status"];
    assert_eq!(status[0]["Endpoint"], ep.as_str(), "{status}");
    let member_id = s["header"]["member_id"].as_u64().expect("member_id");
    assert_eq!(
        s["leader"].as_u64(),
        Some(member_id),
        "a single member leads: {status}"
    );
    assert_eq!(s["header"]["revision"], 1, "{status}");
    assert_eq!(
        s["version"], "3.4.23",
        "the etcd API level cairn reports: {status}"
    );
    assert!(s["dbSize"].as_i64().is_some_and(|n| n > 0), "{status}");
    assert!(s["raftIndex"].as_u64().is_some_and(|n| n > 0), "{status}");
    assert_eq!(s["raftIndex"], s["raftAppliedIndex"], "{status}");
    assert!(s["raftTerm"].as_u64().is_some_and(|n| n >= 1), "{status}");
    assert_eq!(s.get("errors"), None, "{status}");
    assert_eq!(s.get("isLearner"), None, "{status}");

    // Simple output: ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER,
    // RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX, ERRORS
    let simple = etcdctl_ok(&server, &["endpoint", "status"]);
    let cols: Vec<&str> = simple.trim_end_matches('\n').split(", ").collect();
    assert_eq!(cols.len(), 10, "{simple:?}");
    assert_eq!(
        (cols[0], cols[1], cols[2], cols[4], cols[5], cols[9]),
        (
            ep.as_str(),
            format!("{member_id:x}").as_str(),
            "3.4.23",
            "true",
            "false",
            ""
        ),
        "{simple:?}"
    );

    let members = etcdctl_json(&server, &["member", "list"]);
    assert_eq!(
        members["header"]["member_id"].as_u64(),
        Some(member_id),
        "{members}"
    );
    assert_eq!(
        members["header"].get("revision"),
        None,
        "member list has no revision: {members}"
    );
    let m = &members["members"];
    assert_eq!(m.as_array().map(Vec::len), Some(1), "{members}");
    assert_eq!(m[0]["ID"].as_u64(), Some(member_id), "{members}");
    assert_eq!(m[0]["name"], MEMBER_NAME, "{members}");
    assert_eq!(m[0]["peerURLs"], serde_json::json!([peer_url]), "{members}");
    assert_eq!(
        m[0]["clientURLs"],
        serde_json::json!([server.client_url()]),
        "{members}"
    );
    assert_eq!(
        etcdctl_ok(&server, &["member", "list"]),
        format!(
            "{member_id:x}, started, {MEMBER_NAME}, {peer_url}, {}, false\n",
            server.client_url()
        )
    );
}

/// An etcdctl invocation that etcd rejects, and the error etcd gives.
struct ErrorCase {
    name: &'static str,
    args: &'static [&'static str],
    stdin: Option<Vec<u8>>,
    /// The gRPC status code name, as grpc-go prints it.
    code: &'static str,
    error: &'static str,
}

#[test]
fn kv_errors_match_etcd() {
    let server = Server::start(Kind::Cairn);
    seed(&server);
    // 1.5 MiB of value alone already exceeds --max-request-bytes (1.5 MiB) once
    // the key and framing are added. Values this big go through stdin: one
    // argv string may not exceed 128 KiB on Linux.
    let too_large = vec![b'a'; 1536 * 1024];
    let ops = |n: usize| -> Vec<u8> {
        let mut s = String::from("\n");
        for i in 0..n {
            s.push_str(&format!("put t{i} v\n"));
        }
        s.push_str("\n\n");
        s.into_bytes()
    };
    let cases = [
        ErrorCase {
            name: "empty key",
            args: &["put", "", "v"],
            stdin: None,
            code: "InvalidArgument",
            error: "etcdserver: key is not provided",
        },
        ErrorCase {
            name: "empty key in a range",
            args: &["get", ""],
            stdin: None,
            code: "InvalidArgument",
            error: "etcdserver: key is not provided",
        },
        ErrorCase {
            name: "ignore-value on a missing key",
            args: &["put", "--ignore-value", "missing"],
            stdin: None,
            code: "InvalidArgument",
            error: "etcdserver: key not found",
        },
        ErrorCase {
            name: "ignore-lease on a missing key",
            args: &["put", "--ignore-lease", "missing", "v"],
            stdin: None,
            code: "InvalidArgument",
            error: "etcdserver: key not found",
        },
        ErrorCase {
            name: "unknown lease",
            args: &["put", "--lease=1234", "k1", "v"],
            stdin: None,
            code: "NotFound",
            error: "etcdserver: requested lease not found",
        },
        ErrorCase {
            name: "request over 1.5 MiB",
            args: &["put", "big"],
            stdin: Some(too_large),
            code: "InvalidArgument",
            error: "etcdserver: request is too large",
        },
        ErrorCase {
            name: "129 success ops",
            args: &["txn"],
            stdin: Some(ops(129)),
            code: "InvalidArgument",
            error: "etcdserver: too many operations in txn request",
        },
        ErrorCase {
            name: "129 compares",
            args: &["txn"],
            stdin: Some(
                (0..129)
                    .map(|i| format!("version(\"c{i}\") = \"0\"\n"))
                    .chain(["\n\n\n".to_string()])
                    .collect::<String>()
                    .into_bytes(),
            ),
            code: "InvalidArgument",
            error: "etcdserver: too many operations in txn request",
        },
        ErrorCase {
            name: "two puts of one key",
            args: &["txn"],
            stdin: Some(b"\nput x 1\nput x 2\n\n\n".to_vec()),
            code: "InvalidArgument",
            error: "etcdserver: duplicate key given in txn request",
        },
        ErrorCase {
            name: "put and delete of one key",
            args: &["txn"],
            stdin: Some(b"\nput x 1\ndel x\n\n\n".to_vec()),
            code: "InvalidArgument",
            error: "etcdserver: duplicate key given in txn request",
        },
        ErrorCase {
            name: "put inside a deleted prefix",
            args: &["txn"],
            stdin: Some(b"\nput x1 1\ndel x --prefix\n\n\n".to_vec()),
            code: "InvalidArgument",
            error: "etcdserver: duplicate key given in txn request",
        },
    ];
    let before = revision(&server);
    let mut failed = Vec::new();
    for case in &cases {
        let out = etcdctl(&server, case.args, case.stdin.as_deref());
        let got = failure(&out);
        let want = Failure {
            exit_code: Some(1),
            error: case.error.to_string(),
            grpc_error: Some(format!(
                "rpc error: code = {} desc = {}",
                case.code, case.error
            )),
            stdout: String::new(),
        };
        if got != want {
            failed.push(format!("{}: want {want:?}\n  got {got:?}", case.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} error case(s) differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // No rejected request changed the store.
    assert_eq!(revision(&server), before);
    assert_eq!(
        etcdctl_ok(&server, &["get", "", "--from-key", "--keys-only"]),
        "k1\n\nk2\n\nk3\n\nother\n\n"
    );

    // Just under the limit is accepted: 1.5 MiB - 1 KiB of value.
    let out = etcdctl(&server, &["put", "big"], Some(&vec![b'a'; 1535 * 1024]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        etcdctl_ok(&server, &["get", "big", "--keys-only"]),
        "big\n\n"
    );
}
