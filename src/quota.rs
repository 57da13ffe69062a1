//! The backend quota (`--quota-backend-bytes`; etcd's `quota.go` and the
//! NOSPACE half of its alarm handling).
//!
//! Who decides that the cluster is out of space must not depend on which
//! member applies a write: each member's state store has its own size on
//! disk (flushes, background rewrites and sled's segments differ), so a
//! check at apply time against the local size would let one member refuse a
//! write that the others apply, and their states would diverge. As etcd:
//!
//! 1. **At the edge** (`grpc::Api::propose`), the member that takes a Put,
//!    a Txn that may put, or a LeaseGrant compares its own size plus the
//!    request's [`cost`] with the quota. Over it, the member proposes the
//!    NOSPACE alarm (ACTIVATE, its own id) through raft and answers
//!    `etcdserver: mvcc: database space exceeded`; nothing is proposed.
//! 2. **At apply** (`crate::apply`), only the replicated alarm counts: while
//!    any member's NOSPACE alarm is active, every member refuses every write
//!    that may add data, at the same log position, so they all refuse the
//!    same writes. Deletes, compactions and alarm requests still apply.
//! 3. The operator frees space (compact; the state store rewrites itself,
//!    or `etcdctl defrag`) and runs `etcdctl alarm disarm`; a write still
//!    over the quota raises the alarm again.

use crate::mvcc::Store;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};

/// etcd's per-put overhead in its quota arithmetic (`kvOverhead`).
pub const KV_OVERHEAD: u64 = 256;
/// etcd's cost of a lease grant in its quota arithmetic (`leaseOverhead`).
pub const LEASE_OVERHEAD: u64 = 64;

/// The bytes `request` may add to the state store; 0 for requests that
/// never add data (deletes, compactions, alarms, revokes, ...).
pub fn cost(request: &Request) -> u64 {
    match request {
        Request::Put(p) => put_cost(p),
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

pub fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// The bytes a txn may add: the larger of its two branches. Unlike etcd,
/// puts inside nested txns count too, so nesting cannot bypass NOSPACE.
pub fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestPut(p)) => put_cost(p),
                Some(Op::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// Whether writing `cost` more bytes would take this member's state store
/// to `limit` (etcd's `size + cost < quota` admission test, negated). A
/// `limit` of 0 means no quota. The size is the store's cheap estimate
/// (the last committed size plus what its write buffer holds).
pub fn exceeded(limit: u64, store: &Store, cost: u64) -> bool {
    if limit == 0 || cost == 0 {
        return false;
    }
    let size = store.backend().size_on_disk().unwrap_or(0);
    size.saturating_add(cost) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest};
    use std::sync::Arc;

    fn put(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(put(k, v))),
        }
    }

    #[test]
    fn costs_follow_etcds_arithmetic() {
        assert_eq!(cost(&Request::Put(put("ab", "xyz"))), 256 + 5);
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        assert_eq!(
            cost(&Request::DeleteRange(DeleteRangeRequest::default())),
            0
        );
        let nested = TxnRequest {
            success: vec![op_put("a", "1")],
            failure: vec![RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    success: vec![op_put("b", "1"), op_put("c", "1")],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(nested)), 2 * (256 + 2));
    }

    #[test]
    fn the_quota_counts_the_stores_size_plus_the_cost() {
        let store = Store::open(Arc::new(crate::mvcc::MemBackend::new())).expect("open");
        let size = store.backend().size_on_disk().expect("size");
        assert!(!exceeded(0, &store, u64::MAX / 2), "0 means no quota");
        assert!(!exceeded(size + 100, &store, 0), "free requests always fit");
        assert!(!exceeded(size + 100, &store, 99));
        assert!(exceeded(size + 100, &store, 100));
    }
}
