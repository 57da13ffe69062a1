//! A follower's side of lease forwarding: keep-alives and time-to-live
//! requests go to the leader's peer service (`Peer/LeaseRenew`,
//! `Peer/LeaseTimeToLive`), over a channel per member made on first use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::ClusterInfo;
use crate::error::EtcdError;
use crate::msg::{ForwardToLeader, LeaseTtl};
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::LeaseForward;

/// How long one forwarded request may take (the caller retries within its
/// request timeout).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

pub struct LeaseForwarder {
    cluster: Arc<ClusterInfo>,
    /// Where each member is (follows membership changes).
    directory: super::Directory,
    /// A lazily connected channel per member and URL.
    channels: Mutex<HashMap<(u64, String), Channel>>,
    /// How to dial peer URLs (TLS for `https://` ones).
    connector: crate::tls::client::Connector,
}

impl LeaseForwarder {
    pub fn new(
        cluster: Arc<ClusterInfo>,
        directory: super::Directory,
        connector: crate::tls::client::Connector,
    ) -> LeaseForwarder {
        LeaseForwarder {
            cluster,
            directory,
            channels: Mutex::new(HashMap::new()),
            connector,
        }
    }

    fn client(&self, member: u64) -> Result<PeerClient<Channel>, EtcdError> {
        let url = self
            .directory
            .urls(member)
            .and_then(|urls| urls.first().cloned())
            .ok_or(EtcdError::NoLeader)?;
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(&(member, url.clone())) {
            return Ok(PeerClient::new(c.clone()));
        }
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|_| EtcdError::NoLeader)?
            .connect_timeout(FORWARD_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            .connect_with_connector_lazy(self.connector.clone());
        channels.insert((member, url), channel.clone());
        Ok(PeerClient::new(channel))
    }

    fn request(&self, id: i64) -> LeaseForward {
        LeaseForward {
            cluster_id: self.cluster.cluster_id,
            id,
        }
    }
}

/// The leader's answer, or etcd's error for a forward that failed.
fn forwarded(status: tonic::Status) -> EtcdError {
    tracing::debug!(cause = %status, "lease request forwarded to the leader failed");
    EtcdError::Timeout
}

impl ForwardToLeader for LeaseForwarder {
    fn learner_ready(
        &self,
        leader: u64,
        id: u64,
    ) -> BoxFuture<'static, Result<Option<bool>, EtcdError>> {
        let (client, mut req) = (self.client(leader), self.request(0));
        req.id = id as i64;
        Box::pin(async move {
            let answer = client?
                .learner_ready(req)
                .await
                .map_err(forwarded)?
                .into_inner();
            Ok(answer.known.then_some(answer.ready))
        })
    }

    fn renew(&self, leader: u64, id: i64) -> BoxFuture<'static, Result<Option<i64>, EtcdError>> {
        let (client, req) = (self.client(leader), self.request(id));
        Box::pin(async move {
            let answer = client?
                .lease_renew(req)
                .await
                .map_err(forwarded)?
                .into_inner();
            Ok(answer.found.then_some(answer.ttl))
        })
    }

    fn time_to_live(
        &self,
        leader: u64,
        id: i64,
    ) -> BoxFuture<'static, Result<Option<LeaseTtl>, EtcdError>> {
        let (client, req) = (self.client(leader), self.request(id));
        Box::pin(async move {
            let answer = client?
                .lease_time_to_live(req)
                .await
                .map_err(forwarded)?
                .into_inner();
            Ok(answer.found.then_some(LeaseTtl {
                granted: answer.granted_ttl,
                remaining: answer.ttl,
            }))
        })
    }
}
