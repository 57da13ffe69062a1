//! Wires a member together and runs it until SIGTERM/SIGINT.
//!
//! Start-up: open the raft log (raft-engine, `<data-dir>/member/wal`) and the
//! state store (sled, `<data-dir>/member/state`), rebuild the MVCC index
//! and lease table, start the LeaseKeeper, Storage, RaftNode and
//! WatchBroadcaster actors on their own arbiters (LeaseKeeper before
//! Storage: Storage must know it before it applies anything; it proposes
//! through RaftNode once that is up), then serve gRPC on a multi-threaded
//! tokio runtime.
//!
//! Shutdown order (graceful): stop accepting and drain in-flight gRPC
//! requests → RaftNode stops taking proposals and lets its in-flight log
//! persist finish → Storage flushes the state store → exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use tokio::sync::watch;

use crate::cluster::ClusterInfo;
use crate::config::Config;
use crate::grpc::{self, Api};
use crate::lease::keeper::{LeaseKeeper, SetProposer};
use crate::mvcc::{BufferedBackend, SledBackend, Store};
use crate::raft::client::{Proposals, RaftClient};
use crate::raft::core::Core;
use crate::raft::log_store::LogStore;
use crate::raft::node::{RaftNode, RaftStatus, Shutdown};
use crate::storage::{
    FlushNow, SetApplyListener, SetFlushListener, SetLeaseListener, StorageActor,
};
use crate::watch::WatchBroadcaster;

/// How often Storage makes applied state durable (and so lets the log shrink).
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

async fn resolve(url: &url::Url) -> anyhow::Result<Vec<SocketAddr>> {
    let host = url.host_str().context("listen URL has no host")?;
    let port = url
        .port_or_known_default()
        .context("listen URL has no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    anyhow::ensure!(!addrs.is_empty(), "{url} resolves to no address");
    Ok(addrs)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(cause = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Runs the member; returns when it has shut down.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let member_dir = cfg.data_dir.join("member");
    std::fs::create_dir_all(&member_dir)
        .with_context(|| format!("cannot create data dir {}", member_dir.display()))?;
    let log = LogStore::open(&member_dir.join("wal")).context("opening the raft log")?;
    let sled = SledBackend::open(&member_dir.join("state")).context("opening the state store")?;
    let backend =
        Arc::new(BufferedBackend::new(Arc::new(sled)).context("opening the state store")?);
    let store = Arc::new(Store::open(backend).context("loading the state store")?);

    let cluster = Arc::new(ClusterInfo::from_initial_cluster(
        &cfg.initial_cluster,
        &cfg.initial_cluster_token,
        &cfg.name,
        &cfg.advertise_client_urls,
    ));
    anyhow::ensure!(
        cluster.local_id != 0,
        "--name {} is not in --initial-cluster",
        cfg.name
    );
    // Peer ports are bound before anything starts: one in use fails here.
    let mut peers = crate::peer::Peers::bind(&cfg.listen_peer_urls, cluster.clone())?;
    if log.is_new() {
        log.bootstrap(cluster.voter_ids())
            .context("bootstrapping the raft log")?;
    }
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{:x}", cluster.local_id),
        cluster_id = %format!("{:x}", cluster.cluster_id),
        applied_index = store.applied_index(),
        revision = store.current_revision(),
        version = env!("CARGO_PKG_VERSION"),
        "cairn member starting"
    );

    let heartbeat = cfg.heartbeat_interval.max(Duration::from_millis(1));
    let election_tick = cfg.election_ticks().max(2);
    let core = Core::new(
        cluster.local_id,
        log,
        store.applied_index(),
        election_tick,
        1,
        &crate::logging::raft_logger(),
    )
    .context("starting raft")?;
    // etcd's request timeout: 5 s plus two election timeouts.
    let request_timeout = Duration::from_secs(5) + 2 * cfg.election_timeout;

    let system = System::new();
    system.block_on(async move {
        let proposals = Arc::new(Proposals::new(cluster.local_id));
        let status = Arc::new(RaftStatus::default());
        let (applied_tx, applied_rx) = watch::channel(store.applied_index());

        let leases = {
            let initial: Vec<(i64, i64)> = store.leases().iter().map(|l| (l.id, l.ttl)).collect();
            let status = status.clone();
            // etcd: promotion extends every lease by one election timeout;
            // an expired lease's revoke is retried after a request timeout.
            let (extend, retry) = (cfg.election_timeout, request_timeout);
            LeaseKeeper::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                LeaseKeeper::new(initial, status, extend, retry)
            })
        };
        // RaftNode and Storage share the core arbiter: committed entries
        // reach Storage without a cross-thread wake-up. Neither blocks it
        // (fsync and sled writes run on other threads).
        let core_arbiter = Arbiter::new();
        let storage = {
            let (store, proposals) = (store.clone(), proposals.clone());
            let (quota, member, min_ttl) = (cfg.quota_backend_bytes, cluster.local_id, cfg.min_lease_ttl());
            StorageActor::start_in_arbiter(&core_arbiter.handle(), move |_| {
                StorageActor::new(store, proposals, applied_tx, quota, member, min_ttl, FLUSH_INTERVAL)
            })
        };
        storage.do_send(SetLeaseListener(leases.clone().recipient()));
        let raft = {
            let (recipient, status) = (storage.clone().recipient(), status.clone());
            let transport = peers.transport();
            let proposals = proposals.clone();
            let snapshot_count = cfg.snapshot_count;
            RaftNode::start_in_arbiter(&core_arbiter.handle(), move |_| {
                RaftNode::new(core, recipient, proposals, transport, status, heartbeat, snapshot_count)
            })
        };
        storage.do_send(SetFlushListener(raft.clone().recipient()));
        peers.start(raft.clone());
        // Watchers hear of every applied batch; the broadcaster has its own
        // arbiter so that catching slow watchers up never delays Storage.
        let watch = {
            let (store, interval) = (store.clone(), cfg.watch_progress_notify_interval);
            WatchBroadcaster::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                WatchBroadcaster::new(store, interval)
            })
        };
        storage.do_send(SetApplyListener(watch.clone().recipient()));

        let client =
            RaftClient::new(raft.clone(), proposals, applied_rx, cfg.max_request_bytes as usize, request_timeout);
        leases.do_send(SetProposer(client.clone()));
        let api = Api { store: store.clone(), raft: client.clone(), status, cluster, max_txn_ops: cfg.max_txn_ops, leases, watch };

        // gRPC gets a multi-threaded runtime of its own: reads are served on
        // its threads, in parallel with the actors' arbiters.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let listen = cfg.listen_client_urls.clone();
        let max_request_bytes = cfg.max_request_bytes as usize;
        let auto_compaction = cfg.auto_compaction;
        std::thread::Builder::new().name("grpc".into()).spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("grpc").build()?;
                rt.block_on(async move {
                    if let Some(mode) = auto_compaction {
                        tokio::spawn(crate::compactor::run(mode, store, client));
                    }
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let mut addrs = Vec::new();
                    for url in &listen {
                        addrs.extend(resolve(url).await?);
                    }
                    // Lock and Election reach this member through its first
                    // client address (see grpc::LocalClient).
                    let first = *addrs.first().context("no client listen address")?;
                    let local = grpc::LocalClient::new(first, stop_rx.clone());
                    let mut servers = tokio::task::JoinSet::new();
                    for addr in addrs {
                        let mut stop = stop_rx.clone();
                        let (api, local) = (api.clone(), local.clone());
                        servers.spawn(async move {
                            let shutdown = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            grpc::serve(api, local, addr, max_request_bytes, shutdown).await.map_err(|e| (addr, e))
                        });
                        tracing::info!(%addr, "serving client requests");
                    }
                    tokio::select! {
                        _ = shutdown_signal() => {}
                        Some(Ok(Err((addr, e)))) = servers.join_next() => {
                            let _ = stop_tx.send(true);
                            return Err(anyhow::Error::new(e).context(format!("cannot serve on {addr}")));
                        }
                    }
                    let _ = stop_tx.send(true);
                    while servers.join_next().await.is_some() {}
                    Ok(())
                })
            })();
            let _ = done_tx.send(result);
        })?;

        let served = done_rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("gRPC thread died")));
        let _ = raft.send(Shutdown).await;
        match storage.send(FlushNow).await {
            Ok(Ok(())) => tracing::info!("state store flushed; bye"),
            Ok(Err(e)) => tracing::error!(cause = %e, "final flush failed (the raft log still has every write)"),
            Err(e) => tracing::error!(cause = %e, "storage actor gone before the final flush"),
        }
        System::current().stop();
        served
    })
}
