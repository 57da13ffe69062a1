//! The RaftNode actor: the only owner of consensus state.
//!
//! Takes [`Propose`] (from the gRPC layer, through [`super::proposal`]),
//! [`ReadIndex`] (linearizable reads), [`Step`] (messages from peers) and
//! [`LogFlushed`] (from Storage: how far the log may be truncated). Sends
//! committed entries to the Storage actor as `ApplyCommitted`, and raft
//! messages to peers through a [`Transport`].
//!
//! Write path position: client → gRPC → **RaftNode** (append, one fsync per
//! Ready on a blocking thread) → Storage (apply) → client answered.
//! The fsync never runs on this actor's arbiter thread: while a persist is in
//! flight the actor keeps taking proposals, ticks and peer messages, which
//! all join the next Ready.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::core::{truncation_point, Core, ReadyWork};
use super::log_store::LogStore;
use super::transport::Transport;
use crate::error::{fatal, EtcdError};
use crate::msg::{
    ApplyCommitted, LogFlushed, Proposals, Propose, RaftStatus, ReadIndex, Shutdown, Step,
    MAILBOX_CAPACITY,
};
use crate::supervise::Lifeline;

/// Entries kept behind the flushed index so a slow follower can catch up
/// from the log instead of needing a snapshot (etcd keeps 5000 too).
const CATCH_UP_ENTRIES: u64 = 5000;

#[derive(Message)]
#[rtype(result = "()")]
struct Drive;

pub struct RaftNode {
    /// Consensus state; plain code, see `core`.
    core: Core,
    /// Shared handle on the log, for persists on blocking threads.
    log: LogStore,
    /// Where committed entries go, in order.
    storage: Recipient<ApplyCommitted>,
    /// Proposers' waiters, told when raft refuses their proposal.
    proposals: Arc<Proposals>,
    /// Outgoing raft messages.
    transport: Box<dyn Transport>,
    /// Published progress.
    status: Arc<RaftStatus>,
    /// True while a Ready's persist runs: at most one Ready in flight.
    persisting: bool,
    /// Reads waiting for the leader to commit in its term.
    pending_reads: Vec<oneshot::Sender<Result<u64, EtcdError>>>,
    /// A Drive is already queued; avoid queueing one per proposal.
    drive_queued: bool,
    /// Tick period (etcd's --heartbeat-interval).
    tick_interval: Duration,
    /// Log length that triggers truncation (etcd's --snapshot-count).
    snapshot_count: u64,
    /// A log truncation runs on a blocking thread.
    compacting: bool,
    /// Set by Shutdown: new proposals are refused.
    stopping: bool,
    /// Shutdown callers waiting for the in-flight persist.
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl RaftNode {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        storage: Recipient<ApplyCommitted>,
        proposals: Arc<Proposals>,
        transport: Box<dyn Transport>,
        status: Arc<RaftStatus>,
        tick_interval: Duration,
        snapshot_count: u64,
    ) -> RaftNode {
        let log = core.store().clone();
        RaftNode {
            core,
            log,
            storage,
            proposals,
            transport,
            status,
            persisting: false,
            pending_reads: Vec::new(),
            drive_queued: false,
            tick_interval,
            snapshot_count,
            compacting: false,
            stopping: false,
            stop_waiters: Vec::new(),
            _lifeline: Lifeline::new("RaftNode"),
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
            self.transport.send(msgs);
        }
        if !entries.is_empty() {
            tracing::trace!(
                first = entries[0].index,
                count = entries.len(),
                "handing committed entries to storage"
            );
            self.storage.do_send(ApplyCommitted { entries });
        }
    }

    fn after_progress(&mut self) {
        self.status.publish(self.core.progress());
        if !self.pending_reads.is_empty() {
            if let Some(index) = self.core.read_index() {
                for tx in self.pending_reads.drain(..) {
                    let _ = tx.send(Ok(index));
                }
            }
        }
        if self.stopping && !self.persisting {
            for tx in self.stop_waiters.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// One step of the Ready loop: hand out what is safe now, persist the
    /// rest off-thread, and continue when the persist is done.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.persisting {
            return;
        }
        let mut work = match self.core.begin_ready() {
            Ok(Some(work)) => work,
            Ok(None) => {
                self.after_progress();
                return;
            }
            Err(e) => fatal("handling a raft Ready", &e),
        };
        let send_now = std::mem::take(&mut work.send_now);
        let apply = std::mem::take(&mut work.apply);
        self.hand_off(send_now, apply);
        if work.nothing_to_persist() {
            self.finish(work, ctx);
            return;
        }
        self.persisting = true;
        let log = self.log.clone();
        let job = async move {
            tokio::task::spawn_blocking(move || {
                let r = Core::persist(&log, &work);
                (work, r)
            })
            .await
        };
        ctx.spawn(job.into_actor(self).map(|joined, act, ctx| {
            act.persisting = false;
            match joined {
                Ok((work, Ok(()))) => act.finish(work, ctx),
                Ok((_, Err(e))) => fatal("persisting the raft log", &e),
                Err(e) => fatal("persisting the raft log (task)", &e),
            }
        }));
    }

    fn finish(&mut self, work: ReadyWork, ctx: &mut Context<Self>) {
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
            act.core.tick();
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
        // Not yet committed in this term (or not leader): wait for the next
        // Ready. Callers bound the wait with their request timeout.
        let (tx, rx) = oneshot::channel();
        self.pending_reads.push(tx);
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
            CATCH_UP_ENTRIES,
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
