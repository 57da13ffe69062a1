//! Micro-benchmarks of the edge of the write path (docs/performance.md): a
//! request's protobuf decode followed by `validate::*`, as the gRPC service
//! does before proposing — a PutRequest and a TxnRequest shaped like
//! kube-apiserver's optimistic update (compare mod_revision, put or get).
//!
//! `cargo bench --bench decode_validate`; `cargo bench -- --test` runs each once.

use std::hint::black_box;

use cairn::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn::proto::etcdserverpb::request_op::Request as Op;
use cairn::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use cairn::validate::{validate_put, validate_txn, DEFAULT_MAX_TXN_OPS};
use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;

fn put_req(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'v'; 256],
        ..Default::default()
    }
}

/// kube-apiserver's update: if mod_revision(k) == r then put k else get k.
fn cas_txn() -> TxnRequest {
    let key = b"/registry/pods/default/web-0".to_vec();
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::ModRevision(12345)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(put_req("/registry/pods/default/web-0"))),
        }],
        failure: vec![RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// A txn of 64 puts to distinct keys: the duplicate-key check's worst case.
fn wide_txn() -> TxnRequest {
    TxnRequest {
        success: (0..64)
            .map(|i| RequestOp {
                request: Some(Op::RequestPut(put_req(&format!("bench/{i:04}")))),
            })
            .collect(),
        ..Default::default()
    }
}

fn decode_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_validate");
    let put = put_req("bench/0000000001").encode_to_vec();
    g.bench_function("put", |b| {
        b.iter(|| {
            let r = PutRequest::decode(black_box(put.as_slice())).expect("decode");
            validate_put(&r).expect("valid");
            black_box(r)
        })
    });
    for (name, txn) in [("txn_cas", cas_txn()), ("txn_64_puts", wide_txn())] {
        let bytes = txn.encode_to_vec();
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = TxnRequest::decode(black_box(bytes.as_slice())).expect("decode");
                validate_txn(&r, DEFAULT_MAX_TXN_OPS).expect("valid");
                black_box(r)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_validate);
criterion_main!(benches);
