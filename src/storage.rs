//! The Storage actor: applies committed raft entries to the MVCC store.
//!
//! Takes [`ApplyCommitted`] from RaftNode (entries in log order), decodes each
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

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use tokio::sync::{oneshot, watch};

use crate::apply::apply_batch;
use crate::error::{fatal, StorageError};
use crate::lease::keeper::AppliedLeases;
use crate::mvcc::Store;
use crate::proto::cairnpb::InternalRequest;
use crate::proto::mvccpb::Event;
use crate::raft::client::Proposals;
use crate::raft::node::{LogFlushed, MAILBOX_CAPACITY};

/// Committed entries, in log order, from RaftNode.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyCommitted {
    pub entries: Vec<Entry>,
}

/// Tells Storage where to report flushed indexes (RaftNode starts after it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetFlushListener(pub Recipient<LogFlushed>);

/// What one applied batch changed, for watchers: every event in revision
/// order, and the store's revision after the batch (so a watcher can tell it
/// has seen everything up to there even when no event matched it).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Applied {
    pub revision: i64,
    pub events: Arc<Vec<Event>>,
}

/// Tells Storage where to send [`Applied`] (WatchBroadcaster starts after it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetApplyListener(pub Recipient<Applied>);

/// Tells Storage where to send [`AppliedLeases`]; must arrive before the
/// first ApplyCommitted (the server sends it before starting RaftNode).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLeaseListener(pub Recipient<AppliedLeases>);

/// Make everything applied so far durable now (graceful shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct FlushNow;

pub struct StorageActor {
    /// The MVCC store, shared with readers on gRPC threads.
    store: Arc<Store>,
    /// Waiters of this member's proposals.
    proposals: Arc<Proposals>,
    /// Publishes the applied index.
    applied_tx: watch::Sender<u64>,
    /// RaftNode, told how far the log may be truncated.
    flush_listener: Option<Recipient<LogFlushed>>,
    /// WatchBroadcaster, told what every applied batch changed.
    apply_listener: Option<Recipient<Applied>>,
    /// LeaseKeeper, told about grants, revokes and leader no-op entries.
    lease_listener: Option<Recipient<AppliedLeases>>,
    /// Lease grants below this TTL (seconds) are raised to it.
    min_lease_ttl: i64,
    /// --quota-backend-bytes.
    quota_bytes: u64,
    /// This member's id, recorded with alarms it raises.
    member_id: u64,
    /// Applied index covered by the last completed flush.
    flushed: u64,
    /// A flush is running on a blocking thread.
    flushing: bool,
    /// How often to flush the state store.
    flush_interval: Duration,
}

impl StorageActor {
    pub fn new(
        store: Arc<Store>,
        proposals: Arc<Proposals>,
        applied_tx: watch::Sender<u64>,
        quota_bytes: u64,
        member_id: u64,
        min_lease_ttl: i64,
        flush_interval: Duration,
    ) -> StorageActor {
        let flushed = store.applied_index();
        StorageActor {
            store,
            proposals,
            applied_tx,
            flush_listener: None,
            apply_listener: None,
            lease_listener: None,
            min_lease_ttl,
            quota_bytes,
            member_id,
            flushed,
            flushing: false,
            flush_interval,
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        let mut leader_noop_term = None;
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && e.data.is_empty() {
                leader_noop_term = Some(e.term);
            }
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                // Leader no-op entries; conf changes arrive with clustering.
                ids.push(None);
                batch.push((e.index, None));
                continue;
            }
            let req = InternalRequest::decode(&e.data[..]).map_err(|err| {
                StorageError::corrupt("raft entry", format!("index {}: {err}", e.index))
            })?;
            ids.push(Some(req.id));
            batch.push((e.index, req.request));
        }
        tracing::trace!(last, count = batch.len(), "applying committed entries");
        let out = apply_batch(
            &self.store,
            batch,
            self.quota_bytes,
            self.member_id,
            self.min_lease_ttl,
        )?;
        if let Some(listener) = &self.lease_listener {
            if !out.lease_changes.is_empty() || leader_noop_term.is_some() {
                listener.do_send(AppliedLeases {
                    changes: out.lease_changes,
                    leader_noop_term,
                });
            }
        }
        if let Some(listener) = &self.apply_listener {
            if !out.events.is_empty() {
                listener.do_send(Applied {
                    revision: self.store.current_revision(),
                    events: Arc::new(out.events),
                });
            }
        }
        for (id, result) in ids.into_iter().zip(out.results) {
            if let (Some(id), Some(result)) = (id, result) {
                self.proposals.complete(id, result);
            }
        }
        // Only ever forward (entries skipped as already applied may be
        // older). A borrow() guard must not be held across a send: that
        // deadlocks on the channel's own lock.
        self.applied_tx.send_if_modified(|applied| {
            let advanced = last > *applied;
            if advanced {
                *applied = last;
            }
            advanced
        });
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
        let job = async move { tokio::task::spawn_blocking(move || backend.flush()).await };
        ctx.spawn(job.into_actor(self).map(move |r, act, _| {
            act.flushing = false;
            let r = match r {
                Ok(Ok(())) => {
                    act.flushed = applied;
                    if let Some(l) = &act.flush_listener {
                        l.do_send(LogFlushed {
                            applied_index: applied,
                        });
                    }
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
        ctx.run_interval(self.flush_interval, |act, ctx| act.maybe_flush(ctx, None));
    }
}

impl Handler<ApplyCommitted> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: ApplyCommitted, _: &mut Context<Self>) {
        if let Err(e) = self.apply(msg.entries) {
            fatal("applying committed entries", &e);
        }
    }
}

impl Handler<SetFlushListener> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: SetFlushListener, _: &mut Context<Self>) {
        self.flush_listener = Some(msg.0);
    }
}

impl Handler<SetApplyListener> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: SetApplyListener, _: &mut Context<Self>) {
        self.apply_listener = Some(msg.0);
    }
}

impl Handler<SetLeaseListener> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: SetLeaseListener, _: &mut Context<Self>) {
        self.lease_listener = Some(msg.0);
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
