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
//!   out tokens; the gRPC layer resolves a request's `token` metadata and
//!   checks its permissions through [`Auth`] without a raft round trip.
//!
//! ```text
//! Authenticate ─▶ AuthService ─(read barrier)─▶ AuthManager::Authenticate ─▶ bcrypt (blocking thread)
//!                                                   └─ token → Tokens (shared, read by gRPC threads)
//! KV/Watch/Lease/… ─▶ Auth::user(metadata) ─▶ Tokens ─▶ AuthState::check_range / check_admin
//! UserAdd/RoleGrant… ─▶ AuthService ─▶ RaftClient::propose ─▶ … ─▶ Storage ─▶ AuthState::apply
//! ```

pub mod check;
pub mod jwt;
pub mod manager;
pub mod state;

pub use manager::{Auth, AuthManager, Caller, Credentials, TokenConfig};
pub use state::{Access, AuthState};
