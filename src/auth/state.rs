//! The replicated half of auth: users, roles, whether auth is enabled and
//! the auth revision (etcd's `authStore` state), how each change applies,
//! and the permission checks that read it.
//!
//! Everything here is plain data and deterministic code: the apply path
//! ([`AuthState::apply`]) runs on every member with the same result, and the
//! state is written to the state store under its own prefixes (`u/<name>`,
//! `r/<name>`, `m/auth_enabled`, `m/auth_revision`) in the same atomic batch
//! as the applied index, so it survives restarts and travels in snapshots
//! (which copy every non-MVCC key).
//!
//! Passwords arrive already hashed (bcrypt, by the member that proposed the
//! change), so no plain password is ever in the log or the store.

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{EtcdError, StorageError};
use crate::mvcc::{Backend, WriteBatch};
use crate::proto::authpb::{permission::Type as PermType, Permission, Role, User, UserAddOptions};
use crate::proto::cairnpb::internal_request::Request;

/// The user and the role that may do everything (etcd's `root`).
pub const ROOT: &str = "root";

/// Backend prefix of user records (authpb.User, password = bcrypt hash).
pub const USER_PREFIX: &[u8] = b"u/";
/// Backend prefix of role records (authpb.Role).
pub const ROLE_PREFIX: &[u8] = b"r/";
/// Backend key: `1` while auth is enabled.
pub const META_AUTH_ENABLED: &[u8] = b"m/auth_enabled";
/// Backend key: the auth revision, big-endian u64.
pub const META_AUTH_REVISION: &[u8] = b"m/auth_revision";

/// Users, roles, the enabled flag and the auth revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthState {
    /// Whether requests are checked (etcd's `auth enable`).
    pub enabled: bool,
    /// Bumped by every change, as etcd's; a token issued at an older
    /// revision is refused (`revision of auth store is old`).
    pub revision: u64,
    /// Users by name; each one's roles are kept sorted.
    pub users: BTreeMap<String, User>,
    /// Roles by name; each one's permissions are kept sorted by key.
    pub roles: BTreeMap<String, Role>,
    /// The auth revision at which auth was last enabled. Not replicated:
    /// tokens live in memory only, and a token from before the last
    /// enable (auth was disabled since) is invalid, as etcd drops every
    /// token when auth is disabled.
    pub enabled_at: u64,
}

/// What a permission is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl AuthState {
    /// A store that never had auth: revision 1, as etcd's fresh auth store.
    pub fn new() -> AuthState {
        AuthState {
            revision: 1,
            ..AuthState::default()
        }
    }

    /// Reads the state from the backend (start-up, after a restore).
    pub fn load(backend: &dyn Backend) -> Result<AuthState, StorageError> {
        let mut state = AuthState::new();
        if let Some(v) = backend.get(META_AUTH_REVISION)? {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::corrupt("auth revision", format!("{v:02x?}")))?;
            state.revision = u64::from_be_bytes(bytes);
        }
        state.enabled = backend.get(META_AUTH_ENABLED)?.is_some_and(|v| v == b"1");
        if state.enabled {
            state.enabled_at = state.revision;
        }
        for item in backend.scan_prefix(USER_PREFIX) {
            let (_, v) = item?;
            let user =
                User::decode(v.as_slice()).map_err(|e| StorageError::corrupt("auth user", e))?;
            state.users.insert(lossy(&user.name), user);
        }
        for item in backend.scan_prefix(ROLE_PREFIX) {
            let (_, v) = item?;
            let role =
                Role::decode(v.as_slice()).map_err(|e| StorageError::corrupt("auth role", e))?;
            state.roles.insert(lossy(&role.name), role);
        }
        Ok(state)
    }

    /// Adds to `batch` what turns `old` (the committed state) into `self`.
    pub fn write_changes(&self, old: &AuthState, batch: &mut WriteBatch) {
        if self.revision != old.revision {
            batch.put(META_AUTH_REVISION, self.revision.to_be_bytes().to_vec());
        }
        if self.enabled != old.enabled {
            if self.enabled {
                batch.put(META_AUTH_ENABLED, b"1".to_vec());
            } else {
                batch.delete(META_AUTH_ENABLED);
            }
        }
        diff(USER_PREFIX, &old.users, &self.users, batch);
        diff(ROLE_PREFIX, &old.roles, &self.roles, batch);
    }

    /// Whether `req` is an auth store change (applied by [`AuthState::apply`]).
    pub fn is_auth_request(req: &Request) -> bool {
        matches!(
            req,
            Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::UserAdd(_)
                | Request::UserDelete(_)
                | Request::UserChangePassword(_)
                | Request::UserGrantRole(_)
                | Request::UserRevokeRole(_)
                | Request::RoleAdd(_)
                | Request::RoleDelete(_)
                | Request::RoleGrantPermission(_)
                | Request::RoleRevokePermission(_)
        )
    }

    /// Applies one auth change with etcd's rules and errors. A refused
    /// change leaves the state as it was; every accepted one (except the
    /// no-ops etcd also accepts silently) bumps the revision. Returns
    /// `Ok(false)` for a request that is not an auth change.
    pub fn apply(&mut self, req: &Request) -> Result<bool, EtcdError> {
        match req {
            Request::AuthEnable(_) => {
                if self.enabled {
                    return Ok(true);
                }
                let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                self.enabled = true;
                self.bump();
                self.enabled_at = self.revision;
            }
            Request::AuthDisable(_) => {
                if !self.enabled {
                    return Ok(true);
                }
                self.enabled = false;
                self.bump();
            }
            Request::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        r.password.clone().into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                self.users.insert(r.name.clone(), user);
                self.bump();
            }
            Request::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                self.bump();
            }
            Request::UserChangePassword(r) => {
                let user = self.users.get_mut(&r.name).ok_or(EtcdError::UserNotFound)?;
                user.password = r.password.clone().into_bytes();
                self.bump();
            }
            Request::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(EtcdError::UserNotFound);
                }
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let user = self.users.get_mut(&r.user).ok_or(EtcdError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    // etcd: granting a role the user has changes nothing.
                    Ok(_) => return Ok(true),
                    Err(at) => user.roles.insert(at, r.role.clone()),
                }
                self.bump();
            }
            Request::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&r.name).ok_or(EtcdError::UserNotFound)?;
                let at = user
                    .roles
                    .binary_search(&r.role)
                    .map_err(|_| EtcdError::RoleNotGranted)?;
                user.roles.remove(at);
                self.bump();
            }
            Request::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                let role = Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                self.roles.insert(r.name.clone(), role);
                self.bump();
            }
            Request::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                // The role goes from every user that had it.
                for user in self.users.values_mut() {
                    if let Ok(at) = user.roles.binary_search(&r.role) {
                        user.roles.remove(at);
                    }
                }
                self.bump();
            }
            Request::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(EtcdError::PermissionNotGiven)?;
                let role = self.roles.get_mut(&r.name).ok_or(EtcdError::RoleNotFound)?;
                let same = |p: &Permission| p.key == perm.key && p.range_end == perm.range_end;
                match role.key_permission.iter_mut().find(|p| same(p)) {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        let at = role
                            .key_permission
                            .partition_point(|p| p.key.as_slice() <= perm.key.as_slice());
                        role.key_permission.insert(at, perm.clone());
                    }
                }
                self.bump();
            }
            Request::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(EtcdError::RoleNotFound)?;
                let at = role
                    .key_permission
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(EtcdError::PermissionNotGranted)?;
                role.key_permission.remove(at);
                self.bump();
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    /// Whether `user` holds the root role (etcd's `hasRootRole`).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// etcd's `isOpPermitted`: may `user`, whose token was issued at auth
    /// revision `token_revision`, access `[key, range_end)` (etcd's range
    /// forms: empty = the key alone, `\0` = from the key on)?
    pub fn check_range(
        &self,
        user: &str,
        token_revision: u64,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        self.check_revision(token_revision)?;
        let Some(u) = self.users.get(user) else {
            return Err(EtcdError::PermissionDenied);
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let granted = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| allows(p.perm_type, access))
            .map(|p| interval(&p.key, &p.range_end));
        if covers(granted.collect(), interval(key, range_end)) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: root role required while auth is enabled.
    pub fn check_admin(&self, user: &str, token_revision: u64) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        self.check_revision(token_revision)?;
        if !self.users.contains_key(user) {
            return Err(EtcdError::UserNotFound);
        }
        if self.is_root(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    fn check_revision(&self, token_revision: u64) -> Result<(), EtcdError> {
        if token_revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if token_revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(())
    }
}

/// Whether a permission of type `perm` (authpb's enum value) grants `access`.
fn allows(perm: i32, access: Access) -> bool {
    match PermType::try_from(perm) {
        Ok(PermType::Readwrite) => true,
        Ok(PermType::Read) => access == Access::Read,
        Ok(PermType::Write) => access == Access::Write,
        Err(_) => false,
    }
}

/// A half-open key interval; `None` as the end means unbounded.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// etcd's range forms as an interval: an empty end is the key alone
/// (`[key, key\0)`), `\0` is every key from `key` on.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// `a <= b` for interval ends, unbounded being the largest.
fn end_le(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

/// Whether the union of `granted` covers all of `want`.
fn covers(mut granted: Vec<Interval>, want: Interval) -> bool {
    granted.sort();
    let (start, want_end) = want;
    // `[start, reach)` is covered so far; `None` is unbounded.
    let mut reach = Some(start.clone());
    for (s, e) in granted {
        let Some(r) = &reach else { break };
        if s.as_slice() > r.as_slice() {
            // A gap at `r`: sorted by start, nothing later fills it.
            break;
        }
        if !end_le(&e, &reach) {
            reach = e;
        }
    }
    reach.as_ref() != Some(&start) && end_le(&want_end, &reach)
}

fn diff<T: Message + PartialEq>(
    prefix: &[u8],
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    batch: &mut WriteBatch,
) {
    let key = |name: &str| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    };
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        batch.delete(key(name));
    }
    for (name, v) in new {
        if old.get(name) != Some(v) {
            batch.put(key(name), v.encode_to_vec());
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests;
