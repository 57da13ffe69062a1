//! The Storage actor: applies committed raft entries to the MVCC store.
//!
//! The apply state is an [`Applier`] behind an [`ApplyLane`] shared with
//! RaftNode, which applies small batches on its own thread when the log
//! order allows (see [`ApplyLane`]); everything else reaches the Storage actor
//! as [`ApplyCommitted`] (entries in log order). Applying decodes each
//! `cairnpb::InternalRequest`, applies the whole message as one atomic
//! backend batch (`apply::apply_batch`), completes the proposer's waiter, and
//! publishes the applied index (a `watch` channel linearizable reads wait on).
//! Tells the LeaseKeeper what each batch did to leases ([`AppliedLeases`]:
//! grants, revokes, and the term of an applied leader no-op entry), before
//! answering proposers, so a client that saw its grant can keep it alive.
//!
//! Exactly once across restarts: the applied index is written in the same
//! batch as the data it covers, and entries at or below it are skipped.
//! Durability: sled makes writes durable only on `flush()`, so the raft log is
//! the source of truth; a flush runs periodically on a blocking thread, and
//! its applied index is reported to RaftNode ([`LogFlushed`]) as the point up
//! to which the log may be truncated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use tokio::sync::{oneshot, watch};

use crate::apply::apply_batch;
use crate::apply::{ApplyResponse, LeaseChange};
use crate::error::{fatal, StorageError};
use crate::msg::{
    Applied, AppliedLeases, ApplyCommitted, CaptureImage, ConfChanged, FlushNow, InstallSnapshot,
    LogFlushed, MakeImage, Proposals, MAILBOX_CAPACITY,
};
use crate::mvcc::Store;
use crate::proto::cairnpb::InternalRequest;
use crate::proto::mvccpb::Event;
use crate::snapshot::{capture_head, ImageHead, SnapDir};
use crate::supervise::Lifeline;

/// Where Storage reports what it did; all given at construction.
pub struct Listeners {
    /// RaftNode, told how far the log may be truncated.
    pub flushed: Recipient<LogFlushed>,
    /// WatchBroadcaster, told what every applied batch changed.
    pub applied: Recipient<Applied>,
    /// LeaseKeeper, told about grants, revokes and leader no-op entries.
    pub leases: Recipient<AppliedLeases>,
    /// RaftNode, told about applied membership changes.
    pub conf: Recipient<ConfChanged>,
}

/// Where raft snapshot images live, and what goes in their header.
pub struct Images {
    pub dir: SnapDir,
    pub cluster_id: u64,
}

/// How often Storage makes applied state durable (and so lets the log shrink).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How soon a dropped watch notice is followed by a catch-up notice when no
/// other batch comes.
const WATCH_RETRY: Duration = Duration::from_millis(50);

/// Everything applying a batch touches. Owned by the [`ApplyLane`], so the
/// Storage actor and RaftNode (small batches, inline) apply through the
/// same state, one batch at a time.
pub struct Applier {
    /// The MVCC store, shared with readers on gRPC threads.
    store: Arc<Store>,
    /// Waiters of this member's proposals.
    proposals: Arc<Proposals>,
    /// Publishes the applied index.
    applied_tx: watch::Sender<u64>,
    /// Who hears of applied events, lease changes and membership changes.
    listeners: Listeners,
    /// Lease grants below this TTL (seconds) are raised to it.
    min_lease_ttl: i64,
    /// This member's id, recorded with alarms it raises.
    member_id: u64,
    /// Notices of applied events were dropped (the broadcaster's mailbox
    /// was full): the next notice, or a retry, lets it catch up from history.
    watch_behind: bool,
}

/// Largest batch RaftNode applies on its own thread: well under a
/// millisecond of work (`apply_batch` takes ~12 µs a put), so ticks and
/// heartbeats never wait long behind it.
pub const INLINE_ENTRIES: usize = 64;
/// Largest payload (bytes of entry data) applied inline.
pub const INLINE_BYTES: usize = 256 << 10;

/// How committed entries reach the [`Applier`], in log order. RaftNode
/// applies a small batch itself when nothing it sent to the Storage actor
/// is still pending (so the log order holds) and the applier is free;
/// everything else (large batches, membership changes, snapshot installs)
/// goes to the Storage actor's mailbox, counted in `pending` until done.
/// The common small batch so skips the hand-off to another thread (a
/// wake-up per Ready, and the proposer answered from a third thread).
pub struct ApplyLane {
    applier: parking_lot::Mutex<Applier>,
    /// Messages RaftNode sent to the Storage actor that later batches must
    /// not overtake: batches to apply and snapshots to install.
    pending: AtomicUsize,
}

impl ApplyLane {
    pub fn new(applier: Applier) -> Arc<ApplyLane> {
        Arc::new(ApplyLane {
            applier: parking_lot::Mutex::new(applier),
            pending: AtomicUsize::new(0),
        })
    }

    /// Applies `entries` on the caller's thread if that keeps the log order
    /// and is cheap; gives them back otherwise (the caller then sends them
    /// to the Storage actor, after [`ApplyLane::will_send`]).
    pub fn try_apply_inline(&self, entries: Vec<Entry>) -> Option<Vec<Entry>> {
        let small = entries.len() <= INLINE_ENTRIES
            && entries.iter().map(|e| e.data.len()).sum::<usize>() <= INLINE_BYTES
            && entries
                .iter()
                .all(|e| e.get_entry_type() == EntryType::EntryNormal);
        if !small || self.pending.load(Ordering::Acquire) != 0 {
            return Some(entries);
        }
        let Some(mut applier) = self.applier.try_lock() else {
            return Some(entries);
        };
        // A put is a few operations (record, meta); never a backpressure
        // commit into the engine on this thread.
        if !applier.store.backend().has_room(entries.len() * 4) {
            return Some(entries);
        }
        crate::failpoint::hit("storage-apply");
        if let Err(e) = applier.apply(entries) {
            fatal("applying committed entries", &e);
        }
        None
    }

    /// Counts a message about to be sent to the Storage actor that later
    /// batches must not overtake.
    pub fn will_send(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// The Storage actor has handled one such message.
    fn sent_done(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Applier> {
        self.applier.lock()
    }
}

pub struct StorageActor {
    /// The apply state, shared with RaftNode.
    lane: Arc<ApplyLane>,
    /// The MVCC store (the applier's).
    store: Arc<Store>,
    /// RaftNode, told how far the log may be truncated.
    flushed_to: Recipient<LogFlushed>,
    /// This member's id, in image headers.
    member_id: u64,
    /// Raft snapshot images: made for lagging members, installed from the leader.
    images: Images,
    /// Applied index covered by the last completed flush.
    flushed: u64,
    /// A flush is running on a blocking thread.
    flushing: bool,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl Applier {
    pub fn new(
        store: Arc<Store>,
        proposals: Arc<Proposals>,
        applied_tx: watch::Sender<u64>,
        listeners: Listeners,
        (member_id, min_lease_ttl): (u64, i64),
    ) -> Applier {
        Applier {
            store,
            proposals,
            applied_tx,
            listeners,
            min_lease_ttl,
            member_id,
            watch_behind: false,
        }
    }

    /// Tells the WatchBroadcaster what a batch changed, never waiting and
    /// never queueing without bound: `try_send` into its bounded mailbox.
    /// A notice that does not fit is dropped and remembered; the next one
    /// (even one with no events, see `started`) then carries a revision
    /// past what the broadcaster saw, which makes it catch every watcher up
    /// from MVCC history (the hub's gap path), so no event is lost.
    fn tell_watchers(&mut self, events: Arc<Vec<Event>>) {
        let notice = Applied {
            revision: self.store.current_revision(),
            events,
        };
        match self.listeners.applied.try_send(notice) {
            Ok(()) => self.watch_behind = false,
            Err(_) => {
                if !self.watch_behind {
                    tracing::warn!(
                        "the watch broadcaster is behind; its watchers will catch up from history"
                    );
                }
                self.watch_behind = true;
            }
        }
    }

    /// Applies committed entries in order: runs of normal entries as one
    /// batch each, a membership change as a batch of its own.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut normal = Vec::with_capacity(entries.len());
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => normal.push(e),
                EntryType::EntryConfChange => {
                    self.apply_normal(std::mem::take(&mut normal))?;
                    self.apply_conf_change(e)?;
                }
                EntryType::EntryConfChangeV2 => {
                    // cairn proposes only single changes.
                    return Err(StorageError::corrupt(
                        "raft entry",
                        format!("index {}: a joint configuration change", e.index),
                    ));
                }
            }
        }
        self.apply_normal(normal)?;
        // Applied, and proposers answered (inline or in the actor alike).
        crate::failpoint::hit("storage-applied");
        Ok(())
    }

    /// A membership change: the store's members, the proposer's answer,
    /// and RaftNode (raft's configuration, the peer links).
    fn apply_conf_change(&mut self, e: Entry) -> Result<(), StorageError> {
        if e.index <= self.store.applied_index() {
            return Ok(());
        }
        let corrupt = |what: String| {
            StorageError::corrupt("raft conf change", format!("index {}: {what}", e.index))
        };
        let cc: raft::eraftpb::ConfChange =
            protobuf::Message::parse_from_bytes(&e.data).map_err(|err| corrupt(err.to_string()))?;
        let ctx = crate::proto::cairnpb::ConfChangeContext::decode(cc.context.as_ref())
            .map_err(|err| corrupt(err.to_string()))?;
        let member = ctx.member.unwrap_or_default();
        let out = crate::apply::apply_conf_change(&self.store, e.index, &cc, member)?;
        match &out.result {
            Ok(_) => tracing::info!(
                index = e.index,
                change = ?cc.get_change_type(),
                member = %format!("{:x}", out.member.id),
                peer_urls = ?out.member.peer_urls,
                "applied a membership change"
            ),
            Err(err) => {
                tracing::warn!(index = e.index, change = ?cc.get_change_type(), member = %format!("{:x}", out.member.id), cause = %err, "membership change refused at apply")
            }
        }
        self.tell_raft_members(out.taken.then_some(cc));
        self.proposals.complete(ctx.id, out.result);
        self.publish_applied(e.index);
        Ok(())
    }

    fn apply_normal(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        let mut leader_noop_term = None;
        for e in entries {
            if e.data.is_empty() {
                // The empty entry a new leader appends to open its term.
                leader_noop_term = Some(e.term);
                ids.push(None);
                batch.push((e.index, None));
                continue;
            }
            let req = InternalRequest::decode(&e.data[..]).map_err(|err| {
                StorageError::corrupt("raft entry", format!("index {}: {err}", e.index))
            })?;
            ids.push(Some(req.id));
            batch.push((e.index, crate::apply::Proposed::of(req)));
        }
        tracing::trace!(last, count = batch.len(), "applying committed entries");
        let out = apply_batch(&self.store, batch, self.min_lease_ttl)?;
        if !out.lease_changes.is_empty() || leader_noop_term.is_some() {
            self.listeners.leases.do_send(AppliedLeases {
                changes: out.lease_changes,
                leader_noop_term,
                recovered: false,
            });
        }
        if !out.events.is_empty() || self.watch_behind {
            self.tell_watchers(Arc::new(out.events));
        }
        let mut members_changed = false;
        for (id, result) in ids.into_iter().zip(out.results) {
            members_changed |= matches!(result, Some(Ok(ApplyResponse::Membership(_))));
            if let (Some(id), Some(result)) = (id, result) {
                self.proposals.complete(id, result);
            }
        }
        if members_changed {
            // New peer URLs (MemberUpdate): the links follow.
            self.tell_raft_members(None);
        }
        self.publish_applied(last);
        Ok(())
    }

    /// Publishes the applied index, only ever forward (entries skipped as
    /// already applied may be older). A borrow() guard must not be held
    /// across a send: that deadlocks on the channel's own lock.
    fn publish_applied(&self, index: u64) {
        self.applied_tx.send_if_modified(|applied| {
            let advanced = index > *applied;
            if advanced {
                *applied = index;
            }
            advanced
        });
    }

    /// Tells RaftNode the members after a change (`change`: the raft
    /// configuration change it takes, if any); the peer links follow.
    fn tell_raft_members(&self, change: Option<raft::eraftpb::ConfChange>) {
        self.listeners.conf.do_send(ConfChanged {
            change,
            members: self.store.membership().into_values().collect(),
        });
    }
}

impl StorageActor {
    pub fn new(lane: Arc<ApplyLane>, images: Images) -> StorageActor {
        let (store, flushed_to, member_id) = {
            let a = lane.lock();
            (a.store.clone(), a.listeners.flushed.clone(), a.member_id)
        };
        let flushed = store.applied_index();
        StorageActor {
            lane,
            store,
            flushed_to,
            member_id,
            images,
            flushed,
            flushing: false,
            _lifeline: Lifeline::new("Storage"),
        }
    }

    /// Replaces the applied state with the leader's image at `index`, then
    /// tells everyone who follows the state: the applied index moves, the
    /// lessor learns the image's leases, and watchers catch up from the new
    /// history (events the image compacted away end their watches with
    /// `compacted`, as etcd's do after a snapshot).
    fn install(&mut self, index: u64) -> Result<(), crate::snapshot::SnapshotError> {
        let lane = self.lane.clone();
        let mut applier = lane.lock();
        let before: Vec<i64> = self.store.leases().iter().map(|l| l.id).collect();
        let started = std::time::Instant::now();
        // The images this member offered read the state being replaced.
        self.images.dir.withdraw_offers();
        let head = match self.images.dir.take_prepared(index) {
            // Ingested while it arrived: only the commit is left.
            Some(prepared) => {
                crate::snapshot::commit_kept(&self.store, &self.images.dir, index, prepared)?
            }
            None => crate::snapshot::install_kept(&self.store, &self.images.dir, index, false)?,
        };
        self.flushed = head.applied_index;
        tracing::info!(
            index,
            revision = head.revision,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed the raft snapshot from the leader"
        );
        let after = self.store.leases();
        let mut changes: Vec<LeaseChange> = before
            .into_iter()
            .filter(|id| !after.iter().any(|l| l.id == *id))
            .map(|id| LeaseChange::Revoked { id })
            .collect();
        changes.extend(after.iter().map(|l| LeaseChange::Granted {
            id: l.id,
            ttl: l.ttl,
        }));
        applier.listeners.leases.do_send(AppliedLeases {
            changes,
            leader_noop_term: None,
            recovered: true,
        });
        applier.tell_watchers(Arc::new(Vec::new()));
        // The image's members: raft took its configuration from the
        // snapshot; the peer links follow.
        applier.tell_raft_members(None);
        applier.publish_applied(head.applied_index);
        Ok(())
    }

    fn maybe_flush(
        &mut self,
        ctx: &mut Context<Self>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        let applied = self.store.applied_index();
        if self.flushing || (applied <= self.flushed && done.is_none()) {
            if let Some(done) = done {
                // A flush is already running; it covers a prefix only, so
                // run another one right after.
                ctx.run_later(Duration::from_millis(1), move |act, ctx| {
                    act.maybe_flush(ctx, Some(done))
                });
            }
            return;
        }
        self.flushing = true;
        let backend = self.store.backend().clone();
        let job = async move {
            tokio::task::spawn_blocking(move || {
                crate::io_metrics::timed(&crate::io_metrics::BACKEND_COMMIT, || backend.flush())
            })
            .await
        };
        ctx.spawn(job.into_actor(self).map(move |r, act, _| {
            act.flushing = false;
            let r = match r {
                Ok(Ok(())) => {
                    act.flushed = applied;
                    act.flushed_to.do_send(LogFlushed {
                        applied_index: applied,
                    });
                    Ok(())
                }
                // The write buffer is poisoned by now; never report a
                // flush that did not happen, or the log would be truncated
                // past entries the state store may not hold.
                Ok(Err(e)) => fatal("flushing the state store", &e),
                Err(e) => fatal("flushing the state store (task)", &e),
            };
            if let Some(done) = done {
                let _ = done.send(r);
            }
        }));
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(FLUSH_INTERVAL, |act, ctx| act.maybe_flush(ctx, None));
        ctx.run_interval(WATCH_RETRY, |act, _| {
            // Never wait for the applier here: RaftNode may be applying.
            if let Some(mut applier) = act.lane.applier.try_lock() {
                if applier.watch_behind {
                    applier.tell_watchers(Arc::new(Vec::new()));
                }
            }
        });
    }
}

impl Handler<ApplyCommitted> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: ApplyCommitted, _: &mut Context<Self>) {
        crate::failpoint::hit("storage-apply");
        if let Err(e) = self.lane.lock().apply(msg.entries) {
            fatal("applying committed entries", &e);
        }
        self.lane.sent_done();
    }
}

impl Handler<CaptureImage> for StorageActor {
    type Result = Result<ImageHead, StorageError>;
    fn handle(&mut self, _: CaptureImage, _: &mut Context<Self>) -> Self::Result {
        // Between two batches: the applier's lock.
        let _applier = self.lane.lock();
        capture_head(&self.store)
    }
}

impl Handler<FlushNow> for StorageActor {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.maybe_flush(ctx, Some(tx));
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("storage stopped".into())) })
    }
}

impl Handler<MakeImage> for StorageActor {
    type Result = ResponseFuture<Result<(u64, raft::eraftpb::ConfState), String>>;
    fn handle(&mut self, _: MakeImage, _: &mut Context<Self>) -> Self::Result {
        // The head between two batches (under the applier's lock); the
        // revision records are read as the image streams to a member
        // (`snapshot::OfferedImage`), while applying goes on.
        let (head, conf) = {
            let _applier = self.lane.lock();
            (capture_head(&self.store), self.store.conf_state())
        };
        let offered = head.map(|head| {
            let index = head.applied_index;
            self.images.dir.offer(
                index,
                crate::snapshot::OfferedImage {
                    store: self.store.clone(),
                    head,
                    cluster_id: self.images.cluster_id,
                    member_id: self.member_id,
                },
            );
            (index, conf)
        });
        Box::pin(async move { offered.map_err(|e| e.to_string()) })
    }
}

impl Handler<InstallSnapshot> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: InstallSnapshot, _: &mut Context<Self>) {
        // The log already starts after the snapshot: a member that cannot
        // install it cannot go on (a restart installs it again).
        if let Err(e) = self.install(msg.index) {
            fatal("installing the raft snapshot from the leader", &e);
        }
        self.lane.sent_done();
    }
}
