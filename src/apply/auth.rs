//! The applier's permission check (etcd's `authApplierV3`): a client's
//! request was judged by the member that proposed it, against the auth
//! store of that moment, and carries who was judged at which auth revision
//! (its [`AuthStamp`]). Here it is judged again against the auth store as
//! this batch has left it, with the same rules (`auth::check`): if the auth
//! store moved since (a role revoked, a user deleted, a password changed),
//! the stamp's revision is old and the request is refused with
//! `revision of auth store is old`, so a write checked just before a revoke
//! never applies after it. The proposer then judges it anew
//! (`grpc::Api::propose_request_as`).
//!
//! Requests with no stamp are the member's own (lease expiry, automatic
//! compaction), which etcd runs as root: they are not judged.

use super::Fail;
use crate::auth::check::{self, Judge};
use crate::auth::state::{Access, AuthState};
use crate::error::EtcdError;
use crate::mvcc::BatchWriter;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::cairnpb::AuthStamp;

/// A stamped request's caller, judged against the batch's auth store.
struct Stamped<'a, 's> {
    w: &'a BatchWriter<'s>,
    stamp: &'a AuthStamp,
}

impl Stamped<'_, '_> {
    fn with_auth<R>(&self, f: impl FnOnce(&AuthState) -> R) -> R {
        self.w.with_auth(f)
    }
}

impl Judge for Stamped<'_, '_> {
    type Error = Fail;

    fn enabled(&self) -> bool {
        self.w.auth_enabled()
    }

    fn check_range(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), EtcdError> {
        let (user, rev) = (&self.stamp.username, self.stamp.revision);
        self.with_auth(|a| a.check_range(user, rev, key, range_end, access))
    }

    fn check_admin(&self) -> Result<(), EtcdError> {
        let (user, rev) = (&self.stamp.username, self.stamp.revision);
        self.with_auth(|a| a.check_admin(user, rev))
    }

    fn lease_keys(&self, lease: i64) -> Result<Vec<Vec<u8>>, Fail> {
        Ok(self.w.lease_keys(lease)?)
    }
}

/// Judges `request` as its stamp says, before it is applied.
pub(super) fn check(w: &BatchWriter, request: &Request, stamp: &AuthStamp) -> Result<(), Fail> {
    let judge = Stamped { w, stamp };
    if !judge.enabled() {
        return Ok(());
    }
    check::request(&judge, request)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{apply_batch, ApplyResponse, Proposed};
    use super::*;
    use crate::mvcc::{MemBackend, Store};
    use crate::proto::authpb::permission::Type as PermType;
    use crate::proto::authpb::Permission;
    use crate::proto::etcdserverpb::*;

    /// A store with auth enabled: `root`, and `alice` whose role `rw` may
    /// read and write `/app/` and nothing else.
    struct Setup {
        store: Store,
        next: u64,
    }

    impl Setup {
        fn new() -> Setup {
            let mut s = Setup {
                store: Store::open(Arc::new(MemBackend::new())).expect("open"),
                next: 1,
            };
            let user = |name: &str| {
                Request::UserAdd(AuthUserAddRequest {
                    name: name.into(),
                    password: "hash".into(),
                    ..Default::default()
                })
            };
            for r in [
                user("root"),
                Request::UserGrantRole(AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                }),
                user("alice"),
                Request::RoleAdd(AuthRoleAddRequest { name: "rw".into() }),
                Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                    name: "rw".into(),
                    perm: Some(Permission {
                        perm_type: PermType::Readwrite as i32,
                        key: b"/app/".to_vec(),
                        range_end: b"/app0".to_vec(),
                    }),
                }),
                Request::UserGrantRole(AuthUserGrantRoleRequest {
                    user: "alice".into(),
                    role: "rw".into(),
                }),
                Request::AuthEnable(AuthEnableRequest {}),
            ] {
                s.apply(r, None).expect("set up auth");
            }
            s
        }

        /// Applies one request (stamped, or the member's own).
        fn apply(
            &mut self,
            request: Request,
            auth: Option<AuthStamp>,
        ) -> Result<ApplyResponse, EtcdError> {
            let index = self.next;
            self.next += 1;
            let entry = Proposed { request, auth };
            let mut out = apply_batch(&self.store, vec![(index, Some(entry))], 2).expect("apply");
            out.results.pop().flatten().expect("a result")
        }

        fn revision(&self) -> u64 {
            self.store.auth().revision
        }

        fn value(&self, key: &str) -> Option<Vec<u8>> {
            let req = RangeRequest {
                key: key.into(),
                ..Default::default()
            };
            let mut resp = self.store.range(&req).expect("range");
            resp.kvs.pop().map(|kv| kv.value)
        }
    }

    fn stamp(user: &str, revision: u64) -> Option<AuthStamp> {
        Some(AuthStamp {
            username: user.into(),
            revision,
        })
    }

    fn put(key: &str) -> Request {
        Request::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn revoke_alice() -> Request {
        Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "rw".into(),
        })
    }

    /// The race the check exists for: alice's put is judged (and stamped)
    /// while she holds the role, the revoke is applied before it, and then
    /// the put reaches apply. It must not write.
    #[test]
    fn a_write_judged_before_a_revoke_does_not_apply_after_it() {
        let mut s = Setup::new();
        let judged_at = s.revision();
        s.apply(put("/app/a"), stamp("alice", judged_at))
            .expect("permitted while the role is held");
        s.apply(revoke_alice(), stamp("root", s.revision()))
            .expect("revoke");
        let late = s.apply(put("/app/b"), stamp("alice", judged_at));
        assert_eq!(late, Err(EtcdError::AuthOldRevision));
        assert_eq!(s.value("/app/b"), None, "the stale write applied");
        // Judged anew (the proposer's retry), it is refused outright.
        let again = s.apply(put("/app/b"), stamp("alice", s.revision()));
        assert_eq!(again, Err(EtcdError::PermissionDenied));
        assert_eq!(s.value("/app/b"), None);
    }

    #[test]
    fn every_kind_of_write_is_judged_at_apply() {
        let mut s = Setup::new();
        let rev = s.revision();
        let txn = |key: &str| {
            Request::Txn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.into(),
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            })
        };
        let delete = |key: &str| {
            Request::DeleteRange(DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            })
        };
        let denied = Err(EtcdError::PermissionDenied);
        assert_eq!(s.apply(put("/other"), stamp("alice", rev)), denied);
        assert_eq!(s.apply(txn("/other"), stamp("alice", rev)), denied);
        assert_eq!(s.apply(delete("/other"), stamp("alice", rev)), denied);
        assert!(s.apply(txn("/app/t"), stamp("alice", rev)).is_ok());
        assert!(s.apply(delete("/app/t"), stamp("alice", rev)).is_ok());
        // No credentials at all (etcd: revision 0), an unknown user.
        assert_eq!(
            s.apply(put("/app/x"), stamp("", 0)),
            Err(EtcdError::UserEmpty)
        );
        assert_eq!(s.apply(put("/app/x"), stamp("mallory", rev)), denied);
        // Auth changes need root at apply too (etcd's needAdminPermission).
        let add = Request::RoleAdd(AuthRoleAddRequest { name: "x".into() });
        assert_eq!(s.apply(add.clone(), stamp("alice", rev)), denied);
        assert!(s.apply(add, stamp("root", rev)).is_ok());
        // The member's own requests (no stamp) are not judged.
        assert!(s.apply(put("/other"), None).is_ok());
    }

    #[test]
    fn a_lease_revoke_needs_write_on_every_attached_key_at_apply() {
        let mut s = Setup::new();
        s.apply(
            Request::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }),
            None,
        )
        .expect("grant");
        let attached = Request::Put(PutRequest {
            key: b"/other".to_vec(),
            lease: 7,
            ..Default::default()
        });
        s.apply(attached, None).expect("attach");
        let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id: 7 });
        let rev = s.revision();
        assert_eq!(
            s.apply(revoke.clone(), stamp("alice", rev)),
            Err(EtcdError::PermissionDenied)
        );
        assert!(s.apply(revoke, stamp("root", rev)).is_ok());
    }

    #[test]
    fn with_auth_disabled_nothing_is_judged() {
        let mut s = Setup::new();
        s.apply(
            Request::AuthDisable(AuthDisableRequest {}),
            stamp("root", s.revision()),
        )
        .expect("disable");
        assert!(s.apply(put("/other"), stamp("", 0)).is_ok());
    }
}
