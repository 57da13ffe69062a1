//! The etcd v3 gRPC API, one file per etcd service.
//!
//! Every handler follows the same path: validate at the edge (`validate`),
//! then either read from the shared MVCC store (after a read barrier unless
//! the request is serializable) or propose through raft and wait for the
//! applied result; finally fill the response header. Errors become
//! `tonic::Status` only through `From<EtcdError>` (see `error`).
//!
//! Watch ([`watch`]) is a stream served by the WatchBroadcaster actor.
//! Lock and Election are the exception, as in etcd: they are clients of
//! this member's own API ([`LocalClient`]) running the concurrency recipes
//! in `recipes`, not handlers over the store.
//!
//! Services not built yet (Auth) are not registered, so tonic answers
//! their RPCs with UNIMPLEMENTED.
//!
//! Every accepted connection is decrypted by the TLS acceptor on `https://`
//! listeners (`crate::tls`), then reads through [`authority::FixAuthority`],
//! which repairs the `:authority` etcdctl sends for `endpoint status` and
//! `endpoint hashkv` (a whole URL, which h2 would refuse).

pub mod auth;
pub mod authority;
pub mod budget;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod range;
pub mod too_large;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Status;

use crate::apply::ApplyResponse;
use crate::cluster::ClusterInfo;
use crate::error::EtcdError;
use crate::msg::{RaftClient, RaftStatus};
use crate::mvcc::Store;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::{self as pb, ResponseHeader};

/// The etcd release whose client API cairn serves. Clients gate features on
/// Status.version (kube-apiserver enables watch progress requests only from
/// 3.4.31), so this names what cairn really implements, not cairn's own
/// version (which goes to logs).
pub const ETCD_API_VERSION: &str = "3.4.23";

/// gRPC's own framing allowance on top of --max-request-bytes, as etcd.
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service handler needs; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    pub raft: RaftClient,
    pub status: Arc<RaftStatus>,
    pub cluster: Arc<ClusterInfo>,
    pub max_txn_ops: usize,
    /// Lease expiry: keep-alives and time-to-live go here (or to the
    /// leader's, from a follower), not to the log.
    pub leases: crate::msg::Leases,
    /// --heartbeat-interval: how often MoveLeader looks for the new leader.
    pub tick: std::time::Duration,
    /// Storage, which takes the head of a snapshot between two batches.
    pub storage: actix::Recipient<crate::msg::CaptureImage>,
    /// The WatchBroadcaster actor, which every Watch stream talks to.
    pub watch: actix::Addr<crate::watch::WatchBroadcaster>,
    /// Which members this member's peer links reach (etcd's strict
    /// reconfiguration check).
    pub peers: crate::peer::Directory,
    /// Token resolution and permission checks (src/auth/).
    pub auth: crate::auth::Auth,
    /// `--bcrypt-cost`, for the Auth service's password hashes.
    pub bcrypt_cost: u32,
    /// `--quota-backend-bytes`, checked before a write is proposed
    /// (`crate::quota`).
    pub quota_bytes: u64,
    /// `--max-range-bytes-in-flight`: Range responses' memory (`budget`).
    pub range_budget: Arc<budget::RangeBudget>,
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

    /// etcd's rule for learners: they serve serializable reads and member
    /// and status RPCs only.
    pub fn refuse_on_learner(&self) -> Result<(), Status> {
        if self.store.is_learner(self.cluster.local_id) {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        Ok(())
    }

    /// Proposes a write and returns its typed response. A write that would
    /// take this member's state store over the quota is not proposed: the
    /// NOSPACE alarm is, as etcd does (`crate::quota`).
    pub async fn propose<R: Proposal>(&self, req: R) -> Result<R::Response, Status> {
        self.refuse_on_learner()?;
        let request = req.into_request();
        self.within_quota(&request).await?;
        let applied = self.raft.propose(request).await?;
        R::response(applied)
            .ok_or_else(|| Status::internal("apply returned a response of another kind"))
    }

    /// Proposes a client's write as `creds` (etcd's `raftRequest`) and
    /// returns its typed response: see [`Api::propose_request_as`].
    pub async fn propose_as<R: Proposal>(
        &self,
        creds: &crate::auth::Credentials,
        req: R,
    ) -> Result<R::Response, Status> {
        self.refuse_on_learner()?;
        let applied = self.propose_request_as(creds, req.into_request()).await?;
        R::response(applied)
            .ok_or_else(|| Status::internal("apply returned a response of another kind"))
    }

    /// Judges `request` as `creds` now (`auth::check::request`), proposes
    /// it stamped with who was judged at which auth revision, and lets the
    /// applier judge it again against the auth store of the moment of
    /// apply. If the auth store moved in between, the applier answers
    /// `revision of auth store is old` and, as etcd does, the request is
    /// judged anew and proposed again (so a permission revoked meanwhile
    /// ends in `permission denied`, never in the write).
    pub async fn propose_request_as(
        &self,
        creds: &crate::auth::Credentials,
        mut request: Request,
    ) -> Result<ApplyResponse, Status> {
        /// etcd retries without a bound; a member whose auth store changes
        /// this often answers the client instead.
        const MAX_STALE_RETRIES: usize = 8;
        self.within_quota(&request).await?;
        let mut attempt = 0;
        loop {
            let caller = self.auth.caller(creds)?;
            crate::auth::check::request(&caller, &request)?;
            // Only a request judged with auth enabled can be refused as
            // stale; no copy is kept otherwise.
            let again = (caller.enabled() && attempt < MAX_STALE_RETRIES).then(|| request.clone());
            let stamp = Some(caller.stamp());
            if caller.enabled() && matches!(request, Request::Put(_)) {
                crate::failpoint::auth_hold().await;
            }
            match (self.raft.propose_stamped(request, stamp).await, again) {
                (Err(EtcdError::AuthOldRevision), Some(copy)) => {
                    attempt += 1;
                    request = copy;
                }
                (applied, _) => return applied.map_err(Status::from),
            }
        }
    }
}

impl Api {
    /// A write that would take this member's state store over the quota is
    /// refused, and the NOSPACE alarm proposed instead (`crate::quota`).
    async fn within_quota(&self, request: &Request) -> Result<(), Status> {
        if crate::quota::exceeded(self.quota_bytes, &self.store, crate::quota::cost(request)) {
            self.raise_nospace().await;
            return Err(EtcdError::NoSpace.into());
        }
        Ok(())
    }

    /// Proposes this member's NOSPACE alarm, unless it is already raised.
    /// A failure is only logged: the write is refused either way.
    async fn raise_nospace(&self) {
        let (me, nospace) = (self.cluster.local_id, pb::AlarmType::Nospace as i32);
        if self
            .store
            .alarms()
            .iter()
            .any(|a| a.member_id == me && a.alarm == nospace)
        {
            return;
        }
        let alarm = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: me,
            alarm: nospace,
        };
        match self.raft.propose(Request::Alarm(alarm)).await {
            Ok(_) => tracing::warn!(
                quota_bytes = self.quota_bytes,
                size = self.store.backend().size_on_disk().unwrap_or(0),
                "message exceeded backend quota; raised the NOSPACE alarm"
            ),
            Err(e) => tracing::warn!(cause = %e, "cannot raise the NOSPACE alarm"),
        }
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

/// A client of this member's own etcd API, for the services etcd builds on
/// that API rather than on the server's internals (Lock, Election).
///
/// etcd hands those services an in-process client; cairn's equivalent is a
/// gRPC channel to its own first client listen address (an unspecified
/// address such as 0.0.0.0 replaced by loopback). The channel connects
/// lazily, on the first Lock or Election request, since it is made before
/// the listener is up; its requests take the ordinary KV, Lease and Watch
/// paths, with their validation and errors.
#[derive(Clone)]
pub struct LocalClient {
    pub client: crate::recipes::Client,
    /// Turns true when the member begins to shut down: requests that may
    /// wait forever (a contended Lock, a Campaign, an Observe stream) end
    /// then, or the drain would wait for them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl LocalClient {
    /// A lazily connecting client of the member serving on `addr`, over TLS
    /// through `tls` when that listener is `https://`. Must be called inside
    /// a tokio runtime (the channel's worker is spawned on it).
    pub fn new(
        addr: SocketAddr,
        tls: Option<crate::tls::client::Connector>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> LocalClient {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .expect("a socket address makes a valid URI")
            .tcp_nodelay(true);
        let channel: Channel = match tls {
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
            None => endpoint.connect_lazy(),
        };
        LocalClient {
            client: crate::recipes::Client::new(channel),
            stopping,
        }
    }

    /// Resolves once the member is shutting down.
    pub async fn stopped(mut self) {
        // An error means the sender is gone: the member is stopping too.
        let _ = self.stopping.wait_for(|s| *s).await;
    }

    /// Runs `work` unless the member begins to shut down first, in which
    /// case it is dropped (a waiting lock or campaign withdraws its key) and
    /// the caller gets `etcdserver: server stopped`.
    pub async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, crate::recipes::Error>>,
    ) -> Result<T, Status> {
        tokio::select! {
            result = work => result.map_err(Status::from),
            _ = self.clone().stopped() => Err(EtcdError::Stopped.into()),
        }
    }
}

fn unimplemented(what: &'static str) -> Status {
    EtcdError::Unimplemented(what).into()
}

/// Why the client API stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the client API on `addr` until `shutdown` resolves, then drains
/// in-flight requests and returns. `local` is what the Lock and Election
/// services use to reach this member's API; `tls` terminates TLS for an
/// `https://` listener; `admin` serves the HTTP/1.x connections.
pub async fn serve(
    api: Api,
    local: LocalClient,
    addr: SocketAddr,
    tls: Option<crate::tls::server::Acceptor>,
    max_request_bytes: usize,
    admin: Arc<crate::http::Admin>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use crate::proto::etcdserverpb::auth_server::AuthServer;
    use crate::proto::etcdserverpb::cluster_server::ClusterServer;
    use crate::proto::etcdserverpb::lease_server::LeaseServer;
    use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
    use crate::proto::kv_wire::k_v_server::KVServer;
    use crate::proto::v3electionpb::election_server::ElectionServer;
    use crate::proto::v3lockpb::lock_server::LockServer;
    use crate::proto::watch_wire::watch_server::WatchServer;
    use futures::StreamExt;

    let max_decode = max_request_bytes + GRPC_OVERHEAD_BYTES;
    // Watch streams never finish on their own, and a graceful shutdown
    // waits for every stream: end them first, then drain the rest.
    let (streams_stop, streams_stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = streams_stop.send(true);
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(track_health(
        health,
        api.status.clone(),
        streams_stopped.clone(),
    ));

    // etcd's interceptor: a request carrying `hasleader: true` fails fast
    // on a member that knows no leader (clientv3 WithRequireLeader).
    let leader = RequireLeader(api.status.clone());
    // Each connection is decrypted first (https listeners, see `tls`), then
    // sniffed: HTTP/1.x goes to the HTTP admin server (crate::http), HTTP/2
    // reads through the :authority repair (see `authority`).
    let tcp = TcpIncoming::bind(addr)
        .map_err(ServeError::Bind)?
        .with_nodelay(Some(true));
    // grpc_server_started/handled_total for /metrics (crate::http).
    let grpc_metrics = admin.grpc_metrics();
    let incoming = crate::http::route(crate::tls::server::incoming(tcp, tls), admin)
        .map(|accepted| accepted.map(authority::FixAuthority::new));

    Server::builder()
        .layer(grpc_metrics)
        // grpc-go's status for a request over the size limit (`too_large`).
        .layer(too_large::TooLargeLayer)
        // Range responses keep their share of the budget until sent.
        .layer(budget::HoldBudgetLayer)
        .add_service(health_service)
        .add_service(InterceptedService::new(
            KVServer::new(kv::KvService::new(api.clone())).max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            LeaseServer::new(lease::LeaseService::new(api.clone()))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            MaintenanceServer::new(maintenance::MaintenanceService::new(api.clone()))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            WatchServer::new(watch::WatchService::new(
                api.clone(),
                api.watch.clone(),
                max_request_bytes,
                streams_stopped,
            ))
            .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            AuthServer::new(auth::AuthService::new(api.clone(), api.bcrypt_cost))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(cluster::ClusterService::new(api))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            LockServer::new(lock::LockService::new(local.clone()))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .add_service(InterceptedService::new(
            ElectionServer::new(election::ElectionService::new(local))
                .max_decoding_message_size(max_decode),
            leader.clone(),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// How often health follows the member's state.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Keeps grpc.health.v1 true to the member: SERVING only while it knows a
/// leader (it can then serve linearizable requests), NOT_SERVING without
/// one and from the start of a shutdown. A member whose core failed has
/// already stopped (crate::supervise).
async fn track_health(
    health: tonic_health::server::HealthReporter,
    status: Arc<RaftStatus>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut last = None;
    loop {
        let stopped = *stopping.borrow();
        let now = if status.leader_id() != 0 && !stopped {
            Serving
        } else {
            NotServing
        };
        if last != Some(now) {
            health.set_service_status("", now).await;
            last = Some(now);
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_POLL) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// etcd's `hasleader` check: a request with the metadata `hasleader: true`
/// is refused with `etcdserver: no leader` while this member knows none,
/// instead of waiting for the request timeout.
#[derive(Clone)]
struct RequireLeader(Arc<RaftStatus>);

impl tonic::service::Interceptor for RequireLeader {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let wants_leader = req
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if wants_leader && self.0.leader_id() == 0 {
            return Err(EtcdError::NoLeader.into());
        }
        Ok(req)
    }
}
