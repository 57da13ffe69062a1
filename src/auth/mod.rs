//! Authentication and role-based access control (etcd's `auth` package).
//!
//! Two halves, as in etcd:
//!
//! * the **auth store** ([`state`]): users, roles, permissions, the enabled
//!   flag and the auth revision. Replicated: every change is an
//!   `InternalRequest` through raft, applied by Storage into the state store
//!   (its own key prefixes, same atomic batch as the applied index) and
//!   published on the [`crate::mvcc::Store`] for readers.
//! * the **AuthManager** actor ([`manager`]): owns the tokens (simple tokens
//!   with a TTL), checks passwords (bcrypt, off the actor thread) and hands
//!   out tokens; the gRPC layer resolves a request's [`Credentials`] (its
//!   `token` metadata, or its verified client certificate's Common Name)
//!   and checks its permissions through [`Auth`] without a raft round trip.
//! * the checks themselves ([`check`]), written once over a
//!   [`check::Judge`]: the gRPC layer judges a request before proposing it,
//!   and the applier (`apply::auth`) judges a write again, as stamped, when
//!   it is applied.
//!
//! ```text
//! Authenticate ─▶ AuthService ─(read barrier)─▶ AuthManager::Authenticate ─▶ bcrypt (blocking thread)
//!                                                   └─ token → Tokens (shared, read by gRPC threads)
//! KV/Watch/Lease/… ─▶ Credentials::of(request) ─▶ Auth::caller ─▶ Tokens or CN ─▶ check::* ─▶ AuthState
//! writes ─▶ Api::propose_as ─▶ RaftClient::propose_stamped(AuthStamp) ─▶ … ─▶ apply::auth ─▶ check::*
//! UserAdd/RoleGrant… ─▶ AuthService ─▶ (the same, stamped) ─▶ … ─▶ Storage ─▶ AuthState::apply
//! ```

pub mod check;
pub mod jwt;
pub mod manager;
pub mod state;

pub use manager::{Auth, AuthManager, Caller, Credentials, TokenConfig};
pub use state::{Access, AuthState};
