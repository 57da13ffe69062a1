//! Edge validation: the checks etcd's gRPC layer (`v3rpc/key.go`) runs on a
//! KV request before it is proposed, with etcd's errors.
//!
//! The gRPC services call these before a request reaches raft, so a request
//! that can never succeed costs no log entry. Checks that depend on the
//! store's state (revisions, existing keys, leases) are not here: they run at
//! apply time, in [`crate::apply`], where every member decides the same way.

use std::collections::HashSet;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// etcd's default for `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

pub fn validate_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn validate_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn validate_delete_range(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd checks nothing about a compaction at the edge: whether the revision
/// is compacted or in the future depends on the store and is decided at
/// apply time. Kept so every KV RPC has its validator.
pub fn validate_compaction(_r: &CompactionRequest) -> Result<(), EtcdError> {
    Ok(())
}

/// etcd's txn checks, in etcd's order: the op count (the largest of compare,
/// success and failure may not exceed `max_txn_ops`; a nested txn gets what
/// its parent left), empty keys and empty ops (recursively), then the
/// duplicate-key rules on each branch.
pub fn validate_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(Op::RequestRange(r)) => validate_range(r),
        Some(Op::RequestPut(p)) => validate_put(p),
        Some(Op::RequestDeleteRange(d)) => validate_delete_range(d),
        Some(Op::RequestTxn(t)) => check_txn(t, max_txn_ops),
        // etcd answers an op with nothing in it this way.
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A delete's key interval `[begin, end)`; a single-key delete is
/// `[key, key+"\0")`. A delete with range_end "\0" ("from key") becomes the
/// interval `[key, "\0")`, which contains nothing: etcd's interval check
/// does the same, so such deletes never conflict with puts.
#[derive(Debug, Clone)]
struct Interval {
    /// Inclusive start.
    begin: Vec<u8>,
    /// Exclusive end.
    end: Vec<u8>,
}

impl Interval {
    fn of_delete(key: &[u8], range_end: &[u8]) -> Self {
        let end = if range_end.is_empty() {
            let mut e = key.to_vec();
            e.push(0);
            e
        } else {
            range_end.to_vec()
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }
}

/// etcd's `checkIntervals`: within one branch, no key may be put twice, and
/// no put may fall in a deleted range. Nested txns count: their puts (from
/// either of their branches, which exclude each other) and deletes join the
/// parent's. Like etcd, a nested txn's puts are checked against the deletes
/// of the nested txns before it but not after it.
/// Returns the branch's puts and deletes for the parent's check.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(d)) => Some(Interval::of_delete(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains(k));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // The same key in both branches of one txn is fine: only one runs.
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests;
