//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases.
//!
//! Write path: Grant and Revoke are proposed through raft like KV writes
//! (a grant without an id gets one here, from the proposal id generator, so
//! applying it is deterministic). Keep-alive and time-to-live are answered by
//! the LeaseKeeper actor on the leader, without a log entry: expiry is local
//! time, as in etcd. While this member is leader but not yet the primary
//! lessor (just elected, or just restarted) those two wait for it, as etcd's
//! forwarding to the leader does, up to the request timeout.
//!
//! Answers follow etcd's `v3rpc/lease.go`: an unknown or expired lease gets
//! TTL 0 in a keep-alive response (the stream goes on) and TTL -1 from
//! LeaseTimeToLive (no error).

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::error::EtcdError;
use crate::lease::keeper::{ListLeases, Renew, TimeToLive};
use crate::lease::lessor::{LeaseTtl, NotAnswered};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;

/// Pause between asks while this member is not yet the primary lessor.
const PRIMARY_POLL: Duration = Duration::from_millis(50);

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

/// Asks the LeaseKeeper until it answers as primary lessor or the request
/// timeout passes. `Ok(None)`: the lease does not exist (or has expired).
async fn ask_primary<T, F, Fut>(api: &Api, mut ask: F) -> Result<Option<T>, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, NotAnswered>, actix::MailboxError>>,
{
    let deadline = Instant::now() + api.raft.timeout();
    loop {
        match ask().await {
            Ok(Ok(v)) => return Ok(Some(v)),
            Ok(Err(NotAnswered::NotFound)) => return Ok(None),
            Ok(Err(NotAnswered::NotPrimary)) if Instant::now() < deadline => {
                tokio::time::sleep(PRIMARY_POLL).await;
            }
            Ok(Err(NotAnswered::NotPrimary)) => return Err(EtcdError::Timeout),
            Err(_) => return Err(EtcdError::Stopped),
        }
    }
}

/// One keep-alive: the response header is taken before the renew, as etcd
/// does, so a client never sees a keep-alive "after" the lease's revoke.
async fn keep_alive_once(api: &Api, id: i64) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let header = api.header(0);
    let ttl = ask_primary(api, || api.leases.send(Renew { id })).await?;
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
        let mut resp = self.api.propose(req.into_inner()).await?;
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
        let ttl = ask_primary(&self.api, || self.api.leases.send(TimeToLive { id })).await?;
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
        let ids = self
            .api
            .leases
            .send(ListLeases)
            .await
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.api.header(0)),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
