//! apply_batch tests: request semantics as etcd's applier, headers, txn
//! atomicity, batch overlay, exactly-once, alarms and quota, and leases
//! (grant rules, attach/detach, revoke in one revision, restart).

use std::sync::Arc;

use super::*;
use crate::mvcc::backend::open_sled_for_test;
use crate::mvcc::{BatchWriter, MemBackend, NEVER_COMPACTED};
use crate::proto::etcdserverpb::RequestOp;
use crate::proto::mvccpb::event::EventType;

const MEMBER: u64 = 0xc0ffee;
/// The minimum lease TTL the tests apply with (etcd's default: 2 s).
const MIN_TTL: i64 = 2;

/// A store plus the next raft index to apply.
struct Harness {
    /// The store under test.
    store: Store,
    /// The raft index the next applied entry gets.
    next_index: u64,
}

impl Harness {
    fn new() -> Self {
        Self::on(Store::open(Arc::new(MemBackend::new())).expect("open"))
    }

    fn on(store: Store) -> Self {
        let next_index = store.applied_index() + 1;
        Harness { store, next_index }
    }

    /// Applies `reqs` as one batch with consecutive indexes.
    fn batch(&mut self, reqs: Vec<Request>) -> ApplyOutput {
        let entries = reqs
            .into_iter()
            .map(|r| {
                let i = self.next_index;
                self.next_index += 1;
                (i, Some(r))
            })
            .collect();
        apply_batch(&self.store, entries, MIN_TTL).expect("apply")
    }

    fn one(&mut self, req: Request) -> Result<ApplyResponse, EtcdError> {
        let mut out = self.batch(vec![req]);
        out.results.pop().flatten().expect("a result")
    }

    fn put(&mut self, k: &str, v: &str) -> i64 {
        match self.one(Request::Put(put_req(k, v))) {
            Ok(ApplyResponse::Put(r)) => r.header.expect("header").revision,
            other => panic!("put failed: {other:?}"),
        }
    }

    fn get(&self, k: &str) -> Option<KeyValue> {
        self.store
            .range(&RangeRequest {
                key: k.into(),
                ..Default::default()
            })
            .expect("range")
            .kvs
            .pop()
    }

    fn value(&self, k: &str) -> Option<String> {
        self.get(k)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    fn rev(&self) -> i64 {
        self.store.current_revision()
    }
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn range_req(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn del_req(k: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        prev_kv: false,
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(put_req(k, v))),
    }
}

fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(range_req(k, ""))),
    }
}

fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(del_req(k, end))),
    }
}

fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestTxn(t)),
    }
}

fn cmp(key: &str, end: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let t = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: t as i32,
        key: key.into(),
        target_union: Some(target),
        range_end: end.into(),
    }
}

fn txn_resp(r: Result<ApplyResponse, EtcdError>) -> TxnResponse {
    match r {
        Ok(ApplyResponse::Txn(t)) => t,
        other => panic!("expected a txn response, got {other:?}"),
    }
}

fn rev_of(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().expect("header").revision
}

/// Writes `key` with a lease straight through the store, bypassing the
/// lease check (the lease table ignores attachments to unknown leases).
fn put_with_lease(h: &mut Harness, key: &str, value: &str, lease: i64) {
    let mut w = BatchWriter::new(&h.store);
    let mut t = w.txn();
    t.put(key.as_bytes(), value.as_bytes(), lease);
    t.commit();
    w.commit(h.next_index).expect("commit");
    h.next_index += 1;
}

#[test]
fn put_semantics() {
    struct Case {
        name: &'static str,
        req: PutRequest,
        /// Ok((header revision, prev_kv value)) or the error.
        want: Result<(i64, Option<&'static str>), EtcdError>,
        /// (value, lease, version) of "k" afterwards; None = absent.
        after: Option<(&'static str, i64, i64)>,
    }
    // Before each case: "k" = "old" with lease 9 (version 1, revision 2),
    // "absent" never written.
    let cases = vec![
        Case {
            name: "plain put",
            req: put_req("k", "new"),
            want: Ok((3, None)),
            after: Some(("new", 0, 2)),
        },
        Case {
            name: "prev_kv",
            req: PutRequest {
                prev_kv: true,
                ..put_req("k", "new")
            },
            want: Ok((3, Some("old"))),
            after: Some(("new", 0, 2)),
        },
        Case {
            name: "prev_kv on a new key",
            req: PutRequest {
                prev_kv: true,
                ..put_req("absent", "x")
            },
            want: Ok((3, None)),
            after: Some(("old", 9, 1)),
        },
        Case {
            name: "ignore_value keeps the value",
            req: PutRequest {
                ignore_value: true,
                ..put_req("k", "")
            },
            want: Ok((3, None)),
            after: Some(("old", 0, 2)),
        },
        Case {
            name: "ignore_lease keeps the lease",
            req: PutRequest {
                ignore_lease: true,
                ..put_req("k", "new")
            },
            want: Ok((3, None)),
            after: Some(("new", 9, 2)),
        },
        Case {
            name: "both ignore flags with prev_kv",
            req: PutRequest {
                ignore_value: true,
                ignore_lease: true,
                prev_kv: true,
                ..put_req("k", "")
            },
            want: Ok((3, Some("old"))),
            after: Some(("old", 9, 2)),
        },
        Case {
            name: "ignore_value on a missing key",
            req: PutRequest {
                ignore_value: true,
                ..put_req("absent", "")
            },
            want: Err(EtcdError::KeyNotFound),
            after: Some(("old", 9, 1)),
        },
        Case {
            name: "ignore_lease on a missing key",
            req: PutRequest {
                ignore_lease: true,
                ..put_req("absent", "v")
            },
            want: Err(EtcdError::KeyNotFound),
            after: Some(("old", 9, 1)),
        },
        Case {
            name: "unknown lease",
            req: PutRequest {
                lease: 77,
                ..put_req("k", "new")
            },
            want: Err(EtcdError::LeaseNotFound),
            after: Some(("old", 9, 1)),
        },
    ];
    for c in cases {
        let mut h = Harness::new();
        put_with_lease(&mut h, "k", "old", 9);
        let got = h.one(Request::Put(c.req)).map(|r| match r {
            ApplyResponse::Put(p) => (
                rev_of(&p.header),
                p.prev_kv
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            ),
            other => panic!("{}: not a put response: {other:?}", c.name),
        });
        let want = c.want.map(|(r, p)| (r, p.map(String::from)));
        assert_eq!(got, want, "{}", c.name);
        let after = h.get("k").map(|kv| {
            (
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.lease,
                kv.version,
            )
        });
        assert_eq!(
            after,
            c.after.map(|(v, l, ver)| (v.to_string(), l, ver)),
            "{} after",
            c.name
        );
        if got.is_err() {
            assert_eq!(
                h.rev(),
                2,
                "{}: a failed put must not bump the revision",
                c.name
            );
        }
    }
}

#[test]
fn delete_range_forms() {
    struct Case {
        name: &'static str,
        key: &'static str,
        end: &'static str,
        deleted: i64,
        left: Vec<&'static str>,
    }
    let keys = ["a", "ab", "abc", "b", "c"];
    let cases = vec![
        Case {
            name: "single key",
            key: "ab",
            end: "",
            deleted: 1,
            left: vec!["a", "abc", "b", "c"],
        },
        Case {
            name: "missing key",
            key: "zz",
            end: "",
            deleted: 0,
            left: keys.to_vec(),
        },
        Case {
            name: "prefix a",
            key: "a",
            end: "b",
            deleted: 3,
            left: vec!["b", "c"],
        },
        Case {
            name: "prefix ab",
            key: "ab",
            end: "ac",
            deleted: 2,
            left: vec!["a", "b", "c"],
        },
        Case {
            name: "from key",
            key: "b",
            end: "\0",
            deleted: 2,
            left: vec!["a", "ab", "abc"],
        },
        Case {
            name: "all keys",
            key: "\0",
            end: "\0",
            deleted: 5,
            left: vec![],
        },
        Case {
            name: "inverted range",
            key: "c",
            end: "a",
            deleted: 0,
            left: keys.to_vec(),
        },
    ];
    for c in cases {
        let mut h = Harness::new();
        for k in keys {
            h.put(k, &format!("v-{k}"));
        }
        let before = h.rev(); // 6
        let resp = match h.one(Request::DeleteRange(DeleteRangeRequest {
            prev_kv: true,
            ..del_req(c.key, c.end)
        })) {
            Ok(ApplyResponse::DeleteRange(d)) => d,
            other => panic!("{}: {other:?}", c.name),
        };
        assert_eq!(resp.deleted, c.deleted, "{}", c.name);
        assert_eq!(resp.prev_kvs.len() as i64, c.deleted, "{} prev_kvs", c.name);
        assert!(
            resp.prev_kvs
                .iter()
                .all(|kv| kv.value == [&b"v-"[..], &kv.key].concat()),
            "{}: prev_kvs carry the deleted values",
            c.name
        );
        // Deleting something makes a revision; deleting nothing reports the current one.
        let want_rev = if c.deleted > 0 { before + 1 } else { before };
        assert_eq!(rev_of(&resp.header), want_rev, "{} header", c.name);
        assert_eq!(h.rev(), want_rev, "{} store revision", c.name);
        let left: Vec<String> = h
            .store
            .range(&range_req("\0", "\0"))
            .expect("range")
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(left, c.left, "{} left", c.name);
    }
}

#[test]
fn every_compare_target_and_result() {
    // "k": created at 2, modified at 3, version 2, value "m", lease 5.
    let mut h = Harness::new();
    h.put("k", "a");
    put_with_lease(&mut h, "k", "m", 5);
    let k = h.get("k").expect("k");
    assert_eq!(
        (k.create_revision, k.mod_revision, k.version, k.lease),
        (2, 3, 2, 5)
    );

    // For each target: an operand below, equal to and above the key's value.
    let operands: Vec<(&str, [TargetUnion; 3])> = vec![
        (
            "version",
            [
                TargetUnion::Version(1),
                TargetUnion::Version(2),
                TargetUnion::Version(3),
            ],
        ),
        (
            "create",
            [
                TargetUnion::CreateRevision(1),
                TargetUnion::CreateRevision(2),
                TargetUnion::CreateRevision(3),
            ],
        ),
        (
            "mod",
            [
                TargetUnion::ModRevision(2),
                TargetUnion::ModRevision(3),
                TargetUnion::ModRevision(4),
            ],
        ),
        (
            "value",
            [
                TargetUnion::Value(b"l".to_vec()),
                TargetUnion::Value(b"m".to_vec()),
                TargetUnion::Value(b"mm".to_vec()),
            ],
        ),
        (
            "lease",
            [
                TargetUnion::Lease(4),
                TargetUnion::Lease(5),
                TargetUnion::Lease(6),
            ],
        ),
    ];
    // The key's value compared with an operand below / equal / above.
    let truth = [
        (CompareResult::Equal, [false, true, false]),
        (CompareResult::NotEqual, [true, false, true]),
        (CompareResult::Greater, [true, false, false]),
        (CompareResult::Less, [false, false, true]),
    ];
    let start = h.rev();
    for (name, ops) in &operands {
        for (result, want) in &truth {
            for (operand, want) in ops.iter().zip(want) {
                let t = TxnRequest {
                    compare: vec![cmp("k", "", *result, operand.clone())],
                    success: vec![op_get("k")],
                    failure: vec![],
                };
                let resp = txn_resp(h.one(Request::Txn(t)));
                assert_eq!(resp.succeeded, *want, "{name} {result:?} {operand:?}");
                assert_eq!(resp.responses.len(), usize::from(*want));
            }
        }
    }
    // Read-only txns never change the revision.
    assert_eq!(h.rev(), start);
}

#[test]
fn compares_on_missing_keys_and_ranges() {
    // r1: version 1, r2: version 2, value "x" for both; "gone" was deleted.
    let mut h = Harness::new();
    h.put("r1", "x");
    h.put("r2", "x");
    h.put("r2", "x");
    h.put("gone", "x");
    let _ = h.one(Request::DeleteRange(del_req("gone", "")));

    struct Case {
        name: &'static str,
        compare: Compare,
        want: bool,
    }
    use CompareResult::*;
    let cases = vec![
        Case {
            name: "missing key has create revision 0 (lock recipe)",
            compare: cmp("nope", "", Equal, TargetUnion::CreateRevision(0)),
            want: true,
        },
        Case {
            name: "deleted key has version 0",
            compare: cmp("gone", "", Equal, TargetUnion::Version(0)),
            want: true,
        },
        Case {
            name: "missing key has mod revision 0",
            compare: cmp("nope", "", Less, TargetUnion::ModRevision(1)),
            want: true,
        },
        Case {
            name: "missing key has lease 0",
            compare: cmp("nope", "", Equal, TargetUnion::Lease(0)),
            want: true,
        },
        Case {
            name: "value compare on a missing key always fails",
            compare: cmp("nope", "", NotEqual, TargetUnion::Value(b"x".to_vec())),
            want: false,
        },
        Case {
            name: "value compare with empty value on a missing key fails too",
            compare: cmp("nope", "", Equal, TargetUnion::Value(vec![])),
            want: false,
        },
        Case {
            name: "range: holds for every key",
            compare: cmp("r1", "r3", Greater, TargetUnion::Version(0)),
            want: true,
        },
        Case {
            name: "range: fails if one key fails",
            compare: cmp("r1", "r3", Equal, TargetUnion::Version(1)),
            want: false,
        },
        Case {
            name: "range: value on every key",
            compare: cmp("r", "s", Equal, TargetUnion::Value(b"x".to_vec())),
            want: true,
        },
        Case {
            name: "from-key range",
            compare: cmp("r2", "\0", Equal, TargetUnion::Version(2)),
            want: true,
        },
        Case {
            name: "empty range compares a zero key-value",
            compare: cmp("s", "t", Equal, TargetUnion::Version(0)),
            want: true,
        },
        Case {
            name: "empty range with a value compare fails",
            compare: cmp("s", "t", Equal, TargetUnion::Value(vec![])),
            want: false,
        },
        Case {
            name: "mismatched target union compares against zero",
            compare: Compare {
                target: CompareTarget::Mod as i32,
                ..cmp("r1", "", Greater, TargetUnion::Version(100))
            },
            want: true,
        },
    ];
    for c in cases {
        let t = TxnRequest {
            compare: vec![c.compare],
            ..Default::default()
        };
        assert_eq!(
            txn_resp(h.one(Request::Txn(t))).succeeded,
            c.want,
            "{}",
            c.name
        );
    }
    // All compares must hold.
    let t = TxnRequest {
        compare: vec![
            cmp("r1", "", Equal, TargetUnion::Version(1)),
            cmp("r2", "", Equal, TargetUnion::Version(1)),
        ],
        ..Default::default()
    };
    assert!(!txn_resp(h.one(Request::Txn(t))).succeeded);
}

#[test]
fn txn_branches_and_headers() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3

    // Success branch: range before any write sees the begin revision; after
    // a write, ops report the txn's new revision.
    let t = TxnRequest {
        compare: vec![cmp(
            "a",
            "",
            CompareResult::Equal,
            TargetUnion::Value(b"1".to_vec()),
        )],
        success: vec![
            op_get("a"),
            op_del("nothing", ""),
            op_put("a", "2"),
            op_get("a"),
            op_del("nothing", ""),
            op_del("b", ""),
            op_txn(TxnRequest {
                compare: vec![],
                success: vec![op_get("b"), op_put("c", "1")],
                failure: vec![],
            }),
        ],
        failure: vec![op_put("f", "1")],
    };
    let r = txn_resp(h.one(Request::Txn(t)));
    assert!(r.succeeded);
    assert_eq!(rev_of(&r.header), 4);
    assert_eq!(h.rev(), 4);
    let ops: Vec<_> = r
        .responses
        .iter()
        .map(|o| o.response.clone().expect("response"))
        .collect();
    let OpResponse::ResponseRange(ref r0) = ops[0] else {
        panic!("range")
    };
    assert_eq!(
        (rev_of(&r0.header), r0.kvs[0].value.as_slice()),
        (3, &b"1"[..])
    );
    let OpResponse::ResponseDeleteRange(ref d1) = ops[1] else {
        panic!("delete")
    };
    assert_eq!((rev_of(&d1.header), d1.deleted), (3, 0));
    let OpResponse::ResponsePut(ref p2) = ops[2] else {
        panic!("put")
    };
    assert_eq!(rev_of(&p2.header), 4);
    let OpResponse::ResponseRange(ref r3) = ops[3] else {
        panic!("range")
    };
    assert_eq!(
        (rev_of(&r3.header), r3.kvs[0].value.as_slice()),
        (4, &b"2"[..])
    );
    let OpResponse::ResponseDeleteRange(ref d4) = ops[4] else {
        panic!("delete")
    };
    assert_eq!((rev_of(&d4.header), d4.deleted), (4, 0));
    let OpResponse::ResponseDeleteRange(ref d5) = ops[5] else {
        panic!("delete")
    };
    assert_eq!((rev_of(&d5.header), d5.deleted), (4, 1));
    let OpResponse::ResponseTxn(ref n6) = ops[6] else {
        panic!("txn")
    };
    // etcd leaves a nested txn's own header at revision 0.
    assert_eq!(rev_of(&n6.header), 0);
    assert!(n6.succeeded);
    let Some(OpResponse::ResponseRange(ref nr)) = n6.responses[0].response else {
        panic!("range")
    };
    assert!(
        nr.kvs.is_empty(),
        "the nested range sees b deleted earlier in the txn"
    );
    let Some(OpResponse::ResponsePut(ref np)) = n6.responses[1].response else {
        panic!("put")
    };
    assert_eq!(rev_of(&np.header), 4);
    assert_eq!(
        (h.value("a"), h.value("b"), h.value("c")),
        (Some("2".into()), None, Some("1".into()))
    );

    // Failure branch.
    let t = TxnRequest {
        compare: vec![cmp(
            "a",
            "",
            CompareResult::Equal,
            TargetUnion::Value(b"1".to_vec()),
        )],
        success: vec![op_put("s", "1")],
        failure: vec![op_put("f", "1"), op_get("f")],
    };
    let r = txn_resp(h.one(Request::Txn(t)));
    assert!(!r.succeeded);
    assert_eq!(r.responses.len(), 2);
    assert_eq!(rev_of(&r.header), 5);
    assert_eq!((h.value("s"), h.value("f")), (None, Some("1".into())));

    // A read-only txn reports the current revision.
    let t = TxnRequest {
        success: vec![op_get("a")],
        ..Default::default()
    };
    assert_eq!(rev_of(&txn_resp(h.one(Request::Txn(t))).header), 5);

    // All writes of one txn share one revision.
    let a = h.get("a").expect("a");
    let c = h.get("c").expect("c");
    assert_eq!((a.mod_revision, c.mod_revision), (4, 4));
}

#[test]
fn nested_compares_see_the_state_before_the_txn() {
    let mut h = Harness::new();
    h.put("seed", "1");
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("x", "1"),
            op_txn(TxnRequest {
                // "x" did not exist when the txn started, so this holds even
                // though the outer txn has just put it.
                compare: vec![cmp("x", "", CompareResult::Equal, TargetUnion::Version(0))],
                success: vec![op_put("y", "then")],
                failure: vec![op_put("y", "else")],
            }),
        ],
        failure: vec![],
    };
    let r = txn_resp(h.one(Request::Txn(t)));
    let Some(OpResponse::ResponseTxn(ref n)) = r.responses[1].response else {
        panic!("txn")
    };
    assert!(n.succeeded);
    assert_eq!(h.value("y"), Some("then".into()));
}

#[test]
fn failing_txn_changes_nothing() {
    struct Case {
        name: &'static str,
        txn: TxnRequest,
        want: EtcdError,
    }
    let ignore_value = |k: &str| RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.into(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let range_at = |rev: i64| RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: b"a".to_vec(),
            revision: rev,
            ..Default::default()
        })),
    };
    // Setup: a@2, a@3, compacted at 3, so current revision 3.
    let cases = vec![
        Case {
            name: "ignore_value on a missing key after a put",
            txn: TxnRequest {
                success: vec![
                    op_put("a", "changed"),
                    op_del("b", ""),
                    ignore_value("missing"),
                ],
                ..Default::default()
            },
            want: EtcdError::KeyNotFound,
        },
        Case {
            name: "unknown lease in a nested txn",
            txn: TxnRequest {
                success: vec![
                    op_put("a", "changed"),
                    op_txn(TxnRequest {
                        success: vec![RequestOp {
                            request: Some(Op::RequestPut(PutRequest {
                                lease: 3,
                                ..put_req("n", "v")
                            })),
                        }],
                        ..Default::default()
                    }),
                ],
                ..Default::default()
            },
            want: EtcdError::LeaseNotFound,
        },
        Case {
            name: "range at a future revision",
            txn: TxnRequest {
                success: vec![op_put("a", "changed"), range_at(4)],
                ..Default::default()
            },
            want: EtcdError::FutureRev,
        },
        Case {
            name: "range at a compacted revision",
            txn: TxnRequest {
                success: vec![op_put("a", "changed"), range_at(2)],
                ..Default::default()
            },
            want: EtcdError::Compacted,
        },
        Case {
            // Below the compaction even though negative (etcd's check).
            name: "range at a negative revision after compaction",
            txn: TxnRequest {
                success: vec![range_at(-1)],
                ..Default::default()
            },
            want: EtcdError::Compacted,
        },
        Case {
            name: "failure branch is checked when taken",
            txn: TxnRequest {
                compare: vec![cmp("a", "", CompareResult::Equal, TargetUnion::Version(99))],
                success: vec![],
                failure: vec![op_put("a", "changed"), ignore_value("missing")],
            },
            want: EtcdError::KeyNotFound,
        },
        Case {
            // Passes the up-front check ("b" exists when the txn starts) and
            // etcd's edge validation (a from-key delete is never a duplicate),
            // but the put finds "b" gone at execution: the txn is rolled back.
            name: "put with ignore_value after a from-key delete of its key",
            txn: TxnRequest {
                success: vec![op_put("a", "changed"), op_del("b", "\0"), ignore_value("b")],
                ..Default::default()
            },
            want: EtcdError::KeyNotFound,
        },
    ];
    for c in cases {
        let mut h = Harness::new();
        h.put("a", "1"); // 2
        h.put("b", "1"); // 3
        assert!(h
            .one(Request::Compaction(CompactionRequest {
                revision: 3,
                physical: true
            }))
            .is_ok());
        let out = h.batch(vec![Request::Txn(c.txn)]);
        assert!(out.events.is_empty(), "{}: no events", c.name);
        assert_eq!(
            out.results[0].clone().expect("result"),
            Err(c.want),
            "{}",
            c.name
        );
        assert_eq!(h.rev(), 3, "{}: revision unchanged", c.name);
        assert_eq!(
            (h.value("a"), h.value("b")),
            (Some("1".into()), Some("1".into())),
            "{}",
            c.name
        );
        // The batch still advanced the applied index.
        assert_eq!(h.store.applied_index(), h.next_index - 1);
        // And the next write gets the next revision.
        assert_eq!(h.put("z", "1"), 4, "{}", c.name);
    }
}

#[test]
fn requests_in_one_batch_see_each_other() {
    let mut h = Harness::new();
    let out = h.batch(vec![
        Request::Put(put_req("a", "1")),
        Request::Txn(TxnRequest {
            compare: vec![cmp(
                "a",
                "",
                CompareResult::Equal,
                TargetUnion::Value(b"1".to_vec()),
            )],
            success: vec![op_put("b", "from-txn"), op_get("a")],
            failure: vec![],
        }),
        Request::Put(PutRequest {
            prev_kv: true,
            ..put_req("b", "2")
        }),
        Request::DeleteRange(DeleteRangeRequest {
            prev_kv: true,
            ..del_req("a", "")
        }),
        Request::Put(PutRequest {
            ignore_value: true,
            ..put_req("a", "")
        }),
    ]);
    assert_eq!(out.results.len(), 5);
    let r = txn_resp(out.results[1].clone().expect("result"));
    assert!(r.succeeded);
    assert_eq!(rev_of(&r.header), 3);
    let Ok(ApplyResponse::Put(ref p)) = out.results[2].clone().expect("result") else {
        panic!("put")
    };
    assert_eq!(
        p.prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"from-txn"[..])
    );
    assert_eq!(rev_of(&p.header), 4);
    let Ok(ApplyResponse::DeleteRange(ref d)) = out.results[3].clone().expect("result") else {
        panic!("delete")
    };
    assert_eq!((d.deleted, rev_of(&d.header)), (1, 5));
    // The deleted key is gone for the rest of the batch.
    assert_eq!(
        out.results[4].clone().expect("result"),
        Err(EtcdError::KeyNotFound)
    );

    // Events, in revision order. Applying a put does not read the previous
    // record (a delete does); a watcher asking for prev_kv gets it filled.
    let prevs = |events: &[Event]| -> Vec<Option<String>> {
        events
            .iter()
            .map(|e| {
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            })
            .collect()
    };
    assert_eq!(
        prevs(&out.events),
        [None, None, None, Some("1".to_string())]
    );
    let mut events = out.events.clone();
    h.store.fill_prev_kvs(events.iter_mut()).expect("prev_kv");
    let evs: Vec<(i32, String, i64, Option<String>)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("kv");
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
            )
        })
        .collect();
    let put = EventType::Put as i32;
    let delete = EventType::Delete as i32;
    assert_eq!(
        evs,
        vec![
            (put, "a".into(), 2, None),
            (put, "b".into(), 3, None),
            (put, "b".into(), 4, Some("from-txn".into())),
            (delete, "a".into(), 5, Some("1".into())),
        ]
    );
    assert_eq!(h.rev(), 5);
    assert_eq!(h.store.applied_index(), 5);
}

#[test]
fn exactly_once() {
    let mut h = Harness::new();
    let entries = |from: u64, to: u64| -> Vec<(u64, Option<Request>)> {
        (from..=to)
            .map(|i| {
                let req = (i != 3).then(|| Request::Put(put_req(&format!("k{i}"), "v")));
                (i, req)
            })
            .collect()
    };
    let out = apply_batch(&h.store, entries(1, 4), MIN_TTL).expect("apply");
    // Index 3 carries no request: None, but the applied index still passes it.
    let kinds: Vec<bool> = out.results.iter().map(Option::is_some).collect();
    assert_eq!(kinds, vec![true, true, false, true]);
    assert_eq!((h.store.applied_index(), h.rev()), (4, 4));
    let hash = h.store.hash_kv(0).expect("hash");

    // The same batch again (e.g. replayed after a restart): all skipped.
    let out = apply_batch(&h.store, entries(1, 4), MIN_TTL).expect("apply");
    assert!(out.results.iter().all(Option::is_none));
    assert!(out.events.is_empty());
    assert_eq!((h.store.applied_index(), h.rev()), (4, 4));
    assert_eq!(h.store.hash_kv(0).expect("hash"), hash);

    // A batch overlapping what was applied: only the new entries apply.
    let out = apply_batch(&h.store, entries(3, 6), MIN_TTL).expect("apply");
    let kinds: Vec<bool> = out.results.iter().map(Option::is_some).collect();
    assert_eq!(kinds, vec![false, false, true, true]);
    assert_eq!(out.events.len(), 2);
    assert_eq!((h.store.applied_index(), h.rev()), (6, 6));
    h.next_index = 7;
    assert_eq!(h.put("after", "x"), 7);
}

#[test]
fn restart_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Store::open(Arc::new(open_sled_for_test(dir.path()))).expect("open");
    let batch: Vec<(u64, Option<Request>)> = (1..=3)
        .map(|i| (i, Some(Request::Put(put_req("k", &i.to_string())))))
        .collect();
    {
        let s = open();
        apply_batch(&s, batch.clone(), MIN_TTL).expect("apply");
        s.backend().flush().expect("flush");
    }
    let s = open();
    assert_eq!((s.applied_index(), s.current_revision()), (3, 4));
    // Raft replays the same entries after the restart: nothing happens twice.
    let out = apply_batch(&s, batch, MIN_TTL).expect("apply");
    assert!(out.results.iter().all(Option::is_none));
    let mut h = Harness::on(s);
    assert_eq!(h.put("k", "4"), 5);
    let k = h.get("k").expect("k");
    assert_eq!((k.version, k.create_revision, k.mod_revision), (4, 2, 5));
}

#[test]
fn compaction_requests() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    struct Case {
        rev: i64,
        want: Result<i64, EtcdError>,
    }
    for c in [
        Case {
            rev: 4,
            want: Err(EtcdError::FutureRev),
        },
        Case {
            rev: 2,
            want: Ok(3),
        },
        Case {
            rev: 2,
            want: Err(EtcdError::Compacted),
        },
        Case {
            rev: 3,
            want: Ok(3),
        },
    ] {
        let got = h
            .one(Request::Compaction(CompactionRequest {
                revision: c.rev,
                physical: false,
            }))
            .map(|r| match r {
                ApplyResponse::Compaction(c) => rev_of(&c.header),
                other => panic!("{other:?}"),
            });
        assert_eq!(got, c.want, "compact {}", c.rev);
    }
    assert_eq!(h.store.compact_revision(), 3);

    // A compaction earlier in a batch applies to the requests after it.
    let out = h.batch(vec![
        Request::Put(put_req("a", "3")), // 4
        Request::Compaction(CompactionRequest {
            revision: 4,
            physical: true,
        }),
        Request::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: b"a".to_vec(),
                    revision: 3,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
    ]);
    assert_eq!(
        out.results[2].clone().expect("result"),
        Err(EtcdError::Compacted)
    );
    assert_eq!(h.store.compact_revision(), 4);
    assert_eq!(h.value("a"), Some("3".into()));
    assert_eq!(NEVER_COMPACTED, -1);
}

#[test]
fn compaction_is_recorded_with_its_entry_and_finished_by_the_compactor() {
    use crate::mvcc::store::{META_COMPACT_REV, META_CONSISTENT_INDEX, META_FINISHED_COMPACT_REV};
    let meta = |s: &Store, key: &[u8]| {
        s.backend()
            .get(key)
            .expect("get")
            .map(|v| i64::from_be_bytes(v.as_slice().try_into().expect("8 bytes")))
    };
    let records = |s: &Store| s.backend().scan_prefix(b"k").count();
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Store::open(Arc::new(open_sled_for_test(dir.path()))).expect("open");
    let mut h = Harness::on(open());
    for i in 0..1_200 {
        h.put(&format!("k{i:04}"), "1");
        h.put(&format!("k{i:04}"), "2");
    }
    h.put("gone", "1");
    h.one(Request::DeleteRange(DeleteRangeRequest {
        key: b"gone".to_vec(),
        ..Default::default()
    }))
    .expect("delete");
    let rev = h.store.current_revision();
    h.one(Request::Compaction(CompactionRequest {
        revision: rev,
        physical: true,
    }))
    .expect("compact");
    // Recorded with the entry that applied it; reads below it refused at once.
    let applied = h.store.applied_index() as i64;
    assert_eq!(meta(&h.store, META_COMPACT_REV), Some(rev));
    assert_eq!(meta(&h.store, META_CONSISTENT_INDEX), Some(applied));
    assert!(matches!(
        h.store.range(&RangeRequest {
            key: b"k0000".to_vec(),
            revision: rev - 1,
            ..Default::default()
        }),
        Err(ReadError::Client(EtcdError::Compacted))
    ));
    h.store.wait_compacted(rev);
    assert_eq!(h.store.compaction_finished(), rev);
    assert_eq!(meta(&h.store, META_FINISHED_COMPACT_REV), Some(rev));
    assert_eq!(records(&h.store), 1_200, "one record per live key");
    assert_eq!(h.value("k0007"), Some("2".into()));
    let hash = h.store.hash_kv(0).expect("hash");
    drop(h);
    let s = open();
    assert_eq!((s.compact_revision(), s.compaction_finished()), (rev, rev));
    assert_eq!(records(&s), 1_200);
    assert_eq!(s.hash_kv(0).expect("hash"), hash);
}

#[test]
fn alarms_and_nospace() {
    let mut h = Harness::new();
    h.put("a", "1");
    let alarm = |action: AlarmAction, member: u64, t: AlarmType| {
        Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: member,
            alarm: t as i32,
        })
    };
    let alarms_of = |r: Result<ApplyResponse, EtcdError>| match r {
        Ok(ApplyResponse::Alarm(a)) => a
            .alarms
            .iter()
            .map(|m| (m.member_id, m.alarm))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let nospace = AlarmType::Nospace as i32;

    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Get, 0, AlarmType::None))),
        vec![]
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Activate, 1, AlarmType::Nospace))),
        vec![(1, nospace)]
    );
    // Activating again returns the existing alarm.
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Activate, 1, AlarmType::Nospace))),
        vec![(1, nospace)]
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Activate, 2, AlarmType::Nospace))),
        vec![(2, nospace)]
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Get, 0, AlarmType::None))),
        vec![(1, nospace), (2, nospace)]
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Get, 0, AlarmType::Corrupt))),
        vec![]
    );
    assert_eq!(h.store.alarms().len(), 2);

    // Capped: puts and txns with puts fail, reads and deletes work.
    let rev = h.rev();
    struct Case {
        name: &'static str,
        req: Request,
        nospace: bool,
    }
    let cases = vec![
        Case {
            name: "put",
            req: Request::Put(put_req("b", "1")),
            nospace: true,
        },
        Case {
            name: "txn with a put in the branch not taken",
            req: Request::Txn(TxnRequest {
                success: vec![op_get("a")],
                failure: vec![op_put("b", "1")],
                ..Default::default()
            }),
            nospace: true,
        },
        Case {
            name: "txn with a put only in a nested txn",
            req: Request::Txn(TxnRequest {
                success: vec![op_txn(TxnRequest {
                    success: vec![op_put("b", "1")],
                    ..Default::default()
                })],
                ..Default::default()
            }),
            nospace: true,
        },
        Case {
            name: "read-only txn",
            req: Request::Txn(TxnRequest {
                success: vec![op_get("a")],
                ..Default::default()
            }),
            nospace: false,
        },
        Case {
            name: "txn that only deletes",
            req: Request::Txn(TxnRequest {
                success: vec![op_del("zz", "")],
                ..Default::default()
            }),
            nospace: false,
        },
        Case {
            name: "delete",
            req: Request::DeleteRange(del_req("zz", "")),
            nospace: false,
        },
        Case {
            name: "compaction",
            req: Request::Compaction(CompactionRequest {
                revision: 1,
                physical: false,
            }),
            nospace: false,
        },
    ];
    for c in cases {
        let got = h.one(c.req);
        assert_eq!(
            got == Err(EtcdError::NoSpace),
            c.nospace,
            "{}: {got:?}",
            c.name
        );
    }
    assert_eq!(h.rev(), rev);
    assert_eq!(h.value("b"), None);

    // Deactivation returns what it removed; one member's alarm still caps.
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Deactivate, 1, AlarmType::Nospace))),
        vec![(1, nospace)]
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Deactivate, 1, AlarmType::Nospace))),
        vec![]
    );
    assert_eq!(
        h.one(Request::Put(put_req("b", "1"))),
        Err(EtcdError::NoSpace)
    );
    assert_eq!(
        alarms_of(h.one(alarm(AlarmAction::Deactivate, 2, AlarmType::Nospace))),
        vec![(2, nospace)]
    );
    assert_eq!(h.put("b", "1"), rev + 1);
    assert!(h.store.alarms().is_empty());
}

#[test]
fn corrupt_alarm_stops_kv_requests() {
    let mut h = Harness::new();
    h.put("a", "1");
    let _ = h.one(Request::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 3,
        alarm: AlarmType::Corrupt as i32,
    }));
    for req in [
        Request::Put(put_req("a", "2")),
        Request::DeleteRange(del_req("a", "")),
        Request::Txn(TxnRequest::default()),
        Request::Compaction(CompactionRequest {
            revision: 2,
            physical: false,
        }),
    ] {
        assert_eq!(h.one(req), Err(EtcdError::Corrupt));
    }
    assert_eq!(h.value("a"), Some("1".into()));
}

/// The quota is the edge's business (crate::quota): apply never looks at
/// this member's size, which differs from member to member, only at the
/// replicated NOSPACE alarm, so every member applies or refuses alike.
#[test]
fn apply_refuses_by_the_replicated_alarm_not_by_the_local_size() {
    let mut h = Harness::new();
    let big = "x".repeat(1 << 20);
    h.put("a", &big);
    h.put("b", &big);
    assert!(h.store.backend().size_on_disk().expect("size") > 2 << 20);
    let _ = h.one(Request::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 9,
        alarm: AlarmType::Nospace as i32,
    }));
    assert_eq!(
        h.one(Request::Put(put_req("c", ""))),
        Err(EtcdError::NoSpace)
    );
    assert!(h.one(Request::DeleteRange(del_req("a", ""))).is_ok());
    let _ = h.one(Request::Alarm(AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: 9,
        alarm: AlarmType::Nospace as i32,
    }));
    h.put("c", "1");
    assert_eq!(h.value("c"), Some("1".into()));
}

#[test]
fn unknown_enum_values_do_not_panic() {
    let mut h = Harness::new();
    h.put("a", "1");
    let t = TxnRequest {
        compare: vec![Compare {
            result: 42,
            target: 42,
            key: b"a".to_vec(),
            target_union: None,
            range_end: vec![],
        }],
        success: vec![op_get("a"), RequestOp { request: None }],
        failure: vec![],
    };
    let r = txn_resp(h.one(Request::Txn(t)));
    assert!(r.succeeded);
    assert_eq!(r.responses.len(), 2);
    assert!(r.responses[1].response.is_none());
    let got = h.one(Request::Alarm(AlarmRequest {
        action: 42,
        member_id: 1,
        alarm: 1,
    }));
    assert!(matches!(got, Ok(ApplyResponse::Alarm(ref a)) if a.alarms.is_empty()));
}

#[test]
fn same_key_written_twice_in_one_txn() {
    // etcd's edge check lets a from-key delete and a put of a key inside it
    // share a txn; apply must then run them in order at sub revisions of one
    // revision: the put starts a new generation.
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    let r = txn_resp(h.one(Request::Txn(TxnRequest {
        success: vec![op_del("a", "\0"), op_put("a", "new")],
        ..Default::default()
    })));
    assert_eq!(rev_of(&r.header), 4);
    let a = h.get("a").expect("a");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (4, 4, 1));
    // Apply does not re-run edge validation: two puts of one key in a txn
    // both apply, the second seeing the first.
    let out = h.batch(vec![Request::Txn(TxnRequest {
        success: vec![op_put("a", "x"), op_put("a", "y")],
        ..Default::default()
    })]);
    let a = h.get("a").expect("a");
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"y"[..], 4, 5, 3)
    );
    // A watcher's prev_kv is the key at the revision before the event's, as
    // etcd's watch server reads it: for both puts, the key before the txn
    // (clients cannot send this txn; validation refuses a duplicate key).
    let mut events = out.events.clone();
    h.store.fill_prev_kvs(events.iter_mut()).expect("prev_kv");
    let prev: Vec<Option<i64>> = events
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|p| p.version))
        .collect();
    assert_eq!(prev, vec![Some(1), Some(1)]);
    let replayed = h.store.history(5, 5, true, |_| true).expect("history");
    assert_eq!(replayed, events);
    // History at 4 is the re-created key, before it the old generation.
    let at = |rev: i64| {
        h.store
            .range(&RangeRequest {
                key: b"a".to_vec(),
                revision: rev,
                ..Default::default()
            })
            .expect("range")
            .kvs
            .pop()
            .map(|kv| (kv.version, kv.create_revision))
    };
    assert_eq!(at(3), Some((2, 2)));
    assert_eq!(at(4), Some((1, 4)));
}

// ---------------------------------------------------------------- leases

fn grant(id: i64, ttl: i64) -> Request {
    Request::LeaseGrant(LeaseGrantRequest { id, ttl })
}

fn revoke(id: i64) -> Request {
    Request::LeaseRevoke(LeaseRevokeRequest { id })
}

fn put_lease(k: &str, v: &str, lease: i64) -> Request {
    Request::Put(PutRequest {
        lease,
        ..put_req(k, v)
    })
}

/// The keys attached to `id` in the committed lease table.
fn attached(h: &Harness, id: i64) -> Vec<String> {
    h.store
        .lease(id)
        .map(|e| {
            e.keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lease_grant_rules() {
    struct Case {
        name: &'static str,
        req: LeaseGrantRequest,
        /// Ok(granted TTL) or the error.
        want: Result<i64, EtcdError>,
    }
    let cases = [
        Case {
            name: "plain grant",
            req: LeaseGrantRequest { id: 5, ttl: 60 },
            want: Ok(60),
        },
        Case {
            name: "short TTL raised to the minimum",
            req: LeaseGrantRequest { id: 6, ttl: 1 },
            want: Ok(MIN_TTL),
        },
        Case {
            name: "zero TTL raised to the minimum",
            req: LeaseGrantRequest { id: 6, ttl: 0 },
            want: Ok(MIN_TTL),
        },
        Case {
            name: "largest TTL",
            req: LeaseGrantRequest {
                id: 7,
                ttl: MAX_LEASE_TTL,
            },
            want: Ok(MAX_LEASE_TTL),
        },
        Case {
            name: "too large TTL",
            req: LeaseGrantRequest {
                id: 7,
                ttl: MAX_LEASE_TTL + 1,
            },
            want: Err(EtcdError::LeaseTtlTooLarge),
        },
        Case {
            name: "id 0 (the proposer must choose one)",
            req: LeaseGrantRequest { id: 0, ttl: 10 },
            want: Err(EtcdError::LeaseNotFound),
        },
        Case {
            name: "existing id",
            req: LeaseGrantRequest { id: 1, ttl: 10 },
            want: Err(EtcdError::LeaseExist),
        },
    ];
    for c in cases {
        let mut h = Harness::new();
        h.one(grant(1, 100)).expect("grant 1");
        h.put("k", "v");
        let id = c.req.id;
        let out = h.batch(vec![Request::LeaseGrant(c.req)]);
        let got = out.results[0].clone().expect("a result").map(|r| match r {
            ApplyResponse::LeaseGrant(g) => {
                assert_eq!(g.id, id, "{}", c.name);
                // etcd: the header carries the current revision.
                assert_eq!(rev_of(&g.header), 2, "{}", c.name);
                g.ttl
            }
            other => panic!("{}: not a grant response: {other:?}", c.name),
        });
        assert_eq!(got, c.want, "{}", c.name);
        match c.want {
            Ok(ttl) => {
                assert_eq!(out.lease_changes, vec![LeaseChange::Granted { id, ttl }]);
                assert_eq!(h.store.lease(id).map(|e| e.ttl), Some(ttl), "{}", c.name);
            }
            Err(_) => assert!(out.lease_changes.is_empty(), "{}", c.name),
        }
        assert_eq!(h.rev(), 2, "{}: a grant writes no revision", c.name);
    }
}

#[test]
fn puts_and_deletes_attach_and_detach_keys() {
    let mut h = Harness::new();
    h.batch(vec![grant(1, 10), grant(2, 10)]);
    struct Step {
        name: &'static str,
        req: Request,
        on_1: &'static [&'static str],
        on_2: &'static [&'static str],
    }
    let steps = [
        Step {
            name: "put a with lease 1",
            req: put_lease("a", "1", 1),
            on_1: &["a"],
            on_2: &[],
        },
        Step {
            name: "put b with lease 1",
            req: put_lease("b", "1", 1),
            on_1: &["a", "b"],
            on_2: &[],
        },
        Step {
            name: "re-put a with lease 2 moves it",
            req: put_lease("a", "2", 2),
            on_1: &["b"],
            on_2: &["a"],
        },
        Step {
            name: "ignore_lease keeps it",
            req: Request::Put(PutRequest {
                ignore_lease: true,
                ..put_req("a", "3")
            }),
            on_1: &["b"],
            on_2: &["a"],
        },
        Step {
            name: "a put without lease detaches",
            req: Request::Put(put_req("b", "2")),
            on_1: &[],
            on_2: &["a"],
        },
        Step {
            name: "a txn put attaches",
            req: Request::Txn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        lease: 1,
                        ..put_req("c", "1")
                    })),
                }],
                ..Default::default()
            }),
            on_1: &["c"],
            on_2: &["a"],
        },
        Step {
            name: "a delete detaches",
            req: Request::DeleteRange(del_req("a", "")),
            on_1: &["c"],
            on_2: &[],
        },
        Step {
            name: "a put with an unknown lease fails and changes nothing",
            req: put_lease("c", "x", 3),
            on_1: &["c"],
            on_2: &[],
        },
    ];
    for s in steps {
        let _ = h.one(s.req);
        assert_eq!(attached(&h, 1), s.on_1, "{}: lease 1", s.name);
        assert_eq!(attached(&h, 2), s.on_2, "{}: lease 2", s.name);
    }
    assert_eq!(h.one(put_lease("c", "x", 3)), Err(EtcdError::LeaseNotFound));
    assert_eq!(h.get("a"), None);
    assert_eq!(h.get("c").map(|kv| kv.lease), Some(1));
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision() {
    let mut h = Harness::new();
    h.batch(vec![
        grant(9, 10),
        put_lease("b", "vb", 9),
        put_lease("a", "va", 9),
        put_lease("c", "vc", 9),
        Request::Put(put_req("d", "free")),
    ]);
    let before = h.rev();
    let out = h.batch(vec![revoke(9)]);
    match &out.results[0] {
        Some(Ok(ApplyResponse::LeaseRevoke(r))) => assert_eq!(rev_of(&r.header), before + 1),
        other => panic!("not a revoke response: {other:?}"),
    }
    assert_eq!(h.rev(), before + 1, "one revision for all keys");
    let got: Vec<(i32, String, i64, String)> = out
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("kv");
            let prev = e.prev_kv.as_ref().expect("prev_kv");
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                String::from_utf8_lossy(&prev.value).into_owned(),
            )
        })
        .collect();
    let del = EventType::Delete as i32;
    assert_eq!(
        got,
        vec![
            (del, "a".into(), before + 1, "va".into()),
            (del, "b".into(), before + 1, "vb".into()),
            (del, "c".into(), before + 1, "vc".into()),
        ],
        "DELETE events in key order with prev_kv"
    );
    assert_eq!(out.lease_changes, vec![LeaseChange::Revoked { id: 9 }]);
    assert_eq!((h.get("a"), h.get("b"), h.get("c")), (None, None, None));
    assert_eq!(h.value("d").as_deref(), Some("free"));
    assert!(h.store.lease(9).is_none());
    assert_eq!(h.one(revoke(9)), Err(EtcdError::LeaseNotFound));
    assert_eq!(h.one(put_lease("a", "x", 9)), Err(EtcdError::LeaseNotFound));

    // A lease without keys: revoked without a new revision.
    h.one(grant(10, 10)).expect("grant");
    let rev = h.rev();
    match h.one(revoke(10)) {
        Ok(ApplyResponse::LeaseRevoke(r)) => assert_eq!(rev_of(&r.header), rev),
        other => panic!("not a revoke response: {other:?}"),
    }
    assert_eq!(h.rev(), rev);
}

#[test]
fn lease_requests_in_one_batch_see_each_other() {
    let mut h = Harness::new();
    // Grant, attach, revoke and grant the same id again, all in one batch.
    let out = h.batch(vec![
        grant(4, 10),
        put_lease("k", "1", 4),
        put_lease("j", "1", 4),
        revoke(4),
        put_lease("k", "2", 4),
        grant(4, 20),
        put_lease("j", "2", 4),
    ]);
    let ok: Vec<bool> = out
        .results
        .iter()
        .map(|r| matches!(r, Some(Ok(_))))
        .collect();
    assert_eq!(ok, [true, true, true, true, false, true, true]);
    assert_eq!(h.get("k"), None);
    assert_eq!(attached(&h, 4), ["j"]);
    assert_eq!(h.store.lease(4).map(|e| e.ttl), Some(20));
    assert_eq!(
        out.lease_changes,
        vec![
            LeaseChange::Granted { id: 4, ttl: 10 },
            LeaseChange::Revoked { id: 4 },
            LeaseChange::Granted { id: 4, ttl: 20 },
        ]
    );
}

#[test]
fn leases_and_attachments_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Store::open(Arc::new(open_sled_for_test(dir.path()))).expect("open");
    {
        let mut h = Harness::on(open());
        h.batch(vec![
            grant(1, 30),
            grant(2, 40),
            put_lease("a", "1", 1),
            put_lease("b", "1", 1),
            put_lease("c", "1", 2),
            put_lease("b", "2", 2),
            Request::DeleteRange(del_req("c", "")),
        ]);
        h.batch(vec![grant(3, 50), revoke(3)]);
        h.store.backend().flush().expect("flush");
    }
    let mut h = Harness::on(open());
    let leases: Vec<(i64, i64)> = h.store.leases().iter().map(|l| (l.id, l.ttl)).collect();
    assert_eq!(leases, [(1, 30), (2, 40)]);
    assert_eq!(attached(&h, 1), ["a"]);
    assert_eq!(attached(&h, 2), ["b"]);
    // The rebuilt table drives a revoke just like the original.
    h.one(revoke(2)).expect("revoke");
    assert_eq!(h.get("b"), None);
    assert_eq!(h.value("a").as_deref(), Some("1"));
}

#[test]
fn lease_requests_under_alarms() {
    let mut h = Harness::new();
    h.one(grant(1, 10)).expect("grant");
    h.one(Request::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: MEMBER,
        alarm: AlarmType::Nospace as i32,
    }))
    .expect("alarm");
    // NOSPACE: no new leases (etcd's capped applier), revokes still work.
    assert_eq!(h.one(grant(2, 10)), Err(EtcdError::NoSpace));
    assert!(h.one(revoke(1)).is_ok());
    h.one(grant(3, 10)).err();
    h.one(Request::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: MEMBER,
        alarm: AlarmType::Corrupt as i32,
    }))
    .expect("alarm");
    assert_eq!(h.one(grant(4, 10)), Err(EtcdError::Corrupt));
    assert_eq!(h.one(revoke(4)), Err(EtcdError::Corrupt));
}
