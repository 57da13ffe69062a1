//! The RaftNode actor: the only owner of consensus state.
//!
//! Takes [`Propose`] (from the gRPC layer, through [`super::proposal`]),
//! [`ReadIndex`] (linearizable reads), [`Step`] (messages from peers),
//! [`ReportUnreachable`] and [`ReportSnapshot`] (from PeerLinks) and
//! [`LogFlushed`] (from Storage: how far the log may be truncated). Sends
//! committed entries to the Storage actor as `ApplyCommitted`, and raft
//! messages to peers through a [`Transport`].
//!
//! Write path position: client → gRPC → **RaftNode** (append, one fsync per
//! Ready on a blocking thread) → Storage (apply) → client answered.
//! The fsync never runs on this actor's arbiter thread: while a persist is in
//! flight the actor keeps taking proposals, ticks and peer messages, which
//! all join the next Ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::core::{truncation_point, Core, ReadyWork};
use super::log_store::LogStore;
use super::tick_clock::TickClock;
use super::transport::{Transport, Undelivered};
use crate::error::{fatal, EtcdError};
use crate::msg::{
    ApplyCommitted, ConfChanged, InstallSnapshot, LogFlushed, MakeImage, Proposals, Propose,
    RaftStatus, ReadIndex, ReportSnapshot, ReportUnreachable, Shutdown, Step, StepDown,
    TransferLeader, MAILBOX_CAPACITY,
};
use crate::supervise::Lifeline;

#[derive(Message)]
#[rtype(result = "()")]
struct Drive;

/// What RaftNode asks of the Storage actor, in log order.
pub struct StorageInbox {
    /// Applies small batches on RaftNode's thread when the order allows;
    /// counts what is sent to `apply` and `install`.
    pub lane: Arc<crate::storage::ApplyLane>,
    /// Committed entries to apply.
    pub apply: Recipient<ApplyCommitted>,
    /// An image of the applied state for lagging members.
    pub make_image: Recipient<MakeImage>,
    /// Install the leader's snapshot, once durable in the log.
    pub install: Recipient<InstallSnapshot>,
}

pub struct RaftNode {
    /// Consensus state; plain code, see `core`.
    core: Core,
    /// Shared handle on the log, for persists on blocking threads.
    log: LogStore,
    /// Where committed entries (and snapshots to install) go, in order.
    storage: StorageInbox,
    /// Storage is writing an image for a raft snapshot.
    imaging: bool,
    /// Proposers' waiters, told when raft refuses their proposal.
    proposals: Arc<Proposals>,
    /// Outgoing raft messages.
    transport: Box<dyn Transport>,
    /// Published progress.
    status: Arc<RaftStatus>,
    /// True while a Ready's persist runs: at most one Ready in flight.
    persisting: bool,
    /// Linearizable reads waiting for a read index.
    reads: PendingReads,
    /// A Drive is already queued; avoid queueing one per proposal.
    drive_queued: bool,
    /// Tick period (etcd's --heartbeat-interval).
    tick_interval: Duration,
    /// Log length that triggers truncation (etcd's --snapshot-count).
    snapshot_count: u64,
    /// Entries kept behind the flushed index so a slow follower can catch
    /// up from the log instead of needing a snapshot (etcd's
    /// --experimental-snapshot-catchup-entries, 5000).
    catch_up_entries: u64,
    /// A log truncation runs on a blocking thread.
    compacting: bool,
    /// Set by Shutdown: new proposals are refused.
    stopping: bool,
    /// Shutdown callers waiting for the in-flight persist.
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// How late ticks fire: whether anything blocks this thread.
    ticks: TickClock,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl RaftNode {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        storage: StorageInbox,
        proposals: Arc<Proposals>,
        transport: Box<dyn Transport>,
        status: Arc<RaftStatus>,
        tick_interval: Duration,
        (snapshot_count, catch_up_entries): (u64, u64),
    ) -> RaftNode {
        let log = core.store().clone();
        RaftNode {
            core,
            log,
            storage,
            imaging: false,
            proposals,
            transport,
            status,
            persisting: false,
            reads: PendingReads::default(),
            drive_queued: false,
            tick_interval,
            snapshot_count,
            catch_up_entries,
            compacting: false,
            stopping: false,
            stop_waiters: Vec::new(),
            ticks: TickClock::new(tick_interval, Instant::now()),
            _lifeline: Lifeline::new("RaftNode"),
        }
    }

    /// Measures the tick's lateness; warns when the raft thread was held
    /// up for more than two intervals (heartbeats went out late).
    fn observe_tick(&mut self) {
        let now = Instant::now();
        let late = self.ticks.tick(now);
        if late > 2 * self.tick_interval {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                heartbeat_interval_ms = self.tick_interval.as_millis() as u64,
                "raft tick fired late: the raft thread was held up, heartbeats went out late"
            );
        }
        if let Some(s) = self.ticks.summary(now) {
            tracing::debug!(
                ticks = s.ticks,
                p50_us = s.p50.as_micros() as u64,
                p99_us = s.p99.as_micros() as u64,
                max_us = s.max.as_micros() as u64,
                "raft tick lateness"
            );
        }
    }

    fn queue_drive(&mut self, ctx: &mut Context<Self>) {
        if !self.drive_queued {
            self.drive_queued = true;
            // Handled after the messages already in the mailbox, so a burst
            // of proposals lands in one Ready.
            ctx.notify(Drive);
        }
    }

    fn hand_off(&mut self, msgs: Vec<raft::eraftpb::Message>, entries: Vec<raft::eraftpb::Entry>) {
        if !msgs.is_empty() {
            let undelivered = self.transport.send(super::transport::coalesce(msgs));
            if !undelivered.is_empty() {
                self.report(undelivered);
            }
        }
        if !entries.is_empty() {
            tracing::trace!(
                first = entries[0].index,
                count = entries.len(),
                "handing committed entries to storage"
            );
            if let Some(entries) = self.storage.lane.try_apply_inline(entries) {
                self.storage.lane.will_send();
                self.storage.apply.do_send(ApplyCommitted { entries });
            }
        }
    }

    fn report(&mut self, undelivered: Undelivered) {
        for id in undelivered.snapshots {
            tracing::warn!(
                to = %format!("{id:x}"),
                "raft snapshot not sent (a snapshot to that member is already streaming, or no link); raft retries"
            );
            self.core.report_snapshot(id, false);
        }
        for id in undelivered.unreachable {
            self.core.report_unreachable(id);
        }
    }

    /// Starts raft's ReadIndex for the reads queued since the last batch
    /// (one request for all of them, and one request in flight at a time,
    /// as etcd's read loop does: each costs the leader a heartbeat round),
    /// or answers them at once on a single member.
    fn serve_reads(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        if let Some(index) = self.core.read_index() {
            for tx in self.reads.queued.drain(..) {
                let _ = tx.send(Ok(index));
            }
            return;
        }
        if self.core.is_alone() || !self.reads.issued.is_empty() {
            // A single member still electing itself or committing its
            // term's first entry, or a request in flight: after_progress
            // asks again.
            return;
        }
        // Drawn from the proposal id generator: unique across members and
        // restarts, so the leader can never mistake this request for an
        // older one (from another member, or from before a restart) and
        // answer it with an index fixed before these reads arrived.
        let ctx = self.proposals.fresh_id();
        self.reads.issue(ctx);
        self.core.request_read(ctx);
    }

    fn after_progress(&mut self) {
        let progress = self.core.progress();
        if progress.leader_id != self.status.leader_id() || progress.term != self.status.term() {
            tracing::info!(
                term = progress.term,
                leader = %format!("{:x}", progress.leader_id),
                is_leader = progress.is_leader,
                "raft leader changed"
            );
        }
        self.status.publish(progress);
        self.serve_reads();
        if self.stopping && !self.persisting {
            for tx in self.stop_waiters.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// raft-rs wants to send a snapshot that no image answers: has Storage
    /// write a new one (off this thread), and offers it once it exists. The
    /// image is of the applied state at some index; the snapshot names that
    /// index, the term of its entry and the current configuration.
    fn make_image(&mut self, ctx: &mut Context<Self>) {
        if self.imaging {
            return;
        }
        self.imaging = true;
        let made = self.storage.make_image.send(MakeImage);
        ctx.spawn(made.into_actor(self).map(|r, act, ctx| {
            act.imaging = false;
            match r.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok((index, conf)) => match raft::Storage::term(&act.log, index) {
                    Ok(term) => {
                        tracing::info!(index, term, "made a snapshot image for lagging members");
                        act.log.set_image(index, term, conf);
                    }
                    Err(e) => tracing::warn!(index, cause = %e, "snapshot image already behind the log; will make another"),
                },
                Err(e) => tracing::warn!(cause = %e, "cannot make a snapshot image; will retry"),
            }
            act.queue_drive(ctx);
        }));
    }

    /// One step of the Ready loop: hand out what is safe now, persist the
    /// rest off-thread, and continue when the persist is done.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        self.serve_reads();
        // Before the persist check: a follower's forwarded proposals and a
        // leader's appends leave now, not after the fsync in flight.
        let sendable = self.core.take_sendable();
        self.hand_off(sendable, Vec::new());
        if self.log.take_image_wanted() {
            self.make_image(ctx);
        }
        if self.persisting {
            return;
        }
        let Some(mut work) = self.core.begin_ready() else {
            self.after_progress();
            return;
        };
        for (read_ctx, index) in std::mem::take(&mut work.read_states) {
            self.reads.answer(read_ctx, index);
        }
        let send_now = std::mem::take(&mut work.send_now);
        let apply = std::mem::take(&mut work.apply);
        self.hand_off(send_now, Vec::new());
        if work.nothing_to_persist() {
            self.hand_off(Vec::new(), apply);
            self.finish(work, ctx);
            return;
        }
        self.persisting = true;
        let log = self.log.clone();
        // Started now, not when the actor next polls its futures: the
        // inline apply below then runs while the log is written.
        let persist = tokio::task::spawn_blocking(move || {
            let r = Core::persist(&log, &work);
            (work, r)
        });
        ctx.spawn(persist.into_actor(self).map(|joined, act, ctx| {
            act.persisting = false;
            match joined {
                Ok((work, Ok(()))) => act.finish(work, ctx),
                Ok((_, Err(e))) => fatal("persisting the raft log", &e),
                Err(e) => fatal("persisting the raft log (task)", &e),
            }
        }));
        // After the persist has started, so a batch applied on this thread
        // overlaps the log write instead of delaying it.
        self.hand_off(Vec::new(), apply);
    }

    fn finish(&mut self, work: ReadyWork, ctx: &mut Context<Self>) {
        if let Some(snapshot) = &work.snapshot {
            // The log now starts after the snapshot: the state follows,
            // before any entry after it (same mailbox, in order).
            tracing::info!(
                index = snapshot.index,
                term = snapshot.term,
                "raft snapshot from the leader persisted; installing it"
            );
            self.storage.lane.will_send();
            self.storage.install.do_send(InstallSnapshot {
                index: snapshot.index,
            });
        }
        let send = self.core.finish_ready(work);
        self.hand_off(send, Vec::new());
        self.after_progress();
        self.drive(ctx);
    }
}

impl Actor for RaftNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Proposals are many and small: a deep mailbox lets thousands of
        // clients queue for the next Ready; past it, `send` waits (backpressure).
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if let Err(e) = self.core.campaign_if_alone() {
            tracing::error!(cause = %e, "campaign failed");
        }
        ctx.run_interval(self.tick_interval, |act, ctx| {
            crate::failpoint::hit("raft-tick");
            act.observe_tick();
            act.core.tick();
            // raft-rs drops a ReadIndex silently when no leader is known (or
            // the leader has not committed in its term yet): ask again.
            for read_ctx in act.reads.retry() {
                act.core.request_read(read_ctx);
            }
            act.queue_drive(ctx);
        });
        self.queue_drive(ctx);
    }
}

impl Handler<Drive> for RaftNode {
    type Result = ();
    fn handle(&mut self, _: Drive, ctx: &mut Context<Self>) {
        self.drive_queued = false;
        self.drive(ctx);
    }
}

impl Handler<Propose> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: Propose, ctx: &mut Context<Self>) {
        let refused = if self.stopping {
            Err(EtcdError::Stopped)
        } else if msg.conf_change {
            self.core.propose_conf_change(&msg.data)
        } else {
            self.core.propose(msg.data)
        };
        match refused {
            Ok(()) => self.queue_drive(ctx),
            Err(e) => self.proposals.complete(msg.id, Err(e)),
        }
    }
}

impl Handler<ReadIndex> for RaftNode {
    type Result = ResponseFuture<Result<u64, EtcdError>>;
    fn handle(&mut self, _: ReadIndex, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(index) = self.core.read_index() {
            return Box::pin(async move { Ok(index) });
        }
        // Cluster (or a single member not yet committed in its term): wait
        // for raft's read index, requested at the next Drive together with
        // every read queued meanwhile. Callers bound the wait with their
        // request timeout.
        let (tx, rx) = oneshot::channel();
        self.reads.queued.push(tx);
        self.queue_drive(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(EtcdError::Stopped)) })
    }
}

impl Handler<Step> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: Step, ctx: &mut Context<Self>) {
        if let Err(e) = self.core.step(msg.0) {
            tracing::debug!(cause = %e, "dropped raft message");
        }
        self.queue_drive(ctx);
    }
}

impl Handler<ReportUnreachable> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: ReportUnreachable, ctx: &mut Context<Self>) {
        self.core.report_unreachable(msg.id);
        self.queue_drive(ctx);
    }
}

impl Handler<ReportSnapshot> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: ReportSnapshot, ctx: &mut Context<Self>) {
        self.core.report_snapshot(msg.id, msg.ok);
        self.queue_drive(ctx);
    }
}

impl Handler<LogFlushed> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: LogFlushed, ctx: &mut Context<Self>) {
        if self.compacting {
            return;
        }
        let first = raft::Storage::first_index(&self.log).unwrap_or(1);
        let persisted_commit = self.log.hard_state().commit;
        let Some(upto) = truncation_point(
            first,
            msg.applied_index,
            persisted_commit,
            self.catch_up_entries,
            self.snapshot_count,
        ) else {
            return;
        };
        self.compacting = true;
        let log = self.log.clone();
        let job = async move { tokio::task::spawn_blocking(move || log.compact_to(upto)).await };
        ctx.spawn(job.into_actor(self).map(move |r, act, _| {
            act.compacting = false;
            match r {
                Ok(Ok(())) => tracing::info!(upto, "raft log truncated"),
                Ok(Err(e)) => tracing::warn!(cause = %e, "raft log truncation failed; will retry"),
                Err(e) => tracing::warn!(cause = %e, "raft log truncation task failed"),
            }
        }));
    }
}

impl Handler<crate::msg::LearnerReady> for RaftNode {
    type Result = Option<bool>;
    fn handle(&mut self, msg: crate::msg::LearnerReady, _: &mut Context<Self>) -> Option<bool> {
        self.core.learner_ready(msg.id)
    }
}

impl Handler<ConfChanged> for RaftNode {
    type Result = ();
    fn handle(&mut self, msg: ConfChanged, ctx: &mut Context<Self>) {
        let own = self.core.progress().id;
        if let Some(cc) = &msg.change {
            let cs = match self.core.apply_conf_change(cc) {
                Ok(cs) => cs,
                Err(e) => fatal("applying a membership change to raft", &e),
            };
            tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "raft configuration changed");
            // Start-up reads the configuration from the applied state; the
            // log's copy only saves that step.
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = log.set_conf_state(&cs) {
                    tracing::warn!(cause = %e, "storing the raft configuration failed");
                }
            });
            if cc.get_change_type() == raft::eraftpb::ConfChangeType::RemoveNode
                && cc.node_id == own
            {
                tracing::warn!(
                    member = %format!("{own:x}"),
                    "the member has been permanently removed from the cluster; stopping"
                );
                crate::supervise::request_stop();
            }
        }
        let members: Vec<(u64, Vec<String>)> = msg
            .members
            .into_iter()
            .map(|m| (m.id, m.peer_urls))
            .collect();
        self.transport.set_members(&members);
        self.queue_drive(ctx);
    }
}

impl Handler<TransferLeader> for RaftNode {
    type Result = Result<(), EtcdError>;
    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) -> Self::Result {
        self.core.transfer_leader(msg.target)?;
        tracing::info!(to = %format!("{:x}", msg.target), "transferring leadership");
        self.queue_drive(ctx);
        Ok(())
    }
}

impl Handler<StepDown> for RaftNode {
    type Result = Option<u64>;
    fn handle(&mut self, _: StepDown, ctx: &mut Context<Self>) -> Self::Result {
        let target = self.core.best_transferee()?;
        self.core.transfer_leader(target).ok()?;
        tracing::info!(to = %format!("{target:x}"), "stopping: handing leadership over");
        self.queue_drive(ctx);
        Some(target)
    }
}

impl Handler<Shutdown> for RaftNode {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let (tx, rx) = oneshot::channel();
        if self.persisting {
            self.stop_waiters.push(tx);
        } else {
            let _ = tx.send(());
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

type ReadWaiter = oneshot::Sender<Result<u64, EtcdError>>;

/// Linearizable reads between their arrival and their read index.
#[derive(Default)]
struct PendingReads {
    /// Arrived since the last request: they share the next one (a read
    /// index obtained before a read arrived must not answer it).
    queued: Vec<ReadWaiter>,
    /// Requested from raft, by request ctx: the waiters and how many retry
    /// rounds (ticks) they have waited.
    issued: HashMap<u64, (Vec<ReadWaiter>, u32)>,
}

impl PendingReads {
    /// Moves the queued reads under `ctx` (unique, never reused).
    fn issue(&mut self, ctx: u64) {
        let waiters = std::mem::take(&mut self.queued);
        self.issued.insert(ctx, (waiters, 0));
    }

    /// raft answered `ctx` with `index` (answers for unknown ctxs, e.g. to
    /// a request re-issued after it was answered, are ignored).
    fn answer(&mut self, ctx: u64, index: u64) {
        if let Some((waiters, _)) = self.issued.remove(&ctx) {
            for tx in waiters {
                let _ = tx.send(Ok(index));
            }
        }
    }

    /// The ctxs to request again: those waiting for at least one tick whose
    /// callers have not given up (those that all have are forgotten).
    fn retry(&mut self) -> Vec<u64> {
        self.issued.retain(|_, (waiters, _)| {
            waiters.retain(|tx| !tx.is_closed());
            !waiters.is_empty()
        });
        let mut again = Vec::new();
        for (ctx, (_, rounds)) in self.issued.iter_mut() {
            *rounds += 1;
            if *rounds > 1 {
                again.push(*ctx);
            }
        }
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_reads_batch_answer_once_and_retry_until_given_up() {
        let mut reads = PendingReads::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        reads.queued.extend([tx1, tx2]);
        let (first, second) = (11, 12);
        reads.issue(first);
        // A read arriving after the request went out needs a new one.
        let (tx3, mut rx3) = oneshot::channel();
        reads.queued.push(tx3);
        reads.issue(second);

        // The tick right after issuing does not re-issue; the next ones do.
        assert!(reads.retry().is_empty());
        let mut again = reads.retry();
        again.sort_unstable();
        assert_eq!(again, vec![first, second]);

        reads.answer(first, 42);
        reads.answer(first, 43); // a re-issued request answered twice
        assert_eq!(rx1.try_recv(), Ok(Ok(42)));
        assert_eq!(rx2.try_recv(), Ok(Ok(42)));
        assert!(rx3.try_recv().is_err(), "second batch still waits");

        // Its caller gives up (request timeout): nothing left to retry.
        drop(rx3);
        assert!(reads.retry().is_empty());
        assert!(reads.issued.is_empty());
    }
}
