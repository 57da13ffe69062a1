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
//! resolves the [`Credentials`] of every request there (its `token`
//! metadata or, without one, its verified client certificate's Common
//! Name) and checks its permissions against the auth store published by
//! the last applied batch, with no message and no raft round trip. A token stops working at once
//! when its user is deleted, its password changes or auth is disabled
//! (checked on every use against the current auth store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use parking_lot::Mutex;
use tonic::metadata::{Ascii, MetadataValue};

use super::check::Judge;
use super::jwt::Jwt;
use super::state::{Access, AuthState};
use crate::error::EtcdError;
use crate::mvcc::Store;
use crate::proto::cairnpb::AuthStamp;
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
    /// The user (from the token, or the client certificate's Common Name)
    /// and the auth revision they are judged at; None without either.
    user: Option<(String, u64)>,
    /// Lease lookups (a put with a lease needs write on its keys).
    store: Arc<Store>,
}

/// What a request presents to be judged by: its `token` metadata and, on a
/// TLS connection whose client certificate was verified
/// (`--client-cert-auth`), the certificate's Common Name, which is the user
/// when there is no token (etcd's `AuthInfoFromTLS`).
///
/// Requests that Lock and Election make on a caller's behalf through the
/// member's own client API ([`crate::grpc::LocalClient`]) arrive on the
/// member's own TLS connection, whose certificate is the member's: they
/// carry the caller's Common Name in [`FORWARDED_CN`] instead, trusted only
/// with this process's [`FORWARDED`] secret beside it.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<MetadataValue<Ascii>>,
    common_name: Option<String>,
}

/// Metadata naming the secret of requests forwarded by this member.
pub const FORWARDED: &str = "cairn-forwarded";
/// Metadata carrying the original caller's certificate Common Name.
pub const FORWARDED_CN: &str = "cairn-forwarded-cn";

/// A random secret made once per process: only this member's own
/// forwarding knows it, so a client cannot claim a Common Name.
fn forwarding_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| random_letters(32))
}

impl Credentials {
    /// The credentials `req` presents.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let md = req.metadata();
        let token = md.get("token").cloned();
        let forwarded = md
            .get(FORWARDED)
            .is_some_and(|v| v.as_bytes() == forwarding_secret().as_bytes());
        let common_name = if forwarded {
            md.get(FORWARDED_CN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        } else {
            req.extensions()
                .get::<crate::tls::server::ConnInfo>()
                .and_then(|info| info.common_name.clone())
        };
        Credentials { token, common_name }
    }

    /// A token alone, as a client sends it.
    pub fn token(token: Option<MetadataValue<Ascii>>) -> Credentials {
        Credentials {
            token,
            common_name: None,
        }
    }

    /// The metadata that makes a request this member sends on the caller's
    /// behalf carry the caller's credentials.
    pub fn forwarded(&self) -> Vec<(&'static str, MetadataValue<Ascii>)> {
        let mut md = Vec::new();
        if let Some(token) = &self.token {
            md.push(("token", token.clone()));
        }
        if let Some(cn) = self.common_name.as_deref() {
            if let (Ok(secret), Ok(cn)) = (
                MetadataValue::try_from(forwarding_secret()),
                MetadataValue::try_from(cn),
            ) {
                md.push((FORWARDED, secret));
                md.push((FORWARDED_CN, cn));
            }
        }
        md
    }
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

    /// Resolves a request's credentials. With auth disabled they are
    /// ignored; with auth enabled a token that is unknown, expired, or no
    /// longer valid (user deleted, password changed, auth disabled since) is
    /// `invalid auth token`. Without a token, a verified client
    /// certificate's Common Name is the user, at the current auth revision
    /// (etcd's `AuthInfoFromTLS`).
    pub fn caller(&self, creds: &Credentials) -> Result<Caller, EtcdError> {
        let judged = |state: Option<Arc<AuthState>>, user: Option<(String, u64)>| Caller {
            state,
            user,
            store: self.store.clone(),
        };
        if !self.store.auth_enabled() {
            return Ok(judged(None, None));
        }
        let state = self.store.auth();
        if !state.enabled {
            return Ok(judged(None, None));
        }
        let Some(token) = &creds.token else {
            let user = creds
                .common_name
                .as_ref()
                .map(|cn| (cn.clone(), state.revision));
            return Ok(judged(Some(state), user));
        };
        let token = token.to_str().map_err(|_| EtcdError::InvalidAuthToken)?;
        if let Some(jwt) = &self.jwt {
            // A JWT carries its user and auth revision; a stale one is
            // refused by the checks (`revision of auth store is old`).
            let user = jwt.verify(token).ok_or(EtcdError::InvalidAuthToken)?;
            return Ok(judged(Some(state), Some(user)));
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
        Ok(judged(Some(state), user))
    }

    /// [`Auth::caller`] for the credentials `req` presents.
    pub fn caller_of<T>(&self, req: &tonic::Request<T>) -> Result<Caller, EtcdError> {
        self.caller(&Credentials::of(req))
    }

    /// Asks AuthManager for a token (Authenticate).
    pub async fn authenticate(&self, name: String, password: String) -> Result<String, EtcdError> {
        self.manager
            .send(Authenticate { name, password })
            .await
            .map_err(|_| EtcdError::Stopped)?
    }
}

impl Caller {
    /// Whether auth is enabled (else every check passes).
    pub fn enabled(&self) -> bool {
        self.state.is_some()
    }

    /// The caller's user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    fn who(&self) -> (&str, u64) {
        match &self.user {
            Some((u, r)) => (u, *r),
            None => ("", 0),
        }
    }

    /// What a proposal carries of its caller, for the applier to judge it
    /// again (etcd's RequestHeader username and auth_revision).
    pub fn stamp(&self) -> AuthStamp {
        let (username, revision) = self.who();
        AuthStamp {
            username: username.to_string(),
            revision,
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

impl Judge for Caller {
    type Error = EtcdError;

    fn enabled(&self) -> bool {
        Caller::enabled(self)
    }

    fn check_range(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), EtcdError> {
        Caller::check_range(self, key, range_end, access)
    }

    fn check_admin(&self) -> Result<(), EtcdError> {
        Caller::check_admin(self)
    }

    fn lease_keys(&self, lease: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        Ok(self
            .store
            .lease(lease)
            .map(|l| l.keys.into_iter().collect())
            .unwrap_or_default())
    }
}
