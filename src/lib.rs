//! cairn: a distributed, strongly consistent key-value store that speaks the
//! etcd v3 API, so etcdctl and etcd's client libraries work against it unchanged.
//!
//! A tour of the crate, in the order a write travels:
//!
//! * [`grpc`]: the tonic services (KV, Maintenance, Cluster, ...). A request is
//!   checked by [`validate`] at the edge, before anything reaches consensus.
//! * [`http`]: HTTP/1.x on the same client URLs (the first bytes of a
//!   connection decide): etcd's JSON gateway, which calls the same [`grpc`]
//!   services, `/health`, `/metrics` and a Server-Sent Events watch, on
//!   actix-web.
//! * [`raft`]: the **RaftNode** actor wraps a raft-rs `RawNode`. It batches
//!   proposals into one Ready, persists the log in raft-engine with one sync
//!   per Ready, and hands committed entries to Storage.
//! * [`storage`]: the **Storage** actor applies committed entries in log order
//!   to the [`mvcc`] store (on sled), exactly once across restarts, and answers
//!   the proposer.
//! * [`peer`]: **PeerLink** actors carry raft messages to the other members
//!   (one supervised link each) and the peer service takes theirs.
//! * [`lease`]: the **LeaseKeeper** actor owns lease expiry; it learns grants
//!   and revokes from Storage and, on the leader, proposes a LeaseRevoke when a
//!   lease expires. Keep-alives are answered by it without touching the log.
//! * [`watch`]: the **WatchBroadcaster** actor hears of every applied batch
//!   from Storage and feeds each gRPC Watch stream, catching slow watchers up
//!   from MVCC history without ever holding up a write.
//! * [`recipes`]: etcd's concurrency recipes (session, mutex, election) as a
//!   client of the etcd API. The Lock and Election services run them against
//!   this member's own client address, as etcd's do with an in-process client.
//! * Reads bypass both actors: a Range is served from the shared [`mvcc`] store
//!   once the applied index has caught up with the commit index.
//!
//! [`tls`] terminates TLS on client and peer connections and dials peers
//! over it (rustls; certificates re-read when their files change).
//! [`config`] holds the etcd-compatible flags, [`cluster`] the member and
//! cluster identities, [`error`] the one table of etcd's error codes and strings.
//! [`corrupt`] compares members' HashKV at start-up and on the leader
//! (etcd's corruption checks).

pub mod apply;
pub mod auth;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod corrupt;
pub mod error;
pub mod failpoint;
pub mod grpc;
pub mod http;
pub mod io_metrics;
pub mod lease;
pub mod logging;
pub mod msg;
pub mod mvcc;
pub mod peer;
pub mod proto;
pub mod quota;
pub mod raft;
pub mod recipes;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod supervise;
pub mod tls;
pub mod validate;
pub mod watch;
