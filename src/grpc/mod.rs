//! The etcd v3 gRPC API, one file per etcd service.
//!
//! Every handler follows the same path: validate at the edge (`validate`),
//! then either read from the shared MVCC store (after a read barrier unless
//! the request is serializable) or propose through raft and wait for the
//! applied result; finally fill the response header. Errors become
//! `tonic::Status` only through `From<EtcdError>` (see `error`).
//!
//! Services not built yet (Watch, Auth, Lock, Election) are not
//! registered, so tonic answers their RPCs with UNIMPLEMENTED.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::Server;
use tonic::Status;

use crate::apply::ApplyResponse;
use crate::cluster::ClusterInfo;
use crate::error::EtcdError;
use crate::lease::keeper::LeaseKeeper;
use crate::mvcc::Store;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::{self as pb, ResponseHeader};
use crate::raft::client::RaftClient;
use crate::raft::node::RaftStatus;

/// The etcd release whose client API cairn serves. Clients gate features on
/// Status.version (kube-apiserver enables watch progress requests only from
/// 3.4.31), so this names what cairn really implements, not cairn's own
/// version (which goes to logs).
pub const ETCD_API_VERSION: &str = "3.4.23";

/// gRPC's own framing allowance on top of --max-request-bytes, as etcd.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service handler needs; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    pub raft: RaftClient,
    pub status: Arc<RaftStatus>,
    pub cluster: Arc<ClusterInfo>,
    pub max_txn_ops: usize,
    /// Lease expiry: keep-alives and time-to-live go here, not to the log.
    pub leases: actix::Addr<LeaseKeeper>,
}

impl Api {
    /// A header for a response at `revision` (0: the current revision).
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster.cluster_id,
            member_id: self.cluster.local_id,
            revision: if revision == 0 {
                self.store.current_revision()
            } else {
                revision
            },
            raft_term: self.status.term(),
        }
    }

    /// The header etcd puts on Cluster RPCs: no revision (membership is not
    /// part of the MVCC keyspace).
    pub fn membership_header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: 0,
            ..self.header(0)
        }
    }

    /// Completes a header the store or apply layer started (it sets only the
    /// revision).
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map(|h| h.revision).unwrap_or(0);
        *header = Some(self.header(revision));
    }

    /// Proposes a write and returns its typed response.
    pub async fn propose<R: Proposal>(&self, req: R) -> Result<R::Response, Status> {
        let applied = self.raft.propose(req.into_request()).await?;
        R::response(applied)
            .ok_or_else(|| Status::internal("apply returned a response of another kind"))
    }
}

/// Pairs a request that goes through the log with the response it gets.
pub trait Proposal {
    type Response;
    fn into_request(self) -> Request;
    fn response(applied: ApplyResponse) -> Option<Self::Response>;
}

macro_rules! proposal {
    ($req:ty, $variant:ident, $resp:ty) => {
        impl Proposal for $req {
            type Response = $resp;
            fn into_request(self) -> Request {
                Request::$variant(self)
            }
            fn response(applied: ApplyResponse) -> Option<$resp> {
                match applied {
                    ApplyResponse::$variant(r) => Some(r),
                    _ => None,
                }
            }
        }
    };
}
proposal!(pb::PutRequest, Put, pb::PutResponse);
proposal!(pb::DeleteRangeRequest, DeleteRange, pb::DeleteRangeResponse);
proposal!(pb::TxnRequest, Txn, pb::TxnResponse);
proposal!(pb::CompactionRequest, Compaction, pb::CompactionResponse);
proposal!(pb::AlarmRequest, Alarm, pb::AlarmResponse);
proposal!(pb::LeaseGrantRequest, LeaseGrant, pb::LeaseGrantResponse);
proposal!(pb::LeaseRevokeRequest, LeaseRevoke, pb::LeaseRevokeResponse);

fn unimplemented(what: &'static str) -> Status {
    EtcdError::Unimplemented(what).into()
}

/// Serves the client API on `addr` until `shutdown` resolves, then drains
/// in-flight requests and returns.
pub async fn serve(
    api: Api,
    addr: SocketAddr,
    max_request_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    use crate::proto::etcdserverpb::cluster_server::ClusterServer;
    use crate::proto::etcdserverpb::kv_server::KvServer;
    use crate::proto::etcdserverpb::lease_server::LeaseServer;
    use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;

    let max_decode = max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(
            KvServer::new(kv::KvService::new(api.clone())).max_decoding_message_size(max_decode),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(api.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(api.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(api))
                .max_decoding_message_size(max_decode),
        )
        .serve_with_shutdown(addr, shutdown)
        .await
}
