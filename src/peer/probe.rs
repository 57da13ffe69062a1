//! The peer prober: how `etcd_network_peer_round_trip_time_seconds{To}` is
//! measured. Every [`PROBE_INTERVAL`] each member times one `Peer/Probe`
//! call (an empty request, an empty answer) to every other member, over a
//! connection of its own kept open between probes, and observes the time
//! from sending to the answer. That is etcd's mechanism too: rafthttp's
//! prober GETs the peer's `/raft/probing` every 4 s on its own connection.
//! What it measures is the network and both members' gRPC stacks, not
//! raft: a member whose raft thread is busy still answers probes at once.
//!
//! A probe that fails or takes over [`PROBE_TIMEOUT`] is not observed (etcd
//! observes only answers too); the connection is dropped and the next probe
//! dials again (the member's next peer URL). One prober per link, started
//! beside it; it stops when the member leaves the cluster or its URLs
//! change (a new link, with its own prober, then takes over).

use std::time::{Duration, Instant};

use super::link::{peer_endpoint, Target};
use super::Directory;
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::ProbeRequest;

/// etcd's `proberInterval` (its connection read timeout less a second).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// etcd's `ConnReadTimeout`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes `target.to` until it leaves `directory` or its URLs change.
pub async fn prober(target: Target, directory: Directory) {
    let to = format!("{:x}", target.to);
    let mut client = None;
    let mut attempt = 0usize;
    loop {
        if client.is_none() {
            let url = &target.urls[attempt % target.urls.len()];
            client = connect(&target, url).await;
            if client.is_none() {
                attempt = attempt.wrapping_add(1);
            }
        }
        if let Some(c) = client.as_mut() {
            let started = Instant::now();
            let probe = c.probe(ProbeRequest {
                cluster_id: target.cluster_id,
            });
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(_)) => crate::io_metrics::PEER_RTT
                    .with_label_values(&[&to])
                    .observe(started.elapsed().as_secs_f64()),
                outcome => {
                    tracing::debug!(remote_peer_id = %to, ?outcome, "peer probe failed");
                    client = None;
                    attempt = attempt.wrapping_add(1);
                }
            }
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
        if directory.urls(target.to).as_ref() != Some(&target.urls) {
            return;
        }
    }
}

async fn connect(target: &Target, url: &str) -> Option<PeerClient<tonic::transport::Channel>> {
    let endpoint = peer_endpoint(url, PROBE_TIMEOUT).ok()?;
    match endpoint
        .connect_with_connector(target.connector.clone())
        .await
    {
        Ok(channel) => Some(PeerClient::new(channel)),
        Err(e) => {
            tracing::debug!(remote_peer_id = %format!("{:x}", target.to), %url, cause = ?e, "peer prober cannot connect");
            None
        }
    }
}
