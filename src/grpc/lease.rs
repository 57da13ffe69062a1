//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases.
//!
//! Write path: Grant and Revoke are proposed through raft like KV writes
//! (a grant without an id gets one here, from the proposal id generator, so
//! applying it is deterministic). Keep-alive and time-to-live are answered by
//! the LeaseKeeper actor on the leader, without a log entry: expiry is local
//! time, as in etcd. A follower forwards them to the leader over the peer
//! protocol (`msg::Leases`); while no member is primary lessor yet (just
//! elected, or just restarted) they wait for one, up to the request timeout.
//!
//! Answers follow etcd's `v3rpc/lease.go`: an unknown or expired lease gets
//! TTL 0 in a keep-alive response (the stream goes on) and TTL -1 from
//! LeaseTimeToLive (no error).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::error::EtcdError;
use crate::msg::LeaseTtl;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;

/// Keep-alive responses buffered per stream before the reader waits.
const KEEPALIVE_BUFFER: usize = 16;

pub struct LeaseService {
    api: Api,
}

impl LeaseService {
    pub fn new(api: Api) -> LeaseService {
        LeaseService { api }
    }
}

/// One keep-alive: the response header is taken before the renew, as etcd
/// does, so a client never sees a keep-alive "after" the lease's revoke.
async fn keep_alive_once(api: &Api, id: i64) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let header = api.header(0);
    let ttl = api.leases.renew(id).await?;
    Ok(LeaseKeepAliveResponse {
        header: Some(header),
        id,
        ttl: ttl.unwrap_or(0),
    })
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = req.into_inner();
        if req.id == 0 {
            req.id = self.api.raft.new_lease_id();
        }
        let mut resp = self.api.propose(req).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // etcd: revoking deletes the attached keys, so it needs write on each.
        let creds = crate::auth::Credentials::of(&req);
        let req = req.into_inner();
        let mut resp = self.api.propose_as(&creds, req).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let api = self.api.clone();
        tokio::spawn(async move {
            // Ends when the client closes its side, the stream breaks, or
            // the client stops reading (send fails).
            while let Some(Ok(req)) = inbound.next().await {
                let resp = keep_alive_once(&api, req.id).await.map_err(Status::from);
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        // etcd waits for the applied index first, so a grant or revoke the
        // client saw is reflected.
        self.api.raft.read_barrier().await?;
        let id = req.id;
        let ttl = self.api.leases.time_to_live(id).await?;
        let keys = match (&ttl, req.keys) {
            (Some(_), true) => self
                .api
                .store
                .lease(id)
                .map(|e| e.keys.into_iter().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let (ttl, granted_ttl) = match ttl {
            Some(LeaseTtl { granted, remaining }) => (remaining, granted),
            None => (-1, 0),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.api.header(0)),
            id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let ids = self.api.leases.list().await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.api.header(0)),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
