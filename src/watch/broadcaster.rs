//! The **WatchBroadcaster** actor: a thin shell around [`Hub`] on its own
//! arbiter.
//!
//! Takes [`Applied`] from Storage (`do_send`, so Storage never waits), and
//! from the gRPC Watch streams [`OpenStream`] → [`StreamId`], [`CloseStream`],
//! [`CreateWatch`], [`CancelWatch`], [`RequestProgress`] and
//! [`RestartWatchers`]. Sends [`super::Outbound`] items into each stream's
//! bounded channel (through the hub, with `try_send` only). Schedules the
//! hub's catch-up passes (right away while they make progress, every
//! [`RETRY_INTERVAL`] while the streams they wait on are full) and its
//! periodic progress notifications (`--watch-progress-notify-interval`).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::msg::{Applied, WATCH_MAILBOX_CAPACITY};
use crate::mvcc::Store;
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::supervise::Lifeline;

use super::hub::{Hub, SyncOutcome};
use super::{CtrlPermit, Outbound, StreamId};

/// How soon a catch-up pass is retried while every stream it waits on is full.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Registers a gRPC stream; its sender reads the channel behind `tx`.
#[derive(Message)]
#[rtype(result = "StreamId")]
pub struct OpenStream {
    pub tx: mpsc::Sender<Outbound>,
}

/// The stream ended (client gone, or its sender failed for good).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseStream(pub StreamId);

/// A WatchCreateRequest from the stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CreateWatch {
    pub stream: StreamId,
    pub req: WatchCreateRequest,
    pub permit: CtrlPermit,
}

/// A WatchCancelRequest from the stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelWatch {
    pub stream: StreamId,
    pub watch_id: i64,
    pub permit: CtrlPermit,
}

/// A WatchProgressRequest from the stream (or re-asked by its sender after a
/// restart made an earlier answer stale).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RequestProgress {
    pub stream: StreamId,
    pub permit: CtrlPermit,
}

/// The stream's sender failed delivering to these watchers: (watch id, epoch,
/// first revision not delivered). `generation` counts the sender's restarts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartWatchers {
    pub stream: StreamId,
    pub generation: u64,
    pub failed: Vec<(i64, u64, i64)>,
}

pub struct WatchBroadcaster {
    /// The watchers and the dispatch logic.
    hub: Hub,
    /// A catch-up pass is already scheduled.
    sync_scheduled: bool,
    /// How often watchers that asked for progress_notify get one.
    progress_interval: Duration,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl WatchBroadcaster {
    pub fn new(store: Arc<Store>, progress_interval: Duration) -> Self {
        WatchBroadcaster {
            hub: Hub::new(store),
            sync_scheduled: false,
            progress_interval,
            _lifeline: Lifeline::new("WatchBroadcaster"),
        }
    }

    fn schedule_sync(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        if self.sync_scheduled {
            return;
        }
        self.sync_scheduled = true;
        ctx.run_later(delay, |act, ctx| {
            act.sync_scheduled = false;
            let outcome = act.hub.sync();
            act.hub.publish_gauges();
            match outcome {
                SyncOutcome::Done => {}
                // Yield to the mailbox between passes (new batches, requests).
                SyncOutcome::Progressed => act.schedule_sync(ctx, Duration::ZERO),
                SyncOutcome::Blocked => act.schedule_sync(ctx, RETRY_INTERVAL),
            }
        });
    }
}

impl Actor for WatchBroadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(WATCH_MAILBOX_CAPACITY);
        if !self.progress_interval.is_zero() {
            ctx.run_interval(self.progress_interval, |act, _| act.hub.progress_tick());
        }
    }
}

impl Handler<Applied> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        crate::failpoint::hit("watch-applied");
        if self.hub.applied(msg.revision, msg.events) {
            self.schedule_sync(ctx, Duration::ZERO);
        }
        self.hub.publish_gauges();
    }
}

impl Handler<OpenStream> for WatchBroadcaster {
    type Result = StreamId;
    fn handle(&mut self, msg: OpenStream, _: &mut Context<Self>) -> StreamId {
        let id = self.hub.open_stream(msg.tx);
        self.hub.publish_gauges();
        id
    }
}

impl Handler<CloseStream> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: CloseStream, _: &mut Context<Self>) {
        self.hub.close_stream(msg.0);
        self.hub.publish_gauges();
    }
}

impl Handler<CreateWatch> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: CreateWatch, ctx: &mut Context<Self>) {
        let unsynced = self.hub.create(msg.stream, msg.req, msg.permit);
        self.hub.publish_gauges();
        if unsynced {
            self.schedule_sync(ctx, Duration::ZERO);
        }
    }
}

impl Handler<CancelWatch> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: CancelWatch, _: &mut Context<Self>) {
        self.hub.cancel(msg.stream, msg.watch_id, msg.permit);
        self.hub.publish_gauges();
    }
}

impl Handler<RequestProgress> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: RequestProgress, _: &mut Context<Self>) {
        self.hub.request_progress(msg.stream, msg.permit);
    }
}

impl Handler<RestartWatchers> for WatchBroadcaster {
    type Result = ();
    fn handle(&mut self, msg: RestartWatchers, ctx: &mut Context<Self>) {
        tracing::warn!(
            stream = msg.stream,
            watchers = msg.failed.len(),
            "restarting watchers after a sender failure"
        );
        if self.hub.restart(msg.stream, msg.generation, &msg.failed) {
            self.schedule_sync(ctx, Duration::ZERO);
        }
        self.hub.publish_gauges();
    }
}
