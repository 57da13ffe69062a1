//! etcd's Watch service: one bidirectional stream carries many watches.
//!
//! Each stream runs three tasks:
//!
//! ```text
//!  client ──WatchRequest──▶ recv task ──CreateWatch / CancelWatch / RequestProgress──▶ WatchBroadcaster
//!                              (waits for one of CTRL_BUFFER permits first: a client that
//!                               floods requests without reading is slowed down, as in etcd)
//!  client ◀─WatchResponse── tonic ◀── Replies ◀── sender task ◀── bounded Outbound channel ◀── WatchBroadcaster
//!                                     (one batch per item:   (header, prev_kv, fragment;
//!                                      GRPC_BUFFER of them)   tracks what it delivered)
//!  supervisor: ends the stream when the client goes away, a task fails for good
//!              or the server shuts down, and tells the broadcaster (CloseStream)
//! ```
//!
//! **Supervision.** The sender delivers each queued item under
//! `catch_unwind`. If delivering event responses panics, the stream is not
//! torn down: the sender marks the failed watchers' epochs as dead (their
//! already-queued responses are dropped), and asks the broadcaster to
//! restart each from the revision after the last one it delivered to the
//! client ([`RestartWatchers`]); the broadcaster replays that from history in
//! a new epoch. Nothing else is disturbed: other watchers of the stream and
//! of other streams, the raft log and the store never see the failure. A
//! panic while sending a control response (whose loss cannot be repaired by a
//! replay), or outside any response, ends the stream with UNAVAILABLE, which
//! etcd clients answer by re-creating their watches from their last revision.
//! The failpoint in `crate::watch::failpoint` triggers the first case in tests.
//!
//! Behaviour follows etcd's `v3rpc/watch.go`: a create is answered with
//! `created: true` (or created-and-canceled with watch id -1 and etcd's
//! reason), a cancel with `canceled: true`, a progress request with watch id
//! -1 once every watch of the stream is synced; a client half-close keeps
//! the stream sending; fragmenting splits a response only at event
//! boundaries, with `fragment: true` on all parts but the last.
//!
//! **Encoding.** The stream carries [`WatchReply`] rather than
//! `WatchResponse` (the service is declared in `build.rs` for that): an
//! event response copies its events' bytes, encoded once per shared event
//! list, instead of cloning and encoding every event for every watcher. The
//! bytes on the wire are the same (see [`reply`]). The replies of one queued
//! item reach tonic as one batch ([`Replies`]), so they are encoded into one
//! buffer and written together.

mod reply;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix::Addr;
use futures::Stream;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::{Api, GRPC_OVERHEAD_BYTES};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::proto::watch_wire::watch_server::Watch;
use crate::supervise::restartable;
use crate::watch::broadcaster::{
    CancelWatch, CloseStream, CreateWatch, OpenStream, RequestProgress, RestartWatchers,
};
use crate::watch::{
    failpoint, outbound_channel, Outbound, StreamId, WatchBroadcaster, CTRL_BUFFER,
};

pub use reply::{fragments, EncodedHeader, WatchReply};

/// Batches of replies (one per queued item) buffered between the sender
/// task and tonic. Small: once the client stops reading, the backlog should
/// build up in the broadcaster's channel, where it turns the stream's
/// watchers unsynced.
const GRPC_BUFFER: usize = 2;

/// What the sender hands tonic at once: the replies of one queued item, or
/// the error that ends the stream.
type Batch = Result<Vec<WatchReply>, Status>;

/// The stream tonic sends: the sender's batches, a reply at a time. A batch
/// crosses the channel as one item, and tonic then finds all its replies
/// ready and encodes them into one buffer, so a batch of event responses
/// costs one channel hand-over and about one HTTP/2 frame and socket write,
/// not one per watcher.
pub struct Replies {
    rx: mpsc::Receiver<Batch>,
    /// What is left of the batch being sent.
    batch: std::vec::IntoIter<WatchReply>,
}

impl Stream for Replies {
    type Item = Result<WatchReply, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(reply) = self.batch.next() {
                return Poll::Ready(Some(Ok(reply)));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(batch)) => self.batch = batch.into_iter(),
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => return Poll::Ready(None),
            }
        }
    }
}

pub struct WatchService {
    api: Api,
    broadcaster: Addr<WatchBroadcaster>,
    /// Responses larger than this are split when the watch asked for
    /// fragments: --max-request-bytes plus gRPC's overhead, as etcd.
    max_response_bytes: usize,
    /// Turns true when the server shuts down: every stream then ends with
    /// `etcdserver: server stopped` (a graceful shutdown would otherwise
    /// wait forever for watch streams to finish).
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl WatchService {
    pub fn new(
        api: Api,
        broadcaster: Addr<WatchBroadcaster>,
        max_request_bytes: usize,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        WatchService {
            api,
            broadcaster,
            max_response_bytes: max_request_bytes + GRPC_OVERHEAD_BYTES,
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Replies;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let denials = Denials {
            api: self.api.clone(),
            creds: crate::auth::Credentials::of(&req),
        };
        let inbound = req.into_inner();
        let (tx, rx) = outbound_channel();
        let stream = self
            .broadcaster
            .send(OpenStream { tx })
            .await
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        let (out_tx, out_rx) = mpsc::channel(GRPC_BUFFER);
        let sender = Sender {
            stream,
            out: out_tx.clone(),
            api: self.api.clone(),
            broadcaster: self.broadcaster.clone(),
            max_bytes: self.max_response_bytes,
            delivered: HashMap::new(),
            dead_epochs: HashSet::new(),
            generation: 0,
            last_header: None,
        };
        tokio::spawn(supervise(
            stream,
            (inbound, denials),
            rx,
            sender,
            out_tx,
            self.broadcaster.clone(),
            self.stopping.clone(),
        ));
        Ok(Response::new(Replies {
            rx: out_rx,
            batch: Vec::new().into_iter(),
        }))
    }
}

/// Runs a stream's receive and send tasks until the stream is over, then
/// unregisters it.
async fn supervise(
    stream: StreamId,
    (inbound, denials): (Streaming<WatchRequest>, Denials),
    rx: mpsc::Receiver<Outbound>,
    sender: Sender,
    out: mpsc::Sender<Batch>,
    broadcaster: Addr<WatchBroadcaster>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let ctrl = Arc::new(Semaphore::new(CTRL_BUFFER));
    // Both halves are restartable parts (crate::supervise): a panic ends
    // this stream with an error the client can re-watch from, and nothing
    // else; the sender also restarts its watchers itself (Sender::run).
    let mut send_task = tokio::spawn(restartable(sender.run(rx)));
    let mut recv_task = tokio::spawn(restartable(receive(
        stream,
        inbound,
        broadcaster.clone(),
        ctrl,
        (denials, out.clone()),
    )));
    let mut receiving = true;
    loop {
        tokio::select! {
            r = &mut send_task => {
                let failure = match r {
                    Ok(Ok(Ok(()))) => None,
                    Ok(Ok(Err(why))) => Some(why),
                    Ok(Err(panic)) => Some(format!("sender task panicked: {panic}")),
                    Err(_) => None,
                };
                if let Some(why) = failure {
                    tracing::error!(stream, cause = %why, "watch stream failed; ending it");
                    let _ = out.try_send(Err(Status::unavailable(format!("cairn: watch stream failed: {why}"))));
                }
                break;
            }
            r = &mut recv_task, if receiving => match r {
                // Half-close: etcd keeps sending events.
                Ok(Ok(Ok(()))) => receiving = false,
                Ok(Ok(Err(status))) => {
                    tracing::debug!(stream, cause = %status, "watch stream receive ended");
                    break;
                }
                Ok(Err(panic)) => {
                    tracing::error!(stream, cause = %panic, "watch receive task panicked; ending the stream");
                    break;
                }
                Err(_) => break,
            },
            _ = out.closed() => break,
            _ = stopping.wait_for(|stop| *stop) => {
                let _ = out.try_send(Err(EtcdError::Stopped.into()));
                break;
            }
        }
    }
    send_task.abort();
    recv_task.abort();
    broadcaster.do_send(CloseStream(stream));
}

/// Forwards the client's requests to the broadcaster, one control permit each.
async fn receive(
    stream: StreamId,
    mut inbound: Streaming<WatchRequest>,
    broadcaster: Addr<WatchBroadcaster>,
    ctrl: Arc<Semaphore>,
    (denials, out): (Denials, mpsc::Sender<Batch>),
) -> Result<(), Status> {
    while let Some(req) = inbound.message().await? {
        // Like etcd, an empty or unknown request is ignored.
        let Some(union) = req.request_union else {
            continue;
        };
        let permit = Some(
            ctrl.clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::from(EtcdError::Stopped))?,
        );
        let sent = match union {
            RequestUnion::CreateRequest(req) => {
                if let Some(refused) = denials.refuse(&req) {
                    out.send(Ok(vec![refused.into()]))
                        .await
                        .map_err(|_| Status::from(EtcdError::Stopped))?;
                    continue;
                }
                broadcaster
                    .send(CreateWatch {
                        stream,
                        req,
                        permit,
                    })
                    .await
            }
            RequestUnion::CancelRequest(c) => {
                broadcaster
                    .send(CancelWatch {
                        stream,
                        watch_id: c.watch_id,
                        permit,
                    })
                    .await
            }
            RequestUnion::ProgressRequest(_) => {
                broadcaster.send(RequestProgress { stream, permit }).await
            }
        };
        sent.map_err(|_| Status::from(EtcdError::Stopped))?;
    }
    Ok(())
}

/// What a stream's creates are checked with (etcd's `isWatchPermitted`):
/// the stream's credentials (token, or certificate Common Name), read once
/// when it opened and judged against the auth store of each create.
struct Denials {
    api: Api,
    creds: crate::auth::Credentials,
}

impl Denials {
    /// The answer to a create the caller may not make: created and canceled,
    /// watch id -1, the reason as etcd writes it (a Go status's text).
    fn refuse(
        &self,
        req: &crate::proto::etcdserverpb::WatchCreateRequest,
    ) -> Option<WatchResponse> {
        let denied = self.api.auth.caller(&self.creds).and_then(|c| {
            let key: &[u8] = if req.key.is_empty() { &[0] } else { &req.key };
            c.check_range(key, &req.range_end, crate::auth::Access::Read)
        });
        let e = denied.err()?;
        Some(WatchResponse {
            header: Some(self.api.header(0)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: format!("rpc error: code = {:?} desc = {e}", e.code()),
            ..Default::default()
        })
    }
}

/// The client is gone: nothing more can be delivered.
struct Gone;

/// A stream's sending side. See the module documentation.
struct Sender {
    stream: StreamId,
    out: mpsc::Sender<Batch>,
    api: Api,
    broadcaster: Addr<WatchBroadcaster>,
    max_bytes: usize,
    /// Watch id → the revision up to which the client has every event.
    delivered: HashMap<i64, i64>,
    /// Epochs of watchers restarted after a failure: what they still have
    /// queued is dropped (the restart replays it).
    dead_epochs: HashSet<u64>,
    /// Restarts asked for so far.
    generation: u64,
    /// The last header encoded for event replies: all of a batch's share it.
    last_header: Option<(ResponseHeader, EncodedHeader)>,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Outbound>) -> Result<(), String> {
        while let Some(item) = rx.recv().await {
            let watchers: Option<Vec<(i64, u64)>> = match &item {
                Outbound::Events(responses) => {
                    Some(responses.iter().map(|r| (r.watch_id, r.epoch)).collect())
                }
                _ => None,
            };
            match crate::supervise::restartable(self.deliver(item)).await {
                Ok(Ok(())) => {}
                Ok(Err(Gone)) => return Ok(()),
                Err(cause) => {
                    let Some(watchers) = watchers else {
                        return Err(format!("control response lost: {cause}"));
                    };
                    self.restart(watchers, &cause);
                }
            }
        }
        // The broadcaster dropped the stream (it is shutting down).
        Ok(())
    }

    /// Asks the broadcaster to restart these watchers after the last
    /// revision each had delivered.
    fn restart(&mut self, watchers: Vec<(i64, u64)>, cause: &str) {
        self.generation += 1;
        let failed: Vec<(i64, u64, i64)> = watchers
            .into_iter()
            .filter(|(_, epoch)| self.dead_epochs.insert(*epoch))
            .map(|(id, epoch)| {
                let from = self.delivered.get(&id).copied().unwrap_or(0) + 1;
                (id, epoch, from)
            })
            .collect();
        tracing::error!(
            stream = self.stream,
            watchers = ?failed,
            cause,
            "watch sender panicked; restarting its watchers from their last delivered revision"
        );
        self.broadcaster.do_send(RestartWatchers {
            stream: self.stream,
            generation: self.generation,
            failed,
        });
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            ..self.api.header(revision.max(1))
        })
    }

    /// The header of an event reply at `revision`, encoded.
    fn encoded_header(&mut self, revision: i64) -> EncodedHeader {
        let header = self.header(revision).unwrap_or_default();
        match self.last_header {
            Some((h, encoded)) if h == header => encoded,
            _ => {
                let encoded = EncodedHeader::new(&header);
                self.last_header = Some((header, encoded));
                encoded
            }
        }
    }

    async fn send(&self, reply: impl Into<WatchReply>) -> Result<(), Gone> {
        self.send_all(vec![reply.into()]).await
    }

    async fn send_all(&self, replies: Vec<WatchReply>) -> Result<(), Gone> {
        self.out.send(Ok(replies)).await.map_err(|_| Gone)
    }

    async fn deliver(&mut self, item: Outbound) -> Result<(), Gone> {
        match item {
            Outbound::Created {
                watch_id,
                revision,
                delivered,
                _permit,
            } => {
                self.delivered.insert(watch_id, delivered);
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    created: true,
                    ..Default::default()
                })
                .await
            }
            Outbound::CreateFailed {
                revision,
                reason,
                _permit,
            } => {
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await
            }
            Outbound::Canceled {
                watch_id,
                revision,
                _permit,
            } => {
                self.delivered.remove(&watch_id);
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Outbound::Compacted {
                watch_id,
                compact_revision,
            } => {
                self.delivered.remove(&watch_id);
                // etcd's compaction response comes from its sync loop with
                // no revision of its own: header revision 0.
                self.send(WatchResponse {
                    header: self.header(0),
                    watch_id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                })
                .await
            }
            Outbound::Progress {
                watch_id,
                revision,
                epoch,
                generation,
                _permit,
            } => {
                if watch_id == -1 && generation < self.generation {
                    // Answered before a restart rewound some watchers: ask
                    // again, the answer then waits for their replay.
                    self.broadcaster.do_send(RequestProgress {
                        stream: self.stream,
                        permit: None,
                    });
                    return Ok(());
                }
                if epoch.is_some_and(|e| self.dead_epochs.contains(&e)) {
                    return Ok(());
                }
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    ..Default::default()
                })
                .await
            }
            Outbound::Events(responses) => {
                let mut replies = Vec::with_capacity(responses.len());
                let mut through = Vec::with_capacity(responses.len());
                for r in responses {
                    if self.dead_epochs.contains(&r.epoch) {
                        continue;
                    }
                    failpoint::sender_panic(
                        r.watch_id,
                        r.selection
                            .events()
                            .filter_map(|e| e.kv.as_ref())
                            .map(|kv| kv.key.as_slice()),
                    );
                    // Encoded once per selection, by whichever stream's
                    // sender gets there first; copied here.
                    let events = r.selection.encoded(r.prev_kv);
                    let header = self.encoded_header(r.revision);
                    if r.fragment {
                        replies.extend(fragments(header, r.watch_id, events, self.max_bytes));
                    } else {
                        replies.push(WatchReply::events(header, r.watch_id, events));
                    }
                    through.push((r.watch_id, r.through));
                }
                // All or nothing: if building a reply panicked, none of the
                // item went out and its watchers restart from before it.
                if !replies.is_empty() {
                    self.send_all(replies).await?;
                }
                self.delivered.extend(through);
                Ok(())
            }
        }
    }
}
