//! Leases (etcd's `lease` package), split the way etcd's lessor is:
//!
//! * [`table`]: the replicated state, a [`table::LeaseTable`] of lease id →
//!   granted TTL and attached keys. It lives in the MVCC store, changes only
//!   when entries are applied, and is written in the same atomic batch as the
//!   keys and the applied index (backend keys `l/<id>`).
//! * [`lessor`]: the local state, expiry times and whether this member is
//!   the primary (the leader, once it applied its term's first entry). Plain
//!   code driven with explicit instants.
//! * [`keeper`]: the **LeaseKeeper** actor around the lessor. Learns grants
//!   and revokes from Storage, leadership from RaftStatus, answers
//!   keep-alives without the log, and proposes a LeaseRevoke for each lease
//!   that expires.
//!
//! ```text
//!  grant/revoke:  gRPC ─▶ RaftClient::propose ─▶ RaftNode ─▶ Storage ─▶ apply (LeaseTable, keys deleted)
//!                                                              └─ AppliedLeases ─▶ LeaseKeeper (expiry)
//!  keep-alive:    gRPC ─▶ LeaseKeeper::Renew (leader only, no log write)
//!  expiry:        LeaseKeeper tick ─▶ RaftClient::propose(LeaseRevoke) ─▶ … same path as revoke
//! ```

pub mod keeper;
pub mod lessor;
pub mod table;
