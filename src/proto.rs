//! The etcd v3 wire API, generated from `proto/` at build time.
//!
//! Module names follow etcd's protobuf packages so a reader who knows etcd
//! finds `etcdserverpb::RangeRequest` where they expect it.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}

/// The server side of etcd's Watch service, declared in `build.rs` rather
/// than generated from `rpc.proto`, so that it streams
/// [`crate::grpc::watch::WatchReply`]: WatchResponse's bytes, built from
/// events encoded once per batch. Clients use `etcdserverpb::watch_client`.
pub mod watch_wire {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}

/// The server side of etcd's KV service, declared in `build.rs` so that
/// Range answers with [`crate::grpc::range::RangeReply`] (records dropped
/// as they are encoded, under the member's range budget). Clients, the
/// HTTP gateway and the health check use `etcdserverpb::kv_*`.
pub mod kv_wire {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.KV.rs"));
}
