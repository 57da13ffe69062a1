//! Which permissions each request needs (etcd's `checkRangeAuth`,
//! `authApplierV3.Put`/`DeleteRange`/`Txn`/`LeaseRevoke`, `checkTxnAuth`,
//! `checkLeasePuts`, `needAdminPermission`), written once for the two
//! places that judge a request:
//!
//! * the gRPC layer, before it reads or proposes ([`super::Caller`], the
//!   credentials judged against the auth store of that moment), and
//! * the applier, again, when the proposal is applied (`apply::auth`, the
//!   request's stamp judged against the auth store of the moment of apply).
//!
//! Both are a [`Judge`]; the functions here only say which key ranges and
//! which access a request needs.

use tonic::Status;

use super::manager::{Auth, Credentials};
use super::state::{Access, AuthState};
use crate::error::EtcdError;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// Who asks, judged against one auth store.
pub trait Judge {
    /// What can go wrong besides a refusal (the applier's storage errors,
    /// which stop the member).
    type Error: From<EtcdError>;
    /// Whether auth is enabled (else every check passes).
    fn enabled(&self) -> bool;
    /// May the caller access `[key, range_end)` (etcd's range forms)?
    fn check_range(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), EtcdError>;
    /// Is the caller an administrator (root role)?
    fn check_admin(&self) -> Result<(), EtcdError>;
    /// The keys attached to `lease` now.
    fn lease_keys(&self, lease: i64) -> Result<Vec<Vec<u8>>, Self::Error>;
}

/// Range: read on its range.
pub fn range<J: Judge>(c: &J, r: &RangeRequest) -> Result<(), J::Error> {
    Ok(c.check_range(&r.key, &r.range_end, Access::Read)?)
}

/// Put: write on the key, read too with prev_kv, and write on every key
/// already attached to the lease it names.
pub fn put<J: Judge>(c: &J, p: &PutRequest) -> Result<(), J::Error> {
    c.check_range(&p.key, &[], Access::Write)?;
    if p.prev_kv {
        c.check_range(&p.key, &[], Access::Read)?;
    }
    if p.lease != 0 {
        lease_keys(c, p.lease)?;
    }
    Ok(())
}

/// DeleteRange: write on the range, read too with prev_kv.
pub fn delete_range<J: Judge>(c: &J, d: &DeleteRangeRequest) -> Result<(), J::Error> {
    c.check_range(&d.key, &d.range_end, Access::Write)?;
    if d.prev_kv {
        c.check_range(&d.key, &d.range_end, Access::Read)?;
    }
    Ok(())
}

/// Txn: read on every compare, and every op of both branches (nested txns
/// included) as if sent alone.
pub fn txn<J: Judge>(c: &J, t: &TxnRequest) -> Result<(), J::Error> {
    if !c.enabled() {
        return Ok(());
    }
    for cmp in &t.compare {
        c.check_range(&cmp.key, &cmp.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => range(c, r)?,
            Some(Op::RequestPut(p)) => put(c, p)?,
            Some(Op::RequestDeleteRange(d)) => delete_range(c, d)?,
            Some(Op::RequestTxn(t)) => txn(c, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Write on every key attached to `lease` (LeaseRevoke, and a put with a
/// lease); an administrator needs no look (etcd's `checkLeasePutsKeys`).
pub fn lease_keys<J: Judge>(c: &J, lease: i64) -> Result<(), J::Error> {
    if !c.enabled() || c.check_admin().is_ok() {
        return Ok(());
    }
    for key in c.lease_keys(lease)? {
        c.check_range(&key, &[], Access::Write)?;
    }
    Ok(())
}

/// Any request that goes through the log: what it needs, by kind. Requests
/// etcd checks nowhere (Compaction, Alarm, lease grants) pass.
pub fn request<J: Judge>(c: &J, r: &Request) -> Result<(), J::Error> {
    match r {
        Request::Put(p) => put(c, p),
        Request::DeleteRange(d) => delete_range(c, d),
        Request::Txn(t) => txn(c, t),
        Request::LeaseRevoke(l) => lease_keys(c, l.id),
        auth if AuthState::is_auth_request(auth) => Ok(c.check_admin()?),
        _ => Ok(()),
    }
}

/// The root check of etcd 3.4's Maintenance service (Hash, HashKV,
/// Defragment, Snapshot): its auth errors reach the client untranslated,
/// as the auth package's own texts with code Unknown (`auth: permission
/// denied`), which is what cairn answers too.
pub fn maintenance_admin(auth: &Auth, creds: &Credentials) -> Result<(), Status> {
    let checked = auth.caller(creds).and_then(|c| c.check_admin());
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
