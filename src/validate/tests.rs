//! Table-driven tests of the edge checks, including etcd's duplicate-key
//! rules for nested txns.

use super::*;
use crate::proto::etcdserverpb::Compare;

fn put(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}

fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure,
    }
}

fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestTxn(txn(success, failure))),
    }
}

fn cmp(k: &str) -> Compare {
    Compare {
        key: k.into(),
        ..Default::default()
    }
}

#[test]
fn range_put_delete_compaction() {
    struct Case {
        name: &'static str,
        got: Result<(), EtcdError>,
        want: Result<(), EtcdError>,
    }
    let cases = [
        Case {
            name: "range with key",
            got: validate_range(&RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            want: Ok(()),
        },
        Case {
            name: "range without key",
            got: validate_range(&RangeRequest::default()),
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "range with only range_end",
            got: validate_range(&RangeRequest {
                range_end: b"\0".to_vec(),
                ..Default::default()
            }),
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "put",
            got: validate_put(&PutRequest {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
                ..Default::default()
            }),
            want: Ok(()),
        },
        Case {
            name: "put without key",
            got: validate_put(&PutRequest {
                value: b"v".to_vec(),
                ..Default::default()
            }),
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "ignore_value with a value",
            got: validate_put(&PutRequest {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
            want: Err(EtcdError::ValueProvided),
        },
        Case {
            name: "ignore_value without a value",
            got: validate_put(&PutRequest {
                key: b"a".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
            want: Ok(()),
        },
        Case {
            name: "ignore_lease with a lease",
            got: validate_put(&PutRequest {
                key: b"a".to_vec(),
                lease: 5,
                ignore_lease: true,
                ..Default::default()
            }),
            want: Err(EtcdError::LeaseProvided),
        },
        Case {
            name: "empty key wins over the other checks",
            got: validate_put(&PutRequest {
                value: b"v".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "delete",
            got: validate_delete_range(&DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            want: Ok(()),
        },
        Case {
            name: "delete without key",
            got: validate_delete_range(&DeleteRangeRequest::default()),
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "compaction is checked at apply time",
            got: validate_compaction(&CompactionRequest {
                revision: -3,
                physical: true,
            }),
            want: Ok(()),
        },
    ];
    for c in cases {
        assert_eq!(c.got, c.want, "{}", c.name);
    }
}

#[test]
fn txn_checks() {
    struct Case {
        name: &'static str,
        txn: TxnRequest,
        max_ops: usize,
        want: Result<(), EtcdError>,
    }
    let many = |n: usize| (0..n).map(|i| put(&format!("k{i}"))).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "empty txn",
            txn: txn(vec![], vec![]),
            max_ops: 128,
            want: Ok(()),
        },
        Case {
            name: "ops at the limit",
            txn: txn(many(4), many(4)),
            max_ops: 4,
            want: Ok(()),
        },
        Case {
            name: "success over the limit",
            txn: txn(many(5), vec![]),
            max_ops: 4,
            want: Err(EtcdError::TooManyOps),
        },
        Case {
            name: "failure over the limit",
            txn: txn(vec![], many(5)),
            max_ops: 4,
            want: Err(EtcdError::TooManyOps),
        },
        Case {
            name: "compares over the limit",
            txn: TxnRequest {
                compare: (0..5).map(|i| cmp(&format!("c{i}"))).collect(),
                ..Default::default()
            },
            max_ops: 4,
            want: Err(EtcdError::TooManyOps),
        },
        Case {
            // The limit applies per branch, not to their sum.
            name: "branches counted separately",
            txn: txn(many(3), many(3)),
            max_ops: 3,
            want: Ok(()),
        },
        Case {
            // A nested txn gets what its parent left: 4 - 2 = 2.
            name: "nested txn within the parent's remainder",
            txn: txn(vec![put("a"), nested(many(2), vec![])], vec![]),
            max_ops: 4,
            want: Ok(()),
        },
        Case {
            name: "nested txn beyond the parent's remainder",
            txn: txn(vec![put("a"), nested(many(3), vec![])], vec![]),
            max_ops: 4,
            want: Err(EtcdError::TooManyOps),
        },
        Case {
            name: "compare without key",
            txn: TxnRequest {
                compare: vec![cmp("a"), cmp("")],
                ..Default::default()
            },
            max_ops: 128,
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "op without key",
            txn: txn(vec![get("")], vec![]),
            max_ops: 128,
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "op without key in failure branch",
            txn: txn(vec![], vec![del("", "")]),
            max_ops: 128,
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            name: "put with ignore_value and value inside a txn",
            txn: txn(
                vec![RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: b"a".to_vec(),
                        value: b"v".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                }],
                vec![],
            ),
            max_ops: 128,
            want: Err(EtcdError::ValueProvided),
        },
        Case {
            name: "op with no request",
            txn: txn(vec![RequestOp { request: None }], vec![]),
            max_ops: 128,
            want: Err(EtcdError::KeyNotFound),
        },
        Case {
            name: "empty key deep in a nested txn",
            txn: txn(
                vec![nested(vec![], vec![nested(vec![put("")], vec![])])],
                vec![],
            ),
            max_ops: 128,
            want: Err(EtcdError::EmptyKey),
        },
        Case {
            // The op count is checked before duplicates.
            name: "too many ops beats duplicate key",
            txn: txn(vec![put("a"), put("a"), put("b")], vec![]),
            max_ops: 2,
            want: Err(EtcdError::TooManyOps),
        },
    ];
    for c in cases {
        assert_eq!(validate_txn(&c.txn, c.max_ops), c.want, "{}", c.name);
    }
}

#[test]
fn txn_duplicate_keys() {
    struct Case {
        name: &'static str,
        success: Vec<RequestOp>,
        want: Result<(), EtcdError>,
    }
    let cases = vec![
        Case {
            name: "distinct puts",
            success: vec![put("a"), put("b")],
            want: Ok(()),
        },
        Case {
            name: "same key put twice",
            success: vec![put("a"), put("b"), put("a")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "reads do not conflict",
            success: vec![get("a"), put("a"), get("a")],
            want: Ok(()),
        },
        Case {
            name: "put and delete of the same key",
            success: vec![put("a"), del("a", "")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "delete before put of the same key",
            success: vec![del("a", ""), put("a")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "put inside a deleted range",
            success: vec![del("a", "c"), put("b")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "put at the exclusive end of a deleted range",
            success: vec![del("a", "c"), put("c")],
            want: Ok(()),
        },
        Case {
            name: "overlapping deletes are fine",
            success: vec![del("a", "c"), del("b", "d"), del("b", "")],
            want: Ok(()),
        },
        Case {
            // etcd turns range_end "\0" into the interval [key, "\0"), which
            // holds nothing, so a from-key delete never conflicts.
            name: "from-key delete does not conflict (etcd quirk)",
            success: vec![del("a", "\0"), put("b")],
            want: Ok(()),
        },
        Case {
            name: "put in nested txn and in parent",
            success: vec![nested(vec![put("a")], vec![]), put("a")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "put in both branches of one nested txn",
            success: vec![nested(vec![put("a")], vec![put("a")])],
            want: Ok(()),
        },
        Case {
            name: "same key in two nested txns",
            success: vec![
                nested(vec![put("a")], vec![]),
                nested(vec![], vec![put("a")]),
            ],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "nested put inside parent's deleted range",
            success: vec![del("a", "z"), nested(vec![put("m")], vec![])],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "parent put inside nested txn's deleted range",
            success: vec![nested(vec![], vec![del("a", "z")]), put("m")],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            name: "nested put after sibling nested delete",
            success: vec![
                nested(vec![del("a", "")], vec![]),
                nested(vec![put("a")], vec![]),
            ],
            want: Err(EtcdError::DuplicateKey),
        },
        Case {
            // etcd only checks a nested txn's puts against deletes collected
            // so far, so the later sibling's delete is not seen.
            name: "nested put before sibling nested delete (etcd order)",
            success: vec![
                nested(vec![put("a")], vec![]),
                nested(vec![del("a", "")], vec![]),
            ],
            want: Ok(()),
        },
        Case {
            name: "delete in one branch, put in the other",
            success: vec![nested(vec![del("a", "")], vec![put("a")])],
            want: Ok(()),
        },
        Case {
            name: "duplicate two levels down",
            success: vec![nested(
                vec![nested(vec![put("x"), put("x")], vec![])],
                vec![],
            )],
            want: Err(EtcdError::DuplicateKey),
        },
    ];
    for c in cases {
        // The rules apply to either branch of the top-level txn.
        let in_success = txn(c.success.clone(), vec![]);
        let in_failure = txn(vec![], c.success);
        assert_eq!(
            validate_txn(&in_success, 128),
            c.want,
            "{} (success)",
            c.name
        );
        assert_eq!(
            validate_txn(&in_failure, 128),
            c.want,
            "{} (failure)",
            c.name
        );
    }
    // The two top-level branches exclude each other.
    assert_eq!(
        validate_txn(&txn(vec![put("a")], vec![put("a"), del("b", "")]), 128),
        Ok(())
    );
}
