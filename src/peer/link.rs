//! The PeerLink actor: delivers this member's raft messages to one remote
//! member, and restarts its own sender when it fails.
//!
//! ```text
//!  RaftNode ─ PeerTransport::send ─ try_send ─▶ queue (4096) ─▶ sender task ── Raft stream ──▶ remote member
//!                                     full ⇒ dropped,           │ connect (1 s timeout), batch what is queued
//!                                     report_unreachable        │ error, stream end or PANIC
//!                                                               ▼
//!                               PeerLink (supervisor): log, report the member unreachable to raft,
//!                               wait a jittered backoff (50 ms doubling to 1 s; reset after a
//!                               stream that worked for over 1 s; cut short when the remote member
//!                               opens a stream to this one: it is up), start a new sender on the
//!                               same queue (a failed connect drops what was queued: stale by then)
//! ```
//!
//! The sender runs as a future inside the actor's context, wrapped in
//! `supervise::restartable` (catch_unwind, and the panic hook lets the
//! process live). That is what makes the restart real: a panic inside an
//! actix handler would kill the actor silently, and actix's `Supervisor`
//! restarts only actors that *stop*. Here a panic ends the future with an
//! error, the actor stays, and nothing outside the link notices: RaftNode
//! keeps ticking and the other links keep sending. The queue outlives every
//! sender (it sits behind an async mutex the sender holds while it runs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;

use super::LinkState;
use crate::msg::ReportUnreachable;
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::RaftBatch;

/// Messages queued per link before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// A batch holds at most this many messages...
const BATCH_MESSAGES: usize = 512;
/// ... and about this many bytes (one more message may push it over).
const BATCH_BYTES: usize = 4 << 20;
/// Largest batch a member accepts (a message may carry 1 MiB of entries,
/// or one entry of up to --max-request-bytes).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub type Queue = Arc<Mutex<mpsc::Receiver<raft::eraftpb::Message>>>;

/// Where a link sends, and as whom.
#[derive(Clone)]
pub struct Target {
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
    /// The remote member's peer URLs; attempts go round them.
    pub urls: Vec<String>,
    /// How to dial them: plain TCP, or TLS for `https://` peer URLs
    /// (`--peer-cert-file` …).
    pub connector: crate::tls::client::Connector,
}

/// How a member dials another's peer URL: a short connect timeout, and
/// HTTP/2 keep-alives, so a member that vanishes without closing its
/// connections (a partition, a frozen host) is noticed within
/// `keep_alive_timeout` and a second.
pub fn peer_endpoint(
    url: &str,
    keep_alive_timeout: Duration,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(keep_alive_timeout)
        .keep_alive_while_idle(true))
}

/// Now, in milliseconds since the Unix epoch (never 0).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Why a sender stopped.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("stream to {url} failed: {status}")]
    Stream { url: String, status: tonic::Status },
    #[error("stream to {url} ended by the remote member")]
    Ended { url: String },
}

pub struct PeerLink {
    target: Target,
    queue: Queue,
    raft: Recipient<ReportUnreachable>,
    /// The next restart's delay before jitter.
    backoff: Duration,
    /// Which of the target's URLs the next attempt uses.
    attempt: usize,
    /// `since` is set by the sender once its stream is up (it resets the
    /// backoff); `heard` cuts a backoff short.
    state: Arc<LinkState>,
    /// Jitter source (xorshift; the exact values do not matter).
    rng: u64,
}

impl PeerLink {
    /// `state` is shared with the member directory: when the link's stream
    /// came up (etcd's "active since", for reconfiguration checks), and the
    /// peer service's word that the remote member is up.
    pub fn new(
        target: Target,
        queue: Queue,
        raft: Recipient<ReportUnreachable>,
        state: Arc<LinkState>,
    ) -> PeerLink {
        let seed = target.from ^ target.to.rotate_left(17) ^ std::process::id() as u64;
        PeerLink {
            target,
            queue,
            raft,
            backoff: FIRST_BACKOFF,
            attempt: 0,
            state,
            rng: seed | 1,
        }
    }

    /// A delay in [backoff/2, backoff], then doubles the backoff up to the cap.
    fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.backoff / 2;
        let jitter = half.mul_f64((self.rng % 1000) as f64 / 1000.0);
        let delay = half + jitter;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        delay
    }

    /// Starts a sender task; when it ends, however it ends, schedules the next.
    fn launch(&mut self, ctx: &mut Context<Self>) {
        let url = self.target.urls[self.attempt % self.target.urls.len()].clone();
        self.attempt = self.attempt.wrapping_add(1);
        self.state.since.store(0, Ordering::Relaxed);
        let sender = send_loop(
            self.target.clone(),
            url,
            self.queue.clone(),
            self.state.clone(),
        );
        // A restartable part (crate::supervise): a panic ends this future
        // and the link starts a new one; the process lives on.
        let guarded = crate::supervise::restartable(sender);
        let launched = std::time::Instant::now();
        ctx.spawn(guarded.into_actor(self).map(move |ended, act, ctx| {
            let to = format!("{:x}", act.target.to);
            match ended {
                Ok(Ok(())) => return, // the transport is gone: shutting down
                Ok(Err(e)) => {
                    if let LinkError::Stream { status, .. } = &e {
                        if status.message() == super::service::MEMBER_REMOVED {
                            // A member removed while it was away (or before it
                            // applied its own removal) learns it here.
                            tracing::warn!(
                                remote_peer_id = %to,
                                "the member has been permanently removed from the cluster; stopping"
                            );
                            crate::supervise::request_stop();
                        }
                        if status.message() == super::service::CLUSTER_ID_MISMATCH {
                            tracing::error!(
                                remote_peer_id = %to,
                                local_member_cluster_id = %format!("{:x}", act.target.cluster_id),
                                "request sent was ignored by remote peer due to cluster ID mismatch"
                            );
                        }
                    }
                    if act.state.since.load(Ordering::Relaxed) != 0 {
                        tracing::warn!(remote_peer_id = %to, cause = %e, "lost the stream to the remote peer; reconnecting");
                    } else {
                        tracing::debug!(remote_peer_id = %to, cause = %e, "peer link still down; retrying");
                    }
                }
                Err(what) => {
                    tracing::error!(remote_peer_id = %to, panic = %what, "peer link sender panicked; restarting it");
                }
            }
            // etcd counts each failed write to a peer; here each failed
            // stream (or connect), which is what its members-down alert reads.
            crate::io_metrics::peer_failure(&crate::io_metrics::PEER_SENT_FAILURES, act.target.to);
            // A stream that carried batches for a while was healthy: retry
            // fast. One refused at once (another cluster) keeps backing off.
            if act.state.since.load(Ordering::Relaxed) != 0 && launched.elapsed() > MAX_BACKOFF {
                act.backoff = FIRST_BACKOFF;
            }
            // Down until the next stream is up.
            act.state.since.store(0, Ordering::Relaxed);
            crate::io_metrics::peer_active(act.target.from, act.target.to, false);
            // What was in flight is lost: raft-rs should probe the member
            // again rather than assume its stream of appends arrived.
            let _ = act.raft.try_send(ReportUnreachable { id: act.target.to });
            let delay = act.next_delay();
            let state = act.state.clone();
            let wait = async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = state.heard.notified() => true,
                }
            };
            ctx.spawn(wait.into_actor(act).map(|heard, act, ctx| {
                if heard {
                    tracing::debug!(remote_peer_id = %format!("{:x}", act.target.to), "the remote member is up; dialing it now");
                    act.backoff = FIRST_BACKOFF;
                }
                act.launch(ctx);
            }));
        }));
    }
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(remote_peer_id = %format!("{:x}", self.target.to), urls = ?self.target.urls, "peer link started");
        self.launch(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        crate::io_metrics::peer_gone(self.target.from, self.target.to);
    }
}

/// Connects, opens the Raft stream and feeds it from the queue until
/// something fails. Returns Ok only when the queue's sender (the transport)
/// is gone.
async fn send_loop(
    target: Target,
    url: String,
    queue: Queue,
    state: Arc<LinkState>,
) -> Result<(), LinkError> {
    let mut queue = queue.lock_owned().await;
    let connect_err = |cause: String| LinkError::Connect {
        url: url.clone(),
        cause,
    };
    let endpoint =
        peer_endpoint(&url, Duration::from_secs(3)).map_err(|e| connect_err(e.to_string()))?;
    let channel = match endpoint
        .connect_with_connector(target.connector.clone())
        .await
    {
        Ok(channel) => channel,
        Err(e) => {
            // Messages queued for a member that cannot be reached are stale
            // by the time it can: drop them (raft resends what matters).
            while queue.try_recv().is_ok() {}
            return Err(connect_err(format!("{e:?}")));
        }
    };
    let mut client = PeerClient::new(channel).max_encoding_message_size(MAX_BATCH_BYTES);
    let (tx, rx) = mpsc::channel::<RaftBatch>(4);
    let call = client.raft(ReceiverStream::new(rx));
    let pump = async {
        // The stream opens with an empty batch: the remote member checks the
        // cluster and member ids at once, and the link counts as up (etcd's
        // peer streams are up whether or not messages flow: two followers
        // exchange none, yet a member add checks that every voter is
        // reachable, see grpc::cluster's check_reconfig).
        let mut hello = Some(RaftBatch {
            cluster_id: target.cluster_id,
            from: target.from,
            to: target.to,
            messages: Vec::new(),
        });
        loop {
            let batch = match hello.take() {
                Some(hello) => hello,
                None => match next_batch(&target, &mut queue).await {
                    Some(batch) => batch,
                    None => return Ok(()),
                },
            };
            super::failpoint::link_panic(target.to);
            crate::failpoint::hit("peer-link-send");
            let bytes = batch.messages.iter().map(Vec::len).sum();
            if tx.send(batch).await.is_err() {
                // The call ended: its outcome says why.
                return std::future::pending().await;
            }
            crate::io_metrics::peer_bytes(&crate::io_metrics::PEER_SENT, target.to, bytes);
            if state
                .since
                .compare_exchange(0, now_millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(remote_peer_id = %format!("{:x}", target.to), %url, "peer link connected");
                crate::io_metrics::peer_active(target.from, target.to, true);
            }
        }
    };
    tokio::select! {
        r = pump => r,
        r = call => Err(match r {
            Ok(_) => LinkError::Ended { url },
            Err(status) => LinkError::Stream { url, status },
        }),
    }
}

/// Waits for the next message, then takes whatever else is queued, up to a
/// batch's limits. None when the transport is gone.
async fn next_batch(
    target: &Target,
    queue: &mut mpsc::Receiver<raft::eraftpb::Message>,
) -> Option<RaftBatch> {
    let first = queue.recv().await?;
    let mut batch = RaftBatch {
        cluster_id: target.cluster_id,
        from: target.from,
        to: target.to,
        messages: Vec::new(),
    };
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(m) = next.take() {
        match m.write_to_bytes() {
            Ok(b) => {
                bytes += b.len();
                batch.messages.push(b);
            }
            Err(e) => tracing::error!(cause = %e, "cannot encode a raft message; dropped"),
        }
        if batch.messages.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
            next = queue.try_recv().ok();
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_doubles_and_is_capped() {
        let (_tx, rx) = mpsc::channel(1);
        let target = Target {
            cluster_id: 1,
            from: 1,
            to: 2,
            urls: vec!["http://127.0.0.1:1".into()],
            connector: crate::tls::client::Connector::plain(),
        };
        let sys = actix::System::new();
        sys.block_on(async move {
            let raft = Dummy.start().recipient();
            let mut link = PeerLink::new(
                target,
                Arc::new(Mutex::new(rx)),
                raft,
                Arc::new(LinkState::default()),
            );
            let mut bound = FIRST_BACKOFF;
            for _ in 0..10 {
                let d = link.next_delay();
                assert!(
                    d >= bound / 2 && d <= bound,
                    "{d:?} not in [{:?}, {bound:?}]",
                    bound / 2
                );
                bound = (bound * 2).min(MAX_BACKOFF);
            }
            assert_eq!(link.backoff, MAX_BACKOFF);
        });
    }

    /// A link waiting out a long backoff dials at once when the remote
    /// member is heard from (it opened a stream to this member).
    #[test]
    fn a_member_heard_from_is_dialed_at_once() {
        const TO: u64 = 0xfeed_0001;
        let failures = || {
            crate::io_metrics::PEER_SENT_FAILURES
                .with_label_values(&[&format!("{TO:x}")])
                .get()
        };
        let sys = actix::System::new();
        sys.block_on(async move {
            // A port nobody listens on (yet): the first dial is refused.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let directory = super::super::Directory::default();
            let (_tx, rx) = mpsc::channel(1);
            let mut link = PeerLink::new(
                Target {
                    cluster_id: 1,
                    from: 1,
                    to: TO,
                    urls: vec![format!("http://127.0.0.1:{port}")],
                    connector: crate::tls::client::Connector::plain(),
                },
                Arc::new(Mutex::new(rx)),
                Dummy.start().recipient(),
                directory.link_state(TO),
            );
            // After the first failed dial the link waits at least 30 minutes.
            link.backoff = Duration::from_secs(3600);
            link.start();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while failures() == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the first dial did not fail"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The member comes up and opens a stream to us (the word is
            // repeated: the link may not be waiting yet when it first comes).
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind the member's port again");
            loop {
                directory.heard_from(TO);
                match tokio::time::timeout(Duration::from_millis(20), listener.accept()).await {
                    Ok(accepted) => break drop(accepted.expect("accept")),
                    Err(_) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "the link did not dial the member it heard from"
                    ),
                }
            }
        });
    }

    #[test]
    fn a_batch_takes_what_is_queued() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(16);
            for i in 0..3 {
                let m = raft::eraftpb::Message {
                    index: i,
                    ..Default::default()
                };
                tx.send(m).await.expect("send");
            }
            let target = Target {
                cluster_id: 9,
                from: 1,
                to: 2,
                urls: vec![],
                connector: crate::tls::client::Connector::plain(),
            };
            let batch = next_batch(&target, &mut rx).await.expect("batch");
            assert_eq!(
                (batch.cluster_id, batch.from, batch.to, batch.messages.len()),
                (9, 1, 2, 3)
            );
            drop(tx);
            assert!(next_batch(&target, &mut rx).await.is_none());
        });
    }

    struct Dummy;
    impl Actor for Dummy {
        type Context = Context<Self>;
    }
    impl Handler<ReportUnreachable> for Dummy {
        type Result = ();
        fn handle(&mut self, _: ReportUnreachable, _: &mut Context<Self>) {}
    }
}
