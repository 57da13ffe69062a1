//! Member-to-member traffic: the PeerLink actors that carry this member's
//! raft messages to the others, and the peer gRPC service that takes theirs.
//!
//! ```text
//!                 this member                                      remote member
//!  RaftNode ── PeerTransport (try_send by `to`) ──▶ PeerLink ── cairnpb.Peer/Raft stream ──▶ PeerService
//!     ▲          full queue ⇒ report_unreachable     (one per remote member,                    │ check cluster id,
//!     │                                               supervised sender task)                    │ sender, addressee
//!     └──────────── Step (try_send; dropped when RaftNode's mailbox is full) ◀── PeerService ◀───┘ (theirs, to us)
//! ```
//!
//! [`Peers::bind`] binds `--listen-peer-urls` and makes one bounded queue
//! per remote member before anything starts (a port in use fails start-up
//! at once); [`Peers::transport`] hands RaftNode the sending ends;
//! [`Peers::start`] then starts, on one `peer` arbiter, the peer service and
//! one [`link::PeerLink`] per remote member (given RaftNode's inboxes: links
//! report unreachable members, the service steps messages in, and answers
//! lease requests followers forward to this member when it leads, see
//! [`forward`]).
//!
//! `https://` peer URLs: [`Peers::secure`] hands over a [`crate::tls::PeerTls`]
//! before `start`; the listeners accept through its acceptor (the same code
//! as the client listeners) and every link and the lease forwarder dial
//! through its connector.
//!
//! Failure semantics: a link that errors or panics restarts by itself with
//! a jittered backoff, without disturbing raft or other links; messages lost
//! meanwhile are raft's to resend. Only the peer server failing stops the
//! member (it could no longer hear the others).

pub mod failpoint;
pub mod forward;
pub mod link;
pub mod service;
pub mod transport;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use anyhow::Context as _;
use tokio::sync::{mpsc, Mutex};

use crate::cluster::ClusterInfo;
use crate::msg::{ReportUnreachable, Step};
use crate::proto::cairnpb::peer_server::PeerServer;
use crate::raft::transport::{NoPeers, Transport};
use link::{PeerLink, Queue, Target, MAX_BATCH_BYTES, QUEUE_CAPACITY};
use service::PeerService;
use transport::PeerTransport;

/// The peer side of a member, between binding and starting.
pub struct Peers {
    cluster: Arc<ClusterInfo>,
    /// Bound `--listen-peer-urls` sockets, each with whether its URL is
    /// `https://`.
    listeners: Vec<(std::net::TcpListener, bool)>,
    /// Sending ends, until RaftNode takes them.
    senders: HashMap<u64, mpsc::Sender<raft::eraftpb::Message>>,
    /// Receiving ends, one per remote member, until the links take them.
    queues: HashMap<u64, Queue>,
    /// TLS for `https://` peer URLs (plain TCP by default): the listeners'
    /// acceptor and the links' connector, see [`Peers::secure`].
    tls: crate::tls::PeerTls,
}

impl Peers {
    /// Binds every `--listen-peer-urls` address and makes the link queues.
    pub fn bind(listen: &[url::Url], cluster: Arc<ClusterInfo>) -> anyhow::Result<Peers> {
        let mut listeners = Vec::new();
        for url in listen {
            let host = url.host_str().context("peer URL has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = url
                .port_or_known_default()
                .context("peer URL has no port")?;
            let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .with_context(|| format!("resolving {url}"))?;
            for addr in addrs {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen for peers on {addr}"))?;
                l.set_nonblocking(true)?;
                listeners.push((l, url.scheme() == "https"));
            }
        }
        let mut senders = HashMap::new();
        let mut queues = HashMap::new();
        for m in cluster.remote_members() {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            senders.insert(m.id, tx);
            queues.insert(m.id, Arc::new(Mutex::new(rx)));
        }
        Ok(Peers {
            cluster,
            listeners,
            senders,
            queues,
            tls: crate::tls::PeerTls::default(),
        })
    }

    /// Serves and dials peers with `tls` (before [`Peers::start`]).
    pub fn secure(&mut self, tls: crate::tls::PeerTls) {
        self.tls = tls;
    }

    /// RaftNode's transport: the link queues, or [`NoPeers`] when alone.
    pub fn transport(&mut self) -> Box<dyn Transport> {
        if self.senders.is_empty() {
            return Box::new(NoPeers);
        }
        Box::new(PeerTransport {
            queues: std::mem::take(&mut self.senders),
        })
    }

    /// Serves the peer service and starts the links, on a `peer` arbiter.
    /// How a follower forwards lease requests to the leader; None when
    /// this member is alone.
    pub fn lease_forwarder(&self) -> Option<Arc<dyn crate::msg::ForwardToLeader>> {
        if self.queues.is_empty() {
            return None;
        }
        Some(Arc::new(forward::LeaseForwarder::new(
            self.cluster.clone(),
            self.tls.connector.clone(),
        )))
    }

    /// `step` and `unreachable` are RaftNode's inboxes; `leases` answers
    /// lease requests forwarded by followers.
    pub fn start(
        self,
        step: Recipient<Step>,
        unreachable: Recipient<ReportUnreachable>,
        leases: crate::msg::Leases,
    ) {
        let arbiter = Arbiter::new();
        let cluster = self.cluster;
        let deliver: service::Deliver = Arc::new(move |m| step.try_send(Step(m)).is_ok());
        let members: HashSet<u64> = cluster.members.iter().map(|m| m.id).collect();
        for (listener, https) in self.listeners {
            let svc = PeerService {
                cluster_id: cluster.cluster_id,
                local_id: cluster.local_id,
                members: members.clone(),
                deliver: deliver.clone(),
                leases: Some(leases.clone()),
            };
            let acceptor = self.tls.acceptor.clone().filter(|_| https);
            arbiter.spawn(async move {
                let addr = listener.local_addr().ok();
                let incoming = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => tokio_stream::wrappers::TcpListenerStream::new(l),
                    Err(e) => peer_server_failed(&e),
                };
                let incoming = crate::tls::server::incoming(incoming, acceptor);
                tracing::info!(addr = ?addr, "serving peer requests");
                let served = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(PeerServer::new(svc).max_decoding_message_size(MAX_BATCH_BYTES))
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = served {
                    peer_server_failed(&e);
                }
            });
        }
        for m in cluster.remote_members() {
            let Some(queue) = self.queues.get(&m.id).cloned() else {
                continue;
            };
            let target = Target {
                cluster_id: cluster.cluster_id,
                from: cluster.local_id,
                to: m.id,
                urls: m.peer_urls.clone(),
                connector: self.tls.connector.clone(),
            };
            let report = unreachable.clone();
            PeerLink::start_in_arbiter(&arbiter.handle(), move |_| {
                PeerLink::new(target, queue, report)
            });
        }
    }
}

fn peer_server_failed(e: &dyn std::fmt::Display) -> ! {
    tracing::error!(cause = %e, "fatal: the peer server failed; stopping the member");
    std::process::exit(crate::supervise::FATAL_EXIT_CODE)
}
