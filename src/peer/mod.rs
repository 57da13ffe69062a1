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
//! [`Peers::start`] then starts, on RaftNode's arbiter (a message in or out
//! then needs no thread hop; nothing here blocks), the peer service and
//! one [`link::PeerLink`] per remote member (given RaftNode's inboxes: links
//! report unreachable members, the service steps messages in, and answers
//! lease requests followers forward to this member when it leads, see
//! [`forward`]), plus one [`probe::prober`] per remote member timing
//! round trips for `etcd_network_peer_round_trip_time_seconds`.
//!
//! Failure semantics: a link that errors or panics restarts by itself with
//! a jittered backoff, without disturbing raft or other links; messages lost
//! meanwhile are raft's to resend. Only the peer server failing stops the
//! member (it could no longer hear the others).

pub mod failpoint;
pub mod forward;
pub mod link;
pub mod probe;
pub mod service;
pub mod snapshot;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use anyhow::Context as _;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::cluster::ClusterInfo;
use crate::msg::{ReportSnapshot, ReportUnreachable, Step};
use crate::proto::cairnpb::peer_server::PeerServer;
use crate::raft::transport::Transport;
use crate::snapshot::SnapDir;
use link::{PeerLink, Target, MAX_BATCH_BYTES};
use service::PeerService;
use transport::{NewLink, PeerTransport};

/// What this member's link to one remote member shares with the rest of
/// the peer side.
#[derive(Default)]
pub struct LinkState {
    /// Since when the link's stream is up (Unix milliseconds, 0 while
    /// down): etcd's "active since", for reconfiguration checks.
    pub since: std::sync::atomic::AtomicU64,
    /// Rung when the remote member opens a stream to this one: it is up,
    /// so a link waiting out its backoff dials it now rather than up to a
    /// second later (a restarted member is sent its snapshot that much
    /// sooner).
    pub heard: tokio::sync::Notify,
}

/// The other members of the configuration and their peer URLs: which
/// members the peer service accepts streams from, and where the lease
/// forwarder finds the leader. Updated by the transport on every
/// membership change.
#[derive(Clone, Default)]
pub struct Directory {
    urls: Arc<RwLock<HashMap<u64, Vec<String>>>>,
    /// Per member: the state of this member's link to it.
    links: Arc<RwLock<HashMap<u64, Arc<LinkState>>>>,
}

impl Directory {
    pub fn contains(&self, id: u64) -> bool {
        self.urls.read().contains_key(&id)
    }

    pub fn urls(&self, id: u64) -> Option<Vec<String>> {
        self.urls.read().get(&id).cloned()
    }

    pub fn snapshot(&self) -> HashMap<u64, Vec<String>> {
        self.urls.read().clone()
    }

    pub fn replace(&self, members: HashMap<u64, Vec<String>>) {
        self.links.write().retain(|id, _| members.contains_key(id));
        *self.urls.write() = members;
    }

    /// The state member `id`'s link keeps up to date.
    pub fn link_state(&self, id: u64) -> Arc<LinkState> {
        self.links.write().entry(id).or_default().clone()
    }

    /// Member `id` opened a stream to this member: wakes this member's link
    /// to it if the link is waiting to retry.
    pub fn heard_from(&self, id: u64) {
        if let Some(state) = self.links.read().get(&id) {
            state.heard.notify_waiters();
        }
    }

    /// Whether this member's link to `id` has been up for at least `for_at_least`.
    pub fn is_connected(&self, id: u64, for_at_least: std::time::Duration) -> bool {
        let since = self
            .links
            .read()
            .get(&id)
            .map_or(0, |c| c.since.load(std::sync::atomic::Ordering::Relaxed));
        since != 0 && link::now_millis().saturating_sub(since) >= for_at_least.as_millis() as u64
    }
}

/// The peer side of a member, between binding and starting.
pub struct Peers {
    cluster: Arc<ClusterInfo>,
    /// Bound `--listen-peer-urls` sockets, each with whether its URL is
    /// `https://`.
    listeners: Vec<(std::net::TcpListener, bool)>,
    /// TLS for `https://` peer URLs (plain TCP by default): the listeners'
    /// acceptor and the links' connector, see [`Peers::secure`].
    tls: crate::tls::PeerTls,
    /// RaftNode's transport, until it takes it.
    transport: Option<PeerTransport>,
    /// The links to start (the initial members', then every member added).
    links: mpsc::UnboundedReceiver<NewLink>,
    directory: Directory,
}

impl Peers {
    /// Binds every `--listen-peer-urls` address and makes the queues of a
    /// link to each of `members` (id, peer URLs; this member left out).
    pub fn bind(
        listen: &[url::Url],
        cluster: Arc<ClusterInfo>,
        members: &[(u64, Vec<String>)],
    ) -> anyhow::Result<Peers> {
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
        let (links_tx, links) = mpsc::unbounded_channel();
        let directory = Directory::default();
        let mut transport = PeerTransport {
            queues: HashMap::new(),
            snapshots: HashMap::new(),
            local_id: cluster.local_id,
            directory: directory.clone(),
            links: links_tx,
        };
        transport.set_members(members);
        Ok(Peers {
            cluster,
            listeners,
            transport: Some(transport),
            links,
            directory,
            tls: crate::tls::PeerTls::default(),
        })
    }

    /// Serves and dials peers with `tls` (before [`Peers::start`]).
    pub fn secure(&mut self, tls: crate::tls::PeerTls) {
        self.tls = tls;
    }

    /// RaftNode's transport: the link queues by member.
    pub fn transport(&mut self) -> Box<dyn Transport> {
        match self.transport.take() {
            Some(t) => Box::new(t),
            None => Box::new(crate::raft::transport::NoPeers),
        }
    }

    /// Which members this member's links reach (reconfiguration checks).
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// How a follower forwards lease requests to the leader.
    pub fn lease_forwarder(&self) -> Option<Arc<dyn crate::msg::ForwardToLeader>> {
        Some(Arc::new(forward::LeaseForwarder::new(
            self.cluster.clone(),
            self.directory.clone(),
            self.tls.connector.clone(),
        )))
    }

    /// Serves the peer service and starts the links on `arbiter`, RaftNode's:
    /// a message stepped in or sent out then needs no wake-up of another
    /// thread. Nothing they run blocks (files through `tokio::fs`, HashKV
    /// on the blocking pool).
    /// `raft` holds RaftNode's inboxes; `leases` answers lease requests
    /// forwarded by followers; `snaps` is where snapshot images are sent
    /// from and received into. Links to members added later start there
    /// too, as the transport asks for them.
    pub fn start(
        self,
        raft: RaftInboxes,
        leases: crate::msg::Leases,
        snaps: SnapDir,
        store: Arc<crate::mvcc::Store>,
        arbiter: actix::ArbiterHandle,
    ) {
        let RaftInboxes {
            step,
            unreachable,
            snapshot_done,
            learner_ready,
        } = raft;
        let cluster = self.cluster;
        let deliver: service::Deliver = Arc::new(move |m| step.try_send(Step(m)).is_ok());
        for (listener, https) in self.listeners {
            let svc = PeerService {
                cluster_id: cluster.cluster_id,
                local_id: cluster.local_id,
                members: self.directory.clone(),
                deliver: deliver.clone(),
                leases: Some(leases.clone()),
                snaps: Some(snaps.clone()),
                store: Some(store.clone()),
                learner_ready: Some(learner_ready.clone()),
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
        let handle = arbiter.clone();
        let mut links = self.links;
        let directory = self.directory.clone();
        let (cluster_id, from) = (cluster.cluster_id, cluster.local_id);
        let connector = self.tls.connector.clone();
        arbiter.spawn(async move {
            while let Some(link) = links.recv().await {
                let target = Target {
                    cluster_id,
                    from,
                    to: link.id,
                    urls: link.urls,
                    connector: connector.clone(),
                };
                actix::spawn(probe::prober(target.clone(), directory.clone()));
                actix::spawn(snapshot::sender(
                    target.clone(),
                    snaps.clone(),
                    link.snapshots,
                    snapshot_done.clone(),
                ));
                let (queue, report) = (link.queue, unreachable.clone());
                let state = directory.link_state(link.id);
                PeerLink::start_in_arbiter(&handle, move |_| {
                    PeerLink::new(target, queue, report, state)
                });
            }
        });
    }
}

/// How a member started with `--initial-cluster-state existing` finds its
/// cluster: asks the other members `--initial-cluster` names, in turn, for
/// the cluster id and the members, and finds itself among them by its peer
/// URLs (put there by `member add`). Returns (cluster id, own id).
/// What a running cluster tells a member that joins it.
pub struct Joined {
    pub cluster_id: u64,
    /// The id the cluster gave this member when it was added.
    pub member_id: u64,
    /// Every member's id and peer URLs, as the cluster knows them: the ids
    /// of members added at runtime are random, so `--initial-cluster`
    /// (names and URLs) cannot give them.
    pub members: Vec<(u64, Vec<String>)>,
}

pub async fn join(
    others: &[crate::cluster::Member],
    own_peer_urls: &[String],
    timeout: std::time::Duration,
    connector: crate::tls::client::Connector,
) -> anyhow::Result<Joined> {
    use crate::proto::cairnpb::peer_client::PeerClient;
    let mut own = own_peer_urls.to_vec();
    own.sort();
    let mut reasons = Vec::new();
    for m in others {
        for url in &m.peer_urls {
            let asked = async {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_with_connector(connector.clone())
                    .await?;
                let answer = PeerClient::new(channel)
                    .members(crate::proto::cairnpb::MembersRequest {})
                    .await?
                    .into_inner();
                anyhow::Ok(answer)
            };
            match asked.await {
                Ok(answer) => {
                    let me = answer.members.iter().find(|m| {
                        let mut urls = m.peer_urls.clone();
                        urls.sort();
                        urls == own
                    });
                    return match me {
                        Some(me) => Ok(Joined {
                            cluster_id: answer.cluster_id,
                            member_id: me.id,
                            members: answer
                                .members
                                .iter()
                                .map(|m| (m.id, m.peer_urls.clone()))
                                .collect(),
                        }),
                        None => Err(anyhow::anyhow!(
                            "this member ({}) is not a member of the cluster at {url}; add it first (etcdctl member add NAME --peer-urls={})",
                            own.join(","),
                            own.join(",")
                        )),
                    };
                }
                Err(e) => reasons.push(format!("{url}: {e}")),
            }
        }
    }
    Err(anyhow::anyhow!(
        "cannot reach any member of the cluster to join ({})",
        reasons.join("; ")
    ))
}

/// RaftNode's inboxes the peer side delivers to.
pub struct RaftInboxes {
    /// Raft messages from other members.
    pub step: Recipient<Step>,
    /// Members a message could not reach.
    pub unreachable: Recipient<ReportUnreachable>,
    /// How each snapshot sent to a member ended.
    pub snapshot_done: Recipient<ReportSnapshot>,
    /// A learner's progress, asked by followers on MemberPromote.
    pub learner_ready: Recipient<crate::msg::LearnerReady>,
}

fn peer_server_failed(e: &dyn std::fmt::Display) -> ! {
    tracing::error!(cause = %e, "fatal: the peer server failed; stopping the member");
    std::process::exit(crate::supervise::FATAL_EXIT_CODE)
}
