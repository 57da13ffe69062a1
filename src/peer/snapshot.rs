//! Raft snapshots between members: the leader streams the image of its
//! applied state to a member whose log it can no longer feed from its own.
//!
//! ```text
//!  leader                                                        lagging member
//!  raft-rs: storage.snapshot() ─ no image ─▶ RaftNode ─ MakeImage ─▶ Storage
//!          (asks again later)                    captures the head (SnapDir::offer)
//!  raft-rs: MsgSnapshot(index, term, conf) ─▶ PeerTransport ─▶ snapshot sender (one per member,
//!                                                              one snapshot at a time)
//!     blocking thread: write_image, the revision records read from the store
//!       ─ bounded channel ─▶ Peer/Snapshot stream: [message] [1 MiB]… [last] ─▶ PeerService::snapshot
//!                                                              writes <index>-<from>.tmp, and (fjall)
//!                                                              ingests the pairs as they arrive,
//!                                                              syncs, verifies the SHA-256, renames it
//!                                                              <index>.snap, steps the message
//!     ◀── SnapshotDone / error ─── ReportSnapshot(ok) to raft-rs  raft-rs: Ready with the snapshot
//!                                                              ─▶ RaftNode persists it in the log
//!                                                              ─▶ Storage commits the ingested
//!                                                                 image (or installs the file)
//! ```
//!
//! The image never travels inside the raft message (raft-rs would keep it
//! in memory, in its unstable log): the message names the index, and the
//! image at that index comes beside it, read from the leader's store as it
//! goes (no file is written and synced first, as etcd streams its bolt
//! transaction). A failed stream is reported to raft-rs, which sends the
//! snapshot again; an image a compaction overtook is retracted, and raft-rs
//! asks for a new one.

use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
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

/// Streams one snapshot; returns the image's size. The image is read
/// from the leader's store as it goes (a blocking thread writes it into a
/// bounded channel): nothing is written to disk first, and a slow member
/// slows the read down rather than have it buffered.
async fn send(target: &Target, dir: &SnapDir, msg: raft::eraftpb::Message) -> Result<u64, String> {
    let index = msg.get_snapshot().get_metadata().index;
    let image = match dir.offered(index) {
        Some(image) if !image.stale() => image,
        stale => {
            dir.retract(index);
            return Err(match stale {
                Some(_) => {
                    format!("a compaction passed the image at {index}; raft asks for a new one")
                }
                None => format!("no image offered at {index}; raft asks for a new one"),
            });
        }
    };
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
    // The image's bytes, [`CHUNK_BYTES`] at a time, as the store is read.
    let (bytes_tx, mut bytes_rx) = mpsc::channel::<(Vec<u8>, bool)>(2);
    let reader = tokio::task::spawn_blocking(move || {
        // A panic while reading fails this snapshot, not the member.
        crate::supervise::restartable_blocking(|| {
            let mut buf = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
            image.write(|chunk, last| {
                buf.extend_from_slice(&chunk);
                if buf.len() < CHUNK_BYTES && !last {
                    return true;
                }
                crate::failpoint::hit("snapshot-send-chunk");
                let out = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_BYTES + (64 << 10)));
                bytes_tx.blocking_send((out, last)).is_ok()
            })
        })
    });
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
            // The reader ending without a last chunk failed: its outcome says why.
            let Some((data, last)) = bytes_rx.recv().await else {
                return Ok(None);
            };
            total += data.len() as u64;
            let c = chunk(first.take().unwrap_or_default(), data, last);
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
    let outcome = tokio::select! {
        fed = feed => {
            match fed? {
                Some(total) => {
                    let answered = call.await;
                    answered.map_err(|s| format!("the member refused the snapshot: {s}")).map(|_| total)
                }
                // Dropping the call cancels it: the member sees the stream cut.
                None => Err("the image could not be read whole".to_string()),
            }
        }
        answered = &mut call => match answered {
            Ok(_) => Err("the member answered before the whole image arrived".into()),
            Err(s) => Err(format!("the member refused the snapshot: {s}")),
        },
    };
    // The reader stops at its next chunk once the channel is gone.
    let read = reader.await;
    match read {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e @ crate::snapshot::SnapshotError::Raced { .. }))) => {
            dir.retract(index);
            return Err(format!("reading the image: {e}"));
        }
        Ok(Ok(Err(crate::snapshot::SnapshotError::Gone))) => {}
        Ok(Ok(Err(e))) => return Err(format!("reading the image: {e}")),
        Ok(Err(panic)) => return Err(format!("the image reader panicked: {panic}")),
        Err(e) => return Err(format!("the image reader failed: {e}")),
    }
    outcome
}
