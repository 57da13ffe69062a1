//! Raft snapshots between members: the leader streams the image of its
//! applied state to a member whose log it can no longer feed from its own.
//!
//! ```text
//!  leader                                                        lagging member
//!  raft-rs: storage.snapshot() ─ no image ─▶ RaftNode ─ MakeImage ─▶ Storage
//!          (asks again later)                              writes member/snap/<index>.snap
//!  raft-rs: MsgSnapshot(index, term, conf) ─▶ PeerTransport ─▶ snapshot sender (one per member,
//!                                                              one snapshot at a time)
//!     Peer/Snapshot stream: [message] [1 MiB of the image]… [last] ─▶ PeerService::snapshot
//!                                                              writes <index>-<from>.tmp, syncs,
//!                                                              verifies the SHA-256, renames it
//!                                                              <index>.snap, steps the message
//!     ◀── SnapshotDone / error ─── ReportSnapshot(ok) to raft-rs  raft-rs: Ready with the snapshot
//!                                                              ─▶ RaftNode persists it in the log
//!                                                              ─▶ Storage installs the image
//! ```
//!
//! The image never travels inside the raft message (raft-rs would keep it
//! in memory, in its unstable log): the message names the index, and the
//! file at that index comes beside it. A failed stream is reported to
//! raft-rs, which sends the snapshot again.

use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::link::{Target, MAX_BATCH_BYTES};
use crate::msg::ReportSnapshot;
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::SnapshotChunk;
use crate::snapshot::SnapDir;

/// Image bytes per chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// Sends the snapshots raft-rs addresses to `target.to`, one at a time,
/// and reports each outcome to raft-rs. Runs until the transport is gone.
pub async fn sender(
    target: Target,
    dir: SnapDir,
    mut queue: mpsc::Receiver<raft::eraftpb::Message>,
    report: Recipient<ReportSnapshot>,
) {
    let to = format!("{:x}", target.to);
    while let Some(msg) = queue.recv().await {
        let index = msg.get_snapshot().get_metadata().index;
        tracing::info!(remote_peer_id = %to, index, "sending a raft snapshot");
        let started = std::time::Instant::now();
        crate::io_metrics::SNAPSHOT_SEND
            .inflights
            .with_label_values(&[&to])
            .inc();
        // A panic while sending fails this snapshot, not the member.
        let sent = crate::supervise::restartable(send(&target, &dir, msg)).await;
        let ok = match sent {
            Ok(Ok(bytes)) => {
                tracing::info!(
                    remote_peer_id = %to,
                    index,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "raft snapshot sent"
                );
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(remote_peer_id = %to, index, cause = %e, "sending a raft snapshot failed; raft retries");
                false
            }
            Err(panic) => {
                tracing::error!(remote_peer_id = %to, index, %panic, "snapshot sender panicked; raft retries");
                false
            }
        };
        let m = &*crate::io_metrics::SNAPSHOT_SEND;
        if ok {
            m.success.with_label_values(&[&to]).inc();
            m.duration
                .with_label_values(&[&to])
                .observe(started.elapsed().as_secs_f64());
        } else {
            m.failures.with_label_values(&[&to]).inc();
        }
        m.inflights.with_label_values(&[&to]).dec();
        // Must reach raft-rs, or it waits for this snapshot forever: wait
        // for room in RaftNode's mailbox rather than drop the report.
        if report
            .send(ReportSnapshot { id: target.to, ok })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Streams one snapshot; returns the image's size.
async fn send(target: &Target, dir: &SnapDir, msg: raft::eraftpb::Message) -> Result<u64, String> {
    let index = msg.get_snapshot().get_metadata().index;
    let path = dir.image(index);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    crate::failpoint::hit("snapshot-send");
    let message = msg.write_to_bytes().map_err(|e| e.to_string())?;
    let mut client = None;
    let mut last_err = String::from("no peer URL");
    for url in &target.urls {
        let endpoint =
            super::link::peer_endpoint(url, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        match endpoint
            .connect_with_connector(target.connector.clone())
            .await
        {
            Ok(channel) => {
                client = Some(PeerClient::new(channel).max_encoding_message_size(MAX_BATCH_BYTES));
                break;
            }
            Err(e) => last_err = format!("cannot connect to {url}: {e:?}"),
        }
    }
    let mut client = client.ok_or(last_err)?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let (cluster_id, from, to) = (target.cluster_id, target.from, target.to);
    let chunk = move |message: Vec<u8>, data: Vec<u8>, last: bool| SnapshotChunk {
        cluster_id,
        from,
        to,
        message,
        data,
        last,
    };
    let feed = async move {
        let mut first = Some(message);
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            total += filled as u64;
            let last = filled < CHUNK_BYTES;
            let c = chunk(first.take().unwrap_or_default(), buf, last);
            let bytes = c.message.len() + c.data.len();
            if tx.send(c).await.is_err() {
                // The call ended early: its outcome says why.
                return Ok(None);
            }
            // Snapshot bytes count as peer traffic, as etcd counts them.
            crate::io_metrics::peer_bytes(&crate::io_metrics::PEER_SENT, to, bytes);
            if last {
                // Dropping `tx` ends the request stream.
                return Ok::<Option<u64>, String>(Some(total));
            }
        }
    };
    let call = client.snapshot(ReceiverStream::new(rx));
    tokio::pin!(call);
    tokio::select! {
        fed = feed => {
            let total = fed?;
            let answered = call.await;
            answered.map_err(|s| format!("the member refused the snapshot: {s}"))?;
            total.ok_or_else(|| "the member ended the stream early".to_string())
        }
        answered = &mut call => match answered {
            Ok(_) => Err("the member answered before the whole image arrived".into()),
            Err(s) => Err(format!("the member refused the snapshot: {s}")),
        },
    }
}
