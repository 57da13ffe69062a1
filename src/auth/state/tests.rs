use super::*;
use crate::mvcc::MemBackend;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
};

fn user_add(name: &str) -> Request {
    Request::UserAdd(AuthUserAddRequest {
        name: name.into(),
        password: "hash".into(),
        options: None,
    })
}

fn grant_role(user: &str, role: &str) -> Request {
    Request::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn role_add(name: &str) -> Request {
    Request::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn grant(role: &str, t: PermType, key: &[u8], end: &[u8]) -> Request {
    Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: t as i32,
            key: key.to_vec(),
            range_end: end.to_vec(),
        }),
    })
}

fn enable() -> Request {
    Request::AuthEnable(AuthEnableRequest {})
}

/// A state with root (root role) and alice (role r: readwrite on /app/
/// prefix, read on key `cfg`, write from `z` on), auth enabled.
fn sample() -> AuthState {
    let mut s = AuthState::new();
    for r in [
        user_add("root"),
        grant_role("root", "root"),
        user_add("alice"),
        role_add("r"),
        grant("r", PermType::Readwrite, b"/app/", b"/app0"),
        grant("r", PermType::Read, b"cfg", b""),
        grant("r", PermType::Write, b"z", b"\0"),
        grant_role("alice", "r"),
        enable(),
    ] {
        s.apply(&r).expect("sample change applies");
    }
    s
}

#[test]
fn enable_needs_root_with_root_role() {
    let mut s = AuthState::new();
    assert_eq!(s.apply(&enable()), Err(EtcdError::RootUserNotExist));
    s.apply(&user_add("root")).expect("add root");
    assert_eq!(s.apply(&enable()), Err(EtcdError::RootRoleNotExist));
    s.apply(&grant_role("root", "root")).expect("grant root");
    let before = s.revision;
    s.apply(&enable()).expect("enable");
    assert!(s.enabled);
    assert_eq!(s.revision, before + 1);
}

#[test]
fn etcds_errors_for_users_and_roles() {
    struct Case {
        req: Request,
        want: EtcdError,
    }
    let cases = [
        Case {
            req: user_add("alice"),
            want: EtcdError::UserAlreadyExist,
        },
        Case {
            req: user_add(""),
            want: EtcdError::UserEmpty,
        },
        Case {
            req: grant_role("bob", "r"),
            want: EtcdError::UserNotFound,
        },
        Case {
            req: grant_role("alice", "nope"),
            want: EtcdError::RoleNotFound,
        },
        Case {
            req: role_add("r"),
            want: EtcdError::RoleAlreadyExist,
        },
        Case {
            req: role_add(""),
            want: EtcdError::RoleEmpty,
        },
        Case {
            req: Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "other".into(),
            }),
            want: EtcdError::RoleNotGranted,
        },
        Case {
            req: Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            }),
            want: EtcdError::InvalidAuthMgmt,
        },
        Case {
            req: Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into(),
            }),
            want: EtcdError::InvalidAuthMgmt,
        },
        Case {
            req: Request::UserDelete(AuthUserDeleteRequest { name: "bob".into() }),
            want: EtcdError::UserNotFound,
        },
        Case {
            req: Request::RoleDelete(AuthRoleDeleteRequest {
                role: "nope".into(),
            }),
            want: EtcdError::RoleNotFound,
        },
        Case {
            req: Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"/app/".to_vec(),
                range_end: Vec::new(),
            }),
            want: EtcdError::PermissionNotGranted,
        },
    ];
    for c in cases {
        let mut s = sample();
        let before = s.clone();
        assert_eq!(s.apply(&c.req), Err(c.want.clone()), "{:?}", c.req);
        assert_eq!(s, before, "a refused change changes nothing: {:?}", c.req);
    }
}

#[test]
fn permissions_by_range_and_type() {
    let s = sample();
    let rev = s.revision;
    struct Case {
        key: &'static [u8],
        end: &'static [u8],
        access: Access,
        ok: bool,
    }
    let cases = [
        Case {
            key: b"/app/x",
            end: b"",
            access: Access::Read,
            ok: true,
        },
        Case {
            key: b"/app/x",
            end: b"",
            access: Access::Write,
            ok: true,
        },
        Case {
            key: b"/app/",
            end: b"/app0",
            access: Access::Read,
            ok: true,
        },
        Case {
            key: b"/app/a",
            end: b"/app/b",
            access: Access::Read,
            ok: true,
        },
        Case {
            key: b"/app",
            end: b"/app0",
            access: Access::Read,
            ok: false,
        },
        Case {
            key: b"/other",
            end: b"",
            access: Access::Read,
            ok: false,
        },
        Case {
            key: b"cfg",
            end: b"",
            access: Access::Read,
            ok: true,
        },
        Case {
            key: b"cfg",
            end: b"",
            access: Access::Write,
            ok: false,
        },
        Case {
            key: b"cfg",
            end: b"cfh",
            access: Access::Read,
            ok: false,
        },
        Case {
            key: b"zz",
            end: b"",
            access: Access::Write,
            ok: true,
        },
        Case {
            key: b"z",
            end: b"\0",
            access: Access::Write,
            ok: true,
        },
        Case {
            key: b"y",
            end: b"\0",
            access: Access::Write,
            ok: false,
        },
        Case {
            key: b"zz",
            end: b"",
            access: Access::Read,
            ok: false,
        },
    ];
    for c in cases {
        let got = s.check_range("alice", rev, c.key, c.end, c.access);
        let want = if c.ok {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        };
        assert_eq!(got, want, "{:?}..{:?} {:?}", c.key, c.end, c.access);
        assert_eq!(s.check_range("root", rev, c.key, c.end, c.access), Ok(()));
    }
}

#[test]
fn tokens_from_older_revisions_and_no_token() {
    let mut s = sample();
    let rev = s.revision;
    assert_eq!(
        s.check_range("alice", 0, b"/app/x", b"", Access::Read),
        Err(EtcdError::UserEmpty)
    );
    s.apply(&role_add("another")).expect("role add");
    assert_eq!(
        s.check_range("alice", rev, b"/app/x", b"", Access::Read),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(
        s.check_admin("alice", s.revision),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(s.check_admin("root", s.revision), Ok(()));
    s.apply(&Request::AuthDisable(AuthDisableRequest {}))
        .expect("disable");
    assert_eq!(s.check_range("", 0, b"/other", b"", Access::Write), Ok(()));
}

#[test]
fn role_delete_removes_it_from_users_and_grant_replaces_type() {
    let mut s = sample();
    s.apply(&grant("r", PermType::Read, b"/app/", b"/app0"))
        .expect("regrant");
    let rev = s.revision;
    assert_eq!(
        s.check_range("alice", rev, b"/app/x", b"", Access::Write),
        Err(EtcdError::PermissionDenied)
    );
    s.apply(&Request::RoleDelete(AuthRoleDeleteRequest {
        role: "r".into(),
    }))
    .expect("delete role");
    assert!(s.users["alice"].roles.is_empty());
}

#[test]
fn survives_a_reload_from_the_backend() {
    let backend = MemBackend::new();
    let s = sample();
    let mut batch = WriteBatch::new();
    s.write_changes(&AuthState::new(), &mut batch);
    backend.write_batch(batch).expect("write");
    let loaded = AuthState::load(&backend).expect("load");
    assert_eq!(loaded, s);

    // A later change writes what changed, deletes included.
    let mut next = s.clone();
    next.apply(&Request::UserDelete(AuthUserDeleteRequest {
        name: "alice".into(),
    }))
    .expect("delete alice");
    let mut batch = WriteBatch::new();
    next.write_changes(&s, &mut batch);
    backend.write_batch(batch).expect("write");
    let reloaded = AuthState::load(&backend).expect("reload");
    // `enabled_at` is not stored: tokens do not survive a restart anyway.
    next.enabled_at = reloaded.enabled_at;
    assert_eq!(reloaded, next);
}
