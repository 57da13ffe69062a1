//! Which permissions each KV and Lease request needs (etcd's
//! `checkRangeAuth`/`checkPutAuth`/`checkTxnAuth`/`checkLeasePuts`), for
//! the gRPC handlers to call before proposing or reading.

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::manager::{Auth, Caller};
use super::state::Access;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// Range: read on its range.
pub fn range(c: &Caller, r: &RangeRequest) -> Result<(), EtcdError> {
    c.check_range(&r.key, &r.range_end, Access::Read)
}

/// Put: write on the key, read too with prev_kv, and write on every key
/// already attached to the lease it names.
pub fn put(auth: &Auth, c: &Caller, p: &PutRequest) -> Result<(), EtcdError> {
    c.check_range(&p.key, &[], Access::Write)?;
    if p.prev_kv {
        c.check_range(&p.key, &[], Access::Read)?;
    }
    if p.lease != 0 {
        lease_keys(auth, c, p.lease)?;
    }
    Ok(())
}

/// DeleteRange: write on the range, read too with prev_kv.
pub fn delete_range(c: &Caller, d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    c.check_range(&d.key, &d.range_end, Access::Write)?;
    if d.prev_kv {
        c.check_range(&d.key, &d.range_end, Access::Read)?;
    }
    Ok(())
}

/// Txn: read on every compare, and every op of both branches (nested txns
/// included) as if sent alone.
pub fn txn(auth: &Auth, c: &Caller, t: &TxnRequest) -> Result<(), EtcdError> {
    if !c.enabled() {
        return Ok(());
    }
    for cmp in &t.compare {
        c.check_range(&cmp.key, &cmp.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => range(c, r)?,
            Some(Op::RequestPut(p)) => put(auth, c, p)?,
            Some(Op::RequestDeleteRange(d)) => delete_range(c, d)?,
            Some(Op::RequestTxn(t)) => txn(auth, c, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Write on every key attached to `lease` (LeaseRevoke, and a put with a lease).
pub fn lease_keys(auth: &Auth, c: &Caller, lease: i64) -> Result<(), EtcdError> {
    if !c.enabled() {
        return Ok(());
    }
    for key in auth.lease_keys(lease) {
        c.check_range(&key, &[], Access::Write)?;
    }
    Ok(())
}

/// The root check of etcd 3.4's Maintenance service (Hash, HashKV,
/// Defragment, Snapshot): its auth errors reach the client untranslated,
/// as the auth package's own texts with code Unknown (`auth: permission
/// denied`), which is what cairn answers too.
pub fn maintenance_admin(auth: &Auth, md: &MetadataMap) -> Result<(), Status> {
    let checked = auth.caller(md).and_then(|c| c.check_admin());
    checked.map_err(|e| {
        let text = match e {
            EtcdError::UserEmpty => "auth: user name is empty",
            EtcdError::PermissionDenied => "auth: permission denied",
            EtcdError::InvalidAuthToken => "auth: invalid auth token",
            EtcdError::UserNotFound => "auth: user not found",
            EtcdError::AuthOldRevision => "auth: revision in header is old",
            other => return Status::from(other),
        };
        Status::unknown(text)
    })
}
