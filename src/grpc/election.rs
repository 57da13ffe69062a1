//! etcd's Election service (v3electionpb): Campaign, Proclaim, Leader,
//! Observe, Resign.
//!
//! Built as etcd builds it (`etcdserver/api/v3election`): a client of this
//! member's own etcd API ([`super::LocalClient`]) running the election recipe
//! (`recipes::election`). Campaign blocks until the caller is leader and
//! returns the [`LeaderKey`] (name, key, create revision, lease) that
//! Proclaim and Resign must present; a leadership ends with Resign or with
//! its lease. As in etcd, Campaign, Proclaim and Resign open a session on
//! the request's lease, which grants a fresh 60 s lease when it is 0 (so a
//! Proclaim with lease 0 attaches the leader key to a new lease).
//!
//! Errors are etcd's: `election: not leader` (Proclaim on a stale or foreign
//! key), `election: no leader` (Leader with no candidate), `"leader" field
//! must be provided`; all three with code Unknown, as etcd sends them.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::LocalClient;
use crate::error::EtcdError;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::*;
use crate::recipes::{election, Session};

pub struct ElectionService {
    local: LocalClient,
}

impl ElectionService {
    pub fn new(local: LocalClient) -> ElectionService {
        ElectionService { local }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let elected = self
            .local
            .until_stopped(async {
                let session = Session::new(client, req.lease).await?;
                election::campaign(&session, &req.name, &req.value).await
            })
            .await?;
        Ok(Response::new(CampaignResponse {
            header: Some(elected.header),
            leader: Some(elected.leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let leader = req.leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = self
            .local
            .until_stopped(async {
                let session = Session::new(client, leader.lease).await?;
                election::proclaim(&session, &leader, &req.value).await
            })
            .await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let client = &client;
        let resp = self
            .local
            .until_stopped(election::leader(client, &req.name))
            .await?;
        Ok(Response::new(resp))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let leaders = election::observe(client, &req.name);
        // The stream ends when the observer fails (as etcd's does) or when
        // the member shuts down, so it never holds up the drain.
        let stream = ReceiverStream::new(leaders)
            .map(Ok)
            .take_until(self.local.clone().stopped());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let leader = req.leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = self
            .local
            .until_stopped(async {
                let session = Session::new(client, leader.lease).await?;
                election::resign(session.client(), &leader).await
            })
            .await?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}
