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
use crate::lease::keeper::LeaseKeeper;
use crate::msg::{
    FlushNow, Leases, Proposals, RaftClient, RaftInbox, RaftStatus, Shutdown, StepDown,
    WATCH_MAILBOX_CAPACITY,
};
use crate::mvcc::{BufferedBackend, Store};
use crate::proto::cairnpb::MemberAttributes;
use crate::raft::core::Core;
use crate::raft::log_store::LogStore;
use crate::raft::node::RaftNode;
use crate::storage::{Applier, ApplyLane, Listeners, StorageActor};
use crate::supervise::{self, mailbox, mailbox_of};
use crate::watch::WatchBroadcaster;

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

/// A member that stopped after its log took in a raft snapshot but before
/// the state store finished installing the image: install it now, before
/// raft asks for entries the log no longer has. The image is a prepared
/// state the engine kept (fjall), else a file in the snap directory.
/// Prepared states kept for any other install are dropped.
fn finish_install(
    log: &LogStore,
    store: &Store,
    snaps: &crate::snapshot::SnapDir,
) -> anyhow::Result<()> {
    let (truncated, _) = log.truncated();
    let applied = store.applied_index();
    let mut kept = store.kept_prepared();
    if truncated <= applied {
        return Ok(());
    }
    let state = kept
        .iter()
        .position(|(tag, _)| *tag == truncated)
        .map(|at| kept.swap_remove(at).1);
    // The others can never be installed now: dropped, they are removed.
    drop(kept);
    if let Some(state) = state {
        tracing::info!(
            index = truncated,
            applied,
            "finishing the install of a raft snapshot (the state it prepared)"
        );
        return crate::snapshot::commit_recovered(store, snaps, truncated, state)
            .context("installing the raft snapshot");
    }
    let image = snaps.image(truncated);
    anyhow::ensure!(
        image.exists(),
        "the raft log starts after index {truncated} but the state store has applied only up to {applied}, and no snapshot image is left to install; replace this member (member remove, then member add with a new data dir)"
    );
    tracing::info!(
        index = truncated,
        applied,
        "finishing the install of a raft snapshot"
    );
    crate::snapshot::install_kept(store, snaps, truncated, true)
        .context("installing the raft snapshot")?;
    Ok(())
}

/// etcd's `--force-new-cluster`: the member restarts as the only member of
/// its cluster (same cluster id, same data), for when a quorum is lost for
/// good. The other members are removed from the applied state and the raft
/// configuration; every entry of its log stays (see `LogStore::force_single`).
fn force_new_cluster(log: &LogStore, store: &Store, cluster: &ClusterInfo) -> anyhow::Result<()> {
    anyhow::ensure!(
        !log.is_new() || !store.membership().is_empty(),
        "--force-new-cluster needs the data dir of an existing member"
    );
    let me = cluster.local_id;
    let membership = store.membership();
    let own = membership.get(&me).cloned().unwrap_or_else(|| {
        cluster
            .member_records()
            .into_iter()
            .find(|m| m.id == me)
            .unwrap_or_default()
    });
    let mut w = crate::mvcc::BatchWriter::new(store);
    for id in membership.keys().filter(|id| **id != me) {
        w.remove_conf_member(*id);
    }
    w.set_conf_member(crate::proto::cairnpb::MemberRecord {
        is_learner: false,
        ..own
    });
    w.commit(store.applied_index())
        .context("removing the other members")?;
    crate::mvcc::Backend::flush(store.backend().as_ref()).context("flushing the state store")?;
    log.force_single(me).context("rewriting the raft log")?;
    tracing::warn!(
        member = %format!("{me:x}"),
        removed = membership.len().saturating_sub(1),
        "forcing a new cluster: this member is now the only one"
    );
    Ok(())
}

/// Asks the other members of `--initial-cluster` for the cluster's id,
/// this member's id and every member (`Peer/Members`).
fn ask_to_join(
    cluster: &ClusterInfo,
    own_peer_urls: &[String],
    connector: &crate::tls::client::Connector,
) -> anyhow::Result<crate::peer::Joined> {
    let others: Vec<crate::cluster::Member> = cluster.remote_members().cloned().collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::peer::join(
            &others,
            own_peer_urls,
            Duration::from_secs(5),
            connector.clone(),
        ))
}

/// Runs the member; returns when it has shut down.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // TLS files (and auto-TLS certificates) are read first: a bad one fails
    // start-up before the member's state is created or opened.
    let (client_tls, peer_tls) = crate::tls::setup(
        &cfg.security,
        &cfg.data_dir,
        &cfg.listen_client_urls,
        &cfg.listen_peer_urls,
    )
    .context("setting up TLS")?;
    let member_dir = cfg.data_dir.join("member");
    std::fs::create_dir_all(&member_dir)
        .with_context(|| format!("cannot create data dir {}", member_dir.display()))?;
    let wal_dir = cfg
        .wal_dir
        .clone()
        .unwrap_or_else(|| member_dir.join("wal"));
    let log = LogStore::open(&wal_dir).context("opening the raft log")?;
    let state = crate::mvcc::engine::open_state(
        &member_dir,
        cfg.backend_engine,
        crate::mvcc::backend::DEFAULT_SLED_CACHE_BYTES,
    )
    .context("opening the state store")?;
    let backend = Arc::new(BufferedBackend::new(state).context("opening the state store")?);

    let mut cluster = ClusterInfo::from_initial_cluster(
        &cfg.initial_cluster,
        &cfg.initial_cluster_token,
        &cfg.name,
        &cfg.advertise_client_urls,
    );
    anyhow::ensure!(
        cluster.local_id != 0,
        "--name {} is not in --initial-cluster",
        cfg.name
    );
    // The identity is fixed when the member is bootstrapped and stored with
    // the log; on every later start the stored one wins over the flags.
    let token = &cfg.initial_cluster_token;
    let fresh = log.is_new()
        && log
            .identity()
            .context("reading the member identity")?
            .is_none();
    let own_peer_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(crate::cluster::url_string)
        .collect();
    // What the cluster answered a fresh joiner (its members are used below).
    let mut joined = None;
    if fresh && cfg.initial_cluster_state == crate::config::ClusterState::Existing {
        // Joining a running cluster that added this member: its id and the
        // cluster's come from the others; the log and the state come with
        // the leader's first snapshot.
        let answer = ask_to_join(&cluster, &own_peer_urls, &peer_tls.connector)?;
        let (cluster_id, member_id) = (answer.cluster_id, answer.member_id);
        joined = Some(answer);
        tracing::info!(
            member_id = %format!("{member_id:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            "joining an existing cluster"
        );
        let mut identity = cluster.identity(token);
        identity.member_id = member_id;
        identity.cluster_id = cluster_id;
        log.store_identity(&identity)
            .context("storing the member identity")?;
    } else if fresh {
        // A new cluster: the log starts after BOOTSTRAP_INDEX and the state
        // store holds the initial members at that index.
        log.bootstrap(cluster.voter_ids())
            .context("bootstrapping the raft log")?;
        crate::mvcc::store::seed_membership(
            backend.as_ref(),
            &cluster.member_records(),
            crate::raft::log_store::BOOTSTRAP_INDEX,
        )
        .and_then(|()| crate::mvcc::Backend::flush(backend.as_ref()))
        .context("bootstrapping the state store")?;
    }
    match log.identity().context("reading the member identity")? {
        Some(stored) => cluster
            .adopt(&stored, token)
            .map_err(|e| anyhow::anyhow!("{e} (data dir {})", cfg.data_dir.display()))?,
        // New, or made by a cairn that did not store it yet.
        None => log
            .store_identity(&cluster.identity(token))
            .context("storing the member identity")?,
    }
    if let Some(rev) = crate::failpoint::corrupt_state(backend.as_ref()).context("failpoint")? {
        tracing::warn!(
            revision = rev,
            "failpoint: the state store was corrupted on purpose"
        );
    }
    let store = Arc::new(Store::open(backend).context("loading the state store")?);
    store.set_compaction_batches(cfg.compaction_batches);
    let snaps =
        crate::snapshot::SnapDir::open(&member_dir).context("opening the snapshot directory")?;
    finish_install(&log, &store, &snaps)?;
    {
        // An offered image a compaction overtook is offered no more.
        let log = log.clone();
        snaps.on_retract(move |index| log.retract_image(index));
    }
    anyhow::ensure!(
        !store.is_removed(cluster.local_id),
        "the member has been permanently removed from the cluster (member {:x}); start a new member with a new data dir instead",
        cluster.local_id
    );
    if cfg.force_new_cluster {
        force_new_cluster(&log, &store, &cluster)?;
    }
    // Everything up to the applied index is in the state store, the
    // configuration included: raft starts from that one.
    if !store.membership().is_empty() {
        log.set_conf_state(&store.conf_state())
            .context("storing the configuration")?;
    }
    let cluster = Arc::new(cluster);
    // Peer ports are bound before anything starts: one in use fails here.
    let members: Vec<(u64, Vec<String>)> = if store.membership().is_empty() {
        // A member that joined a running cluster, before its first
        // snapshot: the members as the cluster reports them (a member added
        // at runtime has a random id that --initial-cluster cannot give,
        // and a stream from an id not listed here is refused), or, with no
        // member answering, --initial-cluster's. Asked again on a restart
        // before the first snapshot.
        let answer = match joined {
            Some(answer) => Ok(answer),
            None => ask_to_join(&cluster, &own_peer_urls, &peer_tls.connector),
        };
        match answer {
            Ok(joined) => joined.members,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot ask the cluster for its members; using --initial-cluster");
                cluster
                    .members
                    .iter()
                    .map(|m| (m.id, m.peer_urls.clone()))
                    .collect()
            }
        }
    } else {
        store
            .membership()
            .into_values()
            .map(|m| (m.id, m.peer_urls))
            .collect()
    };
    // etcd's request timeout: 5 s plus two election timeouts.
    let request_timeout = Duration::from_secs(5) + 2 * cfg.election_timeout;
    let hash_peers = crate::corrupt::Peers {
        cluster_id: cluster.cluster_id,
        connector: peer_tls.connector.clone(),
        timeout: request_timeout,
    };
    if cfg.initial_corrupt_check {
        let others: Vec<(u64, Vec<String>)> = members
            .iter()
            .filter(|(id, _)| *id != cluster.local_id)
            .cloned()
            .collect();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::corrupt::check_at_start(
                store.clone(),
                cluster.local_id,
                &others,
                &hash_peers,
            ))?;
    }
    let mut peers = crate::peer::Peers::bind(&cfg.listen_peer_urls, cluster.clone(), &members)?;
    peers.secure(peer_tls);
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

    let jwt = match &cfg.auth_token {
        crate::auth::TokenConfig::Simple => None,
        crate::auth::TokenConfig::Jwt(jwt) => Some(Arc::new(
            crate::auth::jwt::Jwt::load(jwt).map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?,
        )),
    };

    supervise::install();
    let system = System::new();
    system.block_on(async move {
        let proposals = Arc::new(Proposals::new(cluster.local_id));
        let status = Arc::new(RaftStatus::default());
        let (applied_tx, applied_rx) = watch::channel(store.applied_index());

        // Every mailbox first, so each actor is built knowing whom it talks to.
        let (raft, raft_mailbox) = mailbox::<RaftNode>();
        let (storage, storage_mailbox) = mailbox::<StorageActor>();
        let (leases, lease_mailbox) = mailbox::<LeaseKeeper>();
        let (watch, watch_mailbox) = mailbox_of::<WatchBroadcaster>(WATCH_MAILBOX_CAPACITY);
        let (auth_manager, auth_mailbox) = mailbox::<crate::auth::AuthManager>();
        let client = RaftClient::new(
            RaftInbox {
                learner_ready: raft.clone().recipient(),
                propose: raft.clone().recipient(),
                read_index: raft.clone().recipient(),
                transfer: raft.clone().recipient(),
            },
            proposals.clone(),
            status.clone(),
            applied_rx,
            cfg.max_request_bytes as usize,
            request_timeout,
        );

        // One arbiter (thread) per core actor: RaftNode's ticks, heartbeats
        // and peer messages never queue behind applying a batch, a sled
        // commit or a watch catch-up (see docs/ARCHITECTURE.md).
        let arbiters: Vec<Arbiter> = (0..5).map(|_| Arbiter::new()).collect();
        {
            let initial: Vec<(i64, i64)> = store.leases().iter().map(|l| (l.id, l.ttl)).collect();
            let (status, client) = (status.clone(), client.clone());
            // etcd: promotion extends every lease by one election timeout;
            // an expired lease's revoke is retried after a request timeout.
            let (extend, retry) = (cfg.election_timeout, request_timeout);
            lease_mailbox.start_on(&arbiters[0].handle(), move || {
                LeaseKeeper::new(initial, status, extend, retry, client)
            });
        }
        {
            let (store, interval) = (store.clone(), cfg.watch_progress_notify_interval);
            watch_mailbox.start_on(&arbiters[1].handle(), move || WatchBroadcaster::new(store, interval));
        }
        // The apply state: the Storage actor applies through it, and
        // RaftNode applies small batches through it inline.
        let lane = {
            let listeners = Listeners {
                conf: raft.clone().recipient(),
                flushed: raft.clone().recipient(),
                applied: watch.clone().recipient(),
                leases: leases.clone().recipient(),
            };
            let limits = (cluster.local_id, cfg.min_lease_ttl());
            ApplyLane::new(Applier::new(store.clone(), proposals.clone(), applied_tx, listeners, limits))
        };
        {
            let lane = lane.clone();
            let images = crate::storage::Images {
                dir: snaps.clone(),
                cluster_id: cluster.cluster_id,
            };
            storage_mailbox.start_on(&arbiters[2].handle(), move || StorageActor::new(lane, images));
        }
        {
            let inbox = crate::raft::node::StorageInbox {
                lane,
                apply: storage.clone().recipient(),
                make_image: storage.clone().recipient(),
                install: storage.clone().recipient(),
            };
            let status = status.clone();
            let transport = peers.transport();
            let proposals = proposals.clone();
            let snapshot_count = (cfg.snapshot_count, cfg.snapshot_catchup_entries);
            raft_mailbox.start_on(&arbiters[3].handle(), move || {
                RaftNode::new(core, inbox, proposals, transport, status, heartbeat, snapshot_count)
            });
        }

        let tokens = Arc::new(crate::auth::manager::Tokens::default());
        {
            let (store, tokens, ttl, jwt) = (store.clone(), tokens.clone(), cfg.auth_token_ttl, jwt.clone());
            auth_mailbox.start_on(&arbiters[4].handle(), move || crate::auth::AuthManager::new(store, tokens, ttl, jwt));
        }
        let auth = crate::auth::Auth::new(store.clone(), tokens, auth_manager.recipient(), cfg.auth_token_ttl, jwt);

        let leases = Leases::new(
            (leases.clone().recipient(), leases.clone().recipient(), leases.recipient()),
            status.clone(),
            cluster.local_id,
            peers.lease_forwarder(),
            request_timeout,
        );
        let directory = peers.directory();
        let inboxes = crate::peer::RaftInboxes {
            step: raft.clone().recipient(),
            unreachable: raft.clone().recipient(),
            snapshot_done: raft.clone().recipient(),
            learner_ready: raft.clone().recipient(),
        };
        peers.start(inboxes, leases.clone(), snaps, store.clone(), arbiters[3].handle());
        let api = Api {
            store: store.clone(),
            raft: client.clone(),
            status: status.clone(),
            cluster,
            max_txn_ops: cfg.max_txn_ops,
            leases,
            storage: storage.clone().recipient(),
            tick: heartbeat,
            watch,
            peers: directory,
            auth,
            bcrypt_cost: cfg.bcrypt_cost,
            quota_bytes: cfg.quota_backend_bytes,
            range_budget: crate::grpc::budget::RangeBudget::new(cfg.max_range_bytes_in_flight),
        };

        // gRPC gets a multi-threaded runtime of its own: reads are served on
        // its threads, in parallel with the actors' arbiters.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let listen = cfg.listen_client_urls.clone();
        let max_request_bytes = cfg.max_request_bytes as usize;
        let auto_compaction = cfg.auto_compaction;
        let corrupt_check_time = cfg.corrupt_check_time;
        let metrics_urls = cfg.listen_metrics_urls.clone();
        let data_dir = cfg.data_dir.clone();
        let quota_backend_bytes = cfg.quota_backend_bytes;
        let enable_ui = cfg.enable_ui;
        let enable_pprof = cfg.enable_pprof;
        if enable_pprof && !cfg!(target_os = "linux") {
            tracing::warn!("--enable-pprof: CPU profiles are served on Linux only; no /debug/pprof here");
        }
        let cors = cfg.cors.clone();
        let published = MemberAttributes {
            id: api.cluster.local_id,
            name: cfg.name.clone(),
            client_urls: cfg.advertise_client_urls.iter().map(crate::cluster::url_string).collect(),
        };
        std::thread::Builder::new().name("grpc".into()).spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("grpc").build()?;
                rt.block_on(async move {
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let publishing = tokio::spawn(crate::cluster::publish(
                        client.clone(),
                        store.clone(),
                        published,
                        Duration::from_millis(500),
                        stop_rx.clone(),
                    ));
                    // etcd serves clients only once the member has published
                    // itself, so a client never sees a member list without
                    // it. cairn waits for that too, but at most a request
                    // timeout: a member that cannot reach a quorum then still
                    // answers health (NOT_SERVING) and serializable reads.
                    let _ = tokio::time::timeout(request_timeout, publishing).await;
                    if !corrupt_check_time.is_zero() {
                        let (directory, local_id) = (api.peers.clone(), api.cluster.local_id);
                        tokio::spawn(crate::corrupt::monitor(corrupt_check_time, store.clone(), client.clone(), directory, hash_peers, local_id));
                    }
                    if let Some(mode) = auto_compaction {
                        tokio::spawn(crate::compactor::run(mode, store, client));
                    }
                    let mut addrs = Vec::new();
                    for url in &listen {
                        let tls = (url.scheme() == "https").then(|| client_tls.acceptor.clone()).flatten();
                        addrs.extend(resolve(url).await?.into_iter().map(|addr| (addr, tls.clone())));
                    }
                    // Lock and Election reach this member through its first
                    // client address (see grpc::LocalClient).
                    let (first, first_tls) = addrs.first().cloned().context("no client listen address")?;
                    let loopback = first_tls.and(client_tls.loopback.clone());
                    let local = grpc::LocalClient::new(first, loopback, stop_rx.clone());
                    // HTTP admin (crate::http): shared by every client URL.
                    let mut metrics_addrs = Vec::new();
                    for url in &metrics_urls {
                        metrics_addrs.extend(resolve(url).await?);
                    }
                    let admin = Arc::new(crate::http::Admin::start(api.clone(), crate::http::AdminOptions {
                        data_dir,
                        max_request_bytes,
                        metrics_addrs,
                        stopping: stop_rx.clone(),
                        quota_backend_bytes,
                        local: local.clone(),
                        enable_ui,
                        cors,
                        enable_pprof,
                    }).context("cannot start the HTTP admin server")?);
                    let mut servers = tokio::task::JoinSet::new();
                    for (addr, tls) in addrs {
                        let mut stop = stop_rx.clone();
                        let (api, local, admin) = (api.clone(), local.clone(), admin.clone());
                        servers.spawn(async move {
                            let shutdown = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            grpc::serve(api, local, addr, tls, max_request_bytes, admin, shutdown).await.map_err(|e| (addr, e))
                        });
                        tracing::info!(%addr, "serving client requests");
                    }
                    // etcd's line, which operators' scripts wait for.
                    tracing::info!("ready to serve client requests");
                    tokio::select! {
                        _ = shutdown_signal() => {}
                        _ = supervise::stop_requested() => {}
                        Some(Ok(Err((addr, e)))) = servers.join_next() => {
                            let _ = stop_tx.send(true);
                            return Err(anyhow::Error::new(e).context(format!("cannot serve on {addr}")));
                        }
                    }
                    let _ = stop_tx.send(true);
                    while servers.join_next().await.is_some() {}
                    admin.stop().await;
                    Ok(())
                })
            })();
            let _ = done_tx.send(result);
        })?;

        let served = done_rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("gRPC thread died")));
        supervise::begin_shutdown();
        // As etcd: a leader that stops hands leadership to the most
        // up-to-date voter first, so the cluster does not wait an election
        // timeout (bounded by the request timeout).
        if let Ok(Some(target)) = raft.send(StepDown).await {
            let deadline = tokio::time::Instant::now() + request_timeout;
            while status.leader_id() != target && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(heartbeat).await;
            }
            if status.leader_id() == target {
                tracing::info!(leader = %format!("{target:x}"), "leadership handed over");
            } else {
                tracing::warn!(to = %format!("{target:x}"), "leadership was not handed over in time");
            }
        }
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
