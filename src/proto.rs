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
