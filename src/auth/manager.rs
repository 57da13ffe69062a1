//! The AuthManager actor and the [`Auth`] handle the gRPC layer checks with.
//!
//! AuthManager owns the token machinery: it checks a password against the
//! applied auth store (bcrypt, on a blocking thread, so the actor keeps
//! serving), issues etcd-style simple tokens (`<16 random letters>.<n>`),
//! and expires them after `--auth-token-ttl` without use (a use renews the
//! TTL, as etcd's simple token keeper does). It takes `Authenticate` and
//! ticks every second; it sends nothing.
//!
//! The token table is shared read-mostly with the gRPC threads: [`Auth`]
//! resolves the `token` metadata of every request there and checks its
//! permissions against the auth store published by the last applied batch,
//! with no message and no raft round trip. A token stops working at once
//! when its user is deleted, its password changes or auth is disabled
//! (checked on every use against the current auth store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use parking_lot::Mutex;
use tonic::metadata::MetadataMap;

use super::jwt::Jwt;
use super::state::{Access, AuthState};
use crate::error::EtcdError;
use crate::mvcc::Store;
use crate::supervise::Lifeline;

/// `--auth-token`: how tokens are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenConfig {
    /// etcd's simple tokens: random, kept in memory, expiring after a TTL.
    Simple,
    /// Signed JWTs ([`super::jwt`]).
    Jwt(super::jwt::JwtConfig),
}

/// How often expired tokens are dropped.
const SWEEP: Duration = Duration::from_secs(1);

/// One issued token.
struct TokenEntry {
    /// Whose token it is.
    user: String,
    /// The auth revision when it was issued: a token from before the last
    /// `auth enable` is void (auth was disabled since).
    revision: u64,
    /// The user's password hash when it was issued: a changed password
    /// invalidates the token.
    password: Vec<u8>,
    /// Renewed by every use.
    expires: Mutex<Instant>,
}

/// The token table: written by AuthManager, read by gRPC threads.
#[derive(Default)]
pub struct Tokens {
    map: DashMap<String, TokenEntry>,
}

/// Checks a password and issues a token for the user.
#[derive(Message)]
#[rtype(result = "Result<String, EtcdError>")]
pub struct Authenticate {
    pub name: String,
    pub password: String,
}

pub struct AuthManager {
    /// The applied auth store is read from here.
    store: Arc<Store>,
    /// Shared with [`Auth`].
    tokens: Arc<Tokens>,
    /// `--auth-token-ttl`.
    ttl: Duration,
    /// Signs tokens instead of keeping them, with `--auth-token jwt`.
    jwt: Option<Arc<Jwt>>,
    /// Numbers the tokens (etcd's simple token suffix).
    issued: u64,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl AuthManager {
    pub fn new(
        store: Arc<Store>,
        tokens: Arc<Tokens>,
        ttl: Duration,
        jwt: Option<Arc<Jwt>>,
    ) -> AuthManager {
        AuthManager {
            store,
            tokens,
            ttl,
            jwt,
            issued: 0,
            _lifeline: Lifeline::new("AuthManager"),
        }
    }

    fn sweep(&mut self) {
        crate::failpoint::hit("auth-sweep");
        let now = Instant::now();
        self.tokens.map.retain(|_, t| *t.expires.lock() > now);
    }
}

impl Actor for AuthManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP, |act, _| act.sweep());
    }
}

impl Handler<Authenticate> for AuthManager {
    type Result = ResponseActFuture<Self, Result<String, EtcdError>>;

    fn handle(&mut self, msg: Authenticate, _: &mut Context<Self>) -> Self::Result {
        let state = self.store.auth();
        let hash = match state.users.get(&msg.name) {
            _ if !state.enabled => Err(EtcdError::AuthNotEnabled),
            None => Err(EtcdError::AuthFailed),
            Some(u) if u.options.as_ref().is_some_and(|o| o.no_password) => {
                Err(EtcdError::AuthFailed)
            }
            Some(u) => Ok(u.password.clone()),
        };
        let check = async move {
            let hash = hash?;
            let stored = String::from_utf8_lossy(&hash).into_owned();
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(msg.password, &stored))
                .await
                .map_err(|_| EtcdError::AuthFailed)?
                .unwrap_or(false);
            if ok {
                Ok((msg.name, hash))
            } else {
                Err(EtcdError::AuthFailed)
            }
        };
        Box::pin(check.into_actor(self).map(move |checked, act, _| {
            let (user, password) = checked?;
            // The revision now, not when the check began: a change applied
            // meanwhile is seen by the next use of the token anyway.
            let revision = act.store.auth().revision;
            if let Some(jwt) = &act.jwt {
                return jwt.sign(&user, revision);
            }
            act.issued += 1;
            let token = format!("{}.{}", random_letters(16), act.issued);
            act.tokens.map.insert(
                token.clone(),
                TokenEntry {
                    user,
                    revision,
                    password,
                    expires: Mutex::new(Instant::now() + act.ttl),
                },
            );
            Ok(token)
        }))
    }
}

/// `n` random ASCII letters (etcd's simple token body).
fn random_letters(n: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = vec![0u8; n];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: refuse to make a guessable token.
        crate::error::fatal("making an auth token", &"the OS random source failed");
    }
    bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect()
}

/// What the gRPC layer checks requests with; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    store: Arc<Store>,
    tokens: Arc<Tokens>,
    /// With `--auth-token jwt`: verifies tokens.
    jwt: Option<Arc<Jwt>>,
    manager: Recipient<Authenticate>,
    ttl: Duration,
}

/// Who sent a request, judged against the auth store at that moment.
pub struct Caller {
    /// The auth store the checks read; None while auth is disabled.
    pub state: Option<Arc<AuthState>>,
    /// The token's user and auth revision; None without a token.
    user: Option<(String, u64)>,
}

impl Auth {
    pub fn new(
        store: Arc<Store>,
        tokens: Arc<Tokens>,
        manager: Recipient<Authenticate>,
        ttl: Duration,
        jwt: Option<Arc<Jwt>>,
    ) -> Auth {
        Auth {
            store,
            tokens,
            jwt,
            manager,
            ttl,
        }
    }

    /// Resolves a request's `token` metadata. With auth disabled the token
    /// is ignored; with auth enabled a token that is unknown, expired, or
    /// no longer valid (user deleted, password changed, auth disabled since)
    /// is `invalid auth token`.
    pub fn caller(&self, md: &MetadataMap) -> Result<Caller, EtcdError> {
        let disabled = Caller {
            state: None,
            user: None,
        };
        if !self.store.auth_enabled() {
            return Ok(disabled);
        }
        let state = self.store.auth();
        if !state.enabled {
            return Ok(disabled);
        }
        let Some(token) = md.get("token") else {
            return Ok(Caller {
                state: Some(state),
                user: None,
            });
        };
        let token = token.to_str().map_err(|_| EtcdError::InvalidAuthToken)?;
        if let Some(jwt) = &self.jwt {
            // A JWT carries its user and auth revision; a stale one is
            // refused by the checks (`revision of auth store is old`).
            let user = jwt.verify(token).ok_or(EtcdError::InvalidAuthToken)?;
            return Ok(Caller {
                state: Some(state),
                user: Some(user),
            });
        }
        let entry = self
            .tokens
            .map
            .get(token)
            .ok_or(EtcdError::InvalidAuthToken)?;
        let now = Instant::now();
        {
            let mut expires = entry.expires.lock();
            if *expires <= now {
                return Err(EtcdError::InvalidAuthToken);
            }
            *expires = now + self.ttl;
        }
        let current = state.users.get(&entry.user);
        if current.is_none_or(|u| u.password != entry.password) || entry.revision < state.enabled_at
        {
            return Err(EtcdError::InvalidAuthToken);
        }
        // etcd's simple tokens are judged at the current auth revision (only
        // JWTs carry the revision they were issued at), so an auth change
        // does not make them stale.
        let user = Some((entry.user.clone(), state.revision));
        drop(entry);
        Ok(Caller {
            state: Some(state),
            user,
        })
    }

    /// Asks AuthManager for a token (Authenticate).
    pub async fn authenticate(&self, name: String, password: String) -> Result<String, EtcdError> {
        self.manager
            .send(Authenticate { name, password })
            .await
            .map_err(|_| EtcdError::Stopped)?
    }

    /// Attached keys of `lease` (for etcd's lease-put checks).
    pub fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self.store
            .lease(lease)
            .map(|l| l.keys.into_iter().collect())
            .unwrap_or_default()
    }
}

impl Caller {
    /// Whether auth is enabled (else every check passes).
    pub fn enabled(&self) -> bool {
        self.state.is_some()
    }

    /// The token's user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    fn who(&self) -> (&str, u64) {
        match &self.user {
            Some((u, r)) => (u, *r),
            None => ("", 0),
        }
    }

    /// May the caller access `[key, range_end)` (etcd's range forms)?
    pub fn check_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let (user, rev) = self.who();
        state.check_range(user, rev, key, range_end, access)
    }

    /// Is the caller an administrator (root role)?
    pub fn check_admin(&self) -> Result<(), EtcdError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let (user, rev) = self.who();
        state.check_admin(user, rev)
    }
}
