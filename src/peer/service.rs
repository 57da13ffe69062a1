//! The peer gRPC service (`cairnpb.Peer`), served on `--listen-peer-urls`.
//!
//! Each remote member's PeerLink holds one `Raft` stream open to this
//! member. Every batch is checked (cluster id, sender, addressee) before its
//! messages are decoded and handed to RaftNode as `Step` with `try_send`:
//! when RaftNode's mailbox is full the message is dropped and raft retries,
//! so a flood from peers can never block this service or the raft thread.
//!
//! A peer of another cluster is refused as etcd's rafthttp refuses it: the
//! receiver logs `request cluster ID mismatch` and answers `cluster ID
//! mismatch` (HTTP 412 Precondition Failed in etcd; gRPC FailedPrecondition
//! here); the sender logs that its request was ignored.

use std::sync::Arc;

use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::msg::Leases;
use crate::proto::cairnpb::peer_server::Peer;
use crate::proto::cairnpb::{
    LeaseAnswer, LeaseForward, MembersRequest, MembersResponse, RaftBatch, RaftStreamEnd,
    SnapshotChunk, SnapshotDone,
};

/// etcd's rafthttp error text for a request from another cluster.
pub const CLUSTER_ID_MISMATCH: &str = "cluster ID mismatch";

/// What a removed member hears from the others (etcd: HTTP 410 Gone).
pub const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

/// Chunks of a raft snapshot (1 MiB each) waiting for the ingest: the
/// stream from the leader waits when they are taken.
const INGEST_QUEUE: usize = 4;

/// Hands one decoded raft message to RaftNode; false if it was dropped.
pub type Deliver = Arc<dyn Fn(raft::eraftpb::Message) -> bool + Send + Sync>;

pub struct PeerService {
    /// This member's cluster: batches from any other are refused.
    pub cluster_id: u64,
    pub local_id: u64,
    /// The other members of the cluster; a stream from anyone else is refused.
    pub members: super::Directory,
    /// Where decoded messages go: RaftNode's `Step`, with `try_send` (a
    /// closure, so the service is tested without an actor).
    pub deliver: Deliver,
    /// This member's lessor, for keep-alives and time-to-live forwarded by
    /// followers while this member leads (None in unit tests).
    pub leases: Option<Leases>,
    /// Where raft snapshot images from the leader are received.
    pub snaps: Option<crate::snapshot::SnapDir>,
    /// The applied state, for the member list a joining member asks for.
    pub store: Option<std::sync::Arc<crate::mvcc::Store>>,
    /// RaftNode, for a learner's progress (a follower's promote).
    pub learner_ready: Option<actix::Recipient<crate::msg::LearnerReady>>,
}

/// One snapshot being received from a member: in flight until dropped,
/// then counted a success (with its duration) or a failure.
struct SnapshotReceive {
    from: String,
    started: std::time::Instant,
    ok: bool,
}

impl SnapshotReceive {
    fn start(from: u64) -> SnapshotReceive {
        let from = format!("{from:x}");
        crate::io_metrics::SNAPSHOT_RECEIVE
            .inflights
            .with_label_values(&[&from])
            .inc();
        SnapshotReceive {
            from,
            started: std::time::Instant::now(),
            ok: false,
        }
    }
}

impl Drop for SnapshotReceive {
    fn drop(&mut self) {
        let m = &*crate::io_metrics::SNAPSHOT_RECEIVE;
        let from = [self.from.as_str()];
        m.inflights.with_label_values(&from).dec();
        if self.ok {
            m.success.with_label_values(&from).inc();
            m.duration
                .with_label_values(&from)
                .observe(self.started.elapsed().as_secs_f64());
        } else {
            m.failures.with_label_values(&from).inc();
        }
    }
}

impl PeerService {
    /// The rafthttp checks, on every batch.
    fn check(&self, batch: &RaftBatch) -> Result<(), Status> {
        self.check_sender(batch.cluster_id, batch.from, batch.to)
    }

    /// The rafthttp checks: the cluster, the sender, the addressee.
    fn check_sender(&self, cluster_id: u64, from: u64, to: u64) -> Result<(), Status> {
        let batch = RaftBatch {
            cluster_id,
            from,
            to,
            messages: Vec::new(),
        };
        if batch.cluster_id != self.cluster_id {
            tracing::warn!(
                local_member_id = %format!("{:x}", self.local_id),
                local_member_cluster_id = %format!("{:x}", self.cluster_id),
                remote_peer_id = %format!("{:x}", batch.from),
                remote_peer_cluster_id = %format!("{:x}", batch.cluster_id),
                "request cluster ID mismatch"
            );
            return Err(Status::failed_precondition(CLUSTER_ID_MISMATCH));
        }
        if self
            .store
            .as_ref()
            .is_some_and(|s| s.is_removed(batch.from))
        {
            // etcd's rafthttp answers 410 Gone; the sender stops itself.
            tracing::warn!(remote_peer_id = %format!("{:x}", batch.from), "raft stream from a removed member refused");
            return Err(Status::permission_denied(MEMBER_REMOVED));
        }
        if !self.members.contains(batch.from) || batch.from == self.local_id {
            tracing::warn!(remote_peer_id = %format!("{:x}", batch.from), "raft stream from a member not in this cluster refused");
            return Err(Status::permission_denied(format!(
                "member {:x} is not in cluster {:x}",
                batch.from, self.cluster_id
            )));
        }
        if batch.to != self.local_id {
            tracing::warn!(remote_peer_id = %format!("{:x}", batch.from), to = %format!("{:x}", batch.to), "raft stream for another member refused");
            return Err(Status::failed_precondition(format!(
                "raft messages for member {:x} sent to member {:x}",
                batch.to, self.local_id
            )));
        }
        Ok(())
    }

    /// Decodes a checked batch and delivers its messages; returns how many
    /// were dropped.
    fn step_all(&self, batch: RaftBatch) -> usize {
        let bytes = batch.messages.iter().map(Vec::len).sum();
        crate::io_metrics::peer_bytes(&crate::io_metrics::PEER_RECEIVED, batch.from, bytes);
        let mut dropped = 0;
        for bytes in batch.messages {
            match raft::eraftpb::Message::parse_from_bytes(&bytes) {
                Ok(m) if m.from == batch.from && m.to == batch.to => {
                    if !(self.deliver)(m) {
                        dropped += 1;
                    }
                }
                Ok(m) => {
                    tracing::warn!(
                        from = m.from,
                        to = m.to,
                        "raft message with a forged sender or addressee dropped"
                    );
                    dropped += 1;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, remote_peer_id = %format!("{:x}", batch.from), "undecodable raft message dropped");
                    dropped += 1;
                }
            }
        }
        dropped
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftStreamEnd>, Status> {
        let mut stream = request.into_inner();
        let mut from = None;
        let failed = |from: Option<u64>, status: Status| {
            if let Some(from) = from {
                crate::io_metrics::peer_failure(&crate::io_metrics::PEER_RECEIVED_FAILURES, from);
            }
            status
        };
        while let Some(batch) = stream.message().await.map_err(|s| failed(from, s))? {
            self.check(&batch).map_err(|s| failed(from, s))?;
            if from.is_none() {
                from = Some(batch.from);
                tracing::info!(remote_peer_id = %format!("{:x}", batch.from), "peer stream opened");
                self.members.heard_from(batch.from);
            }
            let dropped = self.step_all(batch);
            if dropped > 0 {
                tracing::debug!(
                    dropped,
                    "raft messages dropped (RaftNode busy); raft retries"
                );
            }
        }
        if let Some(from) = from {
            tracing::info!(remote_peer_id = %format!("{from:x}"), "peer stream closed");
        }
        Ok(Response::new(RaftStreamEnd {}))
    }

    /// A raft snapshot from the leader: the MsgSnapshot, then its image,
    /// verified (its hash) as it arrives; only a whole, verified image has
    /// the message stepped into raft: RaftNode persists it and has Storage
    /// install the image. On an engine that takes a sorted stream (fjall),
    /// the image is ingested as it arrives (`snapshot::prepare_stream`, on
    /// a blocking thread fed through a bounded channel) beside the current
    /// state, then made durable and kept (`PreparedImage::keep`), so
    /// Storage's install is only the commit, and a restart before it
    /// commits the kept state. Otherwise (sled) the image is written to a
    /// file beside its final name, synced, and takes that name once
    /// verified: the file is what Storage (or a restart) installs.
    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotDone>, Status> {
        use tokio::io::AsyncWriteExt as _;
        let snaps = self
            .snaps
            .clone()
            .ok_or_else(|| Status::unimplemented("this member takes no snapshots"))?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_sender(first.cluster_id, first.from, first.to)?;
        let msg = raft::eraftpb::Message::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
            || msg.from != first.from
            || msg.to != first.to
        {
            return Err(Status::invalid_argument(
                "not a snapshot message from its sender",
            ));
        }
        let index = msg.get_snapshot().get_metadata().index;
        let from = format!("{:x}", first.from);
        tracing::info!(remote_peer_id = %from, index, "receiving a raft snapshot");
        let mut outcome = SnapshotReceive::start(first.from);
        let tmp = snaps.receiving(index, first.from);
        let io = |e: std::io::Error| Status::internal(format!("writing the snapshot: {e}"));
        // The ingest beside the current state, fed as the chunks arrive.
        let mut ingest = self
            .store
            .clone()
            .filter(|store| store.backend().can_bulk_replace())
            .map(|store| {
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(INGEST_QUEUE);
                let job = tokio::task::spawn_blocking(move || {
                    // A panic fails this snapshot (what it wrote is
                    // removed as it unwinds), not the member.
                    crate::supervise::restartable_blocking(|| {
                        crate::snapshot::prepare_stream(&store, rx)
                    })
                });
                (Some(tx), job)
            });
        // Without an ingest, the image's file.
        let mut file = match ingest {
            Some(_) => None,
            None => Some(tokio::fs::File::create(&tmp).await.map_err(io)?),
        };
        let started = std::time::Instant::now();
        let mut chunk = first;
        let mut bytes = 0u64;
        // Verified as it arrives: the file is not read back.
        let mut verifier = crate::snapshot::StreamVerifier::default();
        let received = loop {
            verifier.update(&chunk.data);
            if let Some(file) = file.as_mut() {
                file.write_all(&chunk.data).await.map_err(io)?;
            }
            bytes += chunk.data.len() as u64;
            crate::io_metrics::peer_bytes(
                &crate::io_metrics::PEER_RECEIVED,
                chunk.from,
                chunk.message.len() + chunk.data.len(),
            );
            let last = chunk.last;
            if let Some((tx, _)) = ingest.as_mut() {
                // Waits for room: a slow ingest slows the stream down.
                // A closed channel: the ingest ended early (it says why).
                let data = std::mem::take(&mut chunk.data);
                if let Some(sender) = tx.as_ref() {
                    if sender.send(data).await.is_err() {
                        *tx = None;
                    }
                }
            }
            if last {
                break Ok(());
            }
            chunk = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break Err(Status::invalid_argument("snapshot stream ended early")),
                Err(e) => break Err(e),
            };
        };
        // The end of the stream (or its failure) closes the ingest's input.
        let ingest = ingest.map(|(tx, job)| {
            drop(tx);
            job
        });
        if let Err(e) = received {
            tracing::warn!(remote_peer_id = %from, index, bytes, cause = %e, "raft snapshot stream cut; the state stays as it was");
            if let Some(file) = file.take() {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            if let Some(job) = ingest {
                // Whatever it wrote is removed as its result drops.
                let _ = job.await;
            }
            return Err(e);
        }
        let image = snaps.image(index);
        let checked = match (verifier.finish(), file.take()) {
            (Ok(_), Some(file)) => {
                file.sync_all().await.map_err(io)?;
                drop(file);
                tokio::fs::rename(&tmp, &image)
                    .await
                    .map_err(|e| e.to_string())
            }
            (Ok(_), None) => Ok(()),
            (Err(e), _) => Err(e.to_string()),
        };
        // The file at `image` is this stream's (not an earlier one's).
        let renamed = checked.is_ok() && ingest.is_none();
        let prepared = match ingest {
            Some(job) => Some(match job.await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(panic)) => Err(format!("the ingest panicked: {panic}")),
                Err(e) => Err(format!("the ingest failed: {e}")),
            }),
            None => None,
        };
        // The rest removes files and may drop a prepared partition (both
        // blocking): not on this thread, which is RaftNode's.
        let store = self.store.clone();
        let (snaps, tmp) = (snaps.clone(), tmp.clone());
        let settled = tokio::task::spawn_blocking(move || {
            // A prepared image whose hash did not check is dropped here (its
            // partition with it); an image the ingest refused is refused.
            let prepared = match checked.and_then(|()| prepared.transpose()) {
                Ok(p) => p,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    if renamed {
                        // Whole, but the ingest refused it: not to be installed.
                        let _ = std::fs::remove_file(&image);
                    }
                    return Err(e);
                }
            };
            // Older images above the applied index stay: raft may have taken
            // one already and Storage not installed it yet (a new leader sends
            // its own, newer image to a member still installing the last
            // one's). Those at or below it can never be installed now.
            // Installing an image removes it and every older one
            // (`snapshot::install_kept`).
            let applied = store.as_ref().map_or(0, |s| s.applied_index());
            if store.is_some() {
                snaps.prune(|i| i > applied || i == index);
                snaps.drop_prepared_upto(applied);
            }
            let pipelined = prepared.is_some();
            // One the member already applied past is never installed (raft
            // ignores the message): dropped now, not kept on disk.
            if let (Some(mut prepared), Some(store)) =
                (prepared.filter(|_| index > applied), store.as_ref())
            {
                // Durable before raft takes the message: a restart before
                // Storage commits it finds it there.
                prepared.keep(store, index).map_err(|e| e.to_string())?;
                snaps.set_prepared(index, prepared);
            }
            Ok(pipelined)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let pipelined = match settled {
            Ok(pipelined) => pipelined,
            Err(e) => {
                tracing::warn!(remote_peer_id = %from, index, cause = %e, "received raft snapshot refused");
                return Err(Status::data_loss(format!("snapshot image refused: {e}")));
            }
        };
        tracing::info!(
            remote_peer_id = %from,
            index,
            bytes,
            pipelined,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "raft snapshot received"
        );
        if !(self.deliver)(msg) {
            return Err(Status::unavailable("raft is busy; send the snapshot again"));
        }
        outcome.ok = true;
        Ok(Response::new(SnapshotDone {}))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Status::unavailable("no member list here"))?;
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            members: store.membership().into_values().collect(),
        }))
    }

    async fn learner_ready(
        &self,
        request: Request<LeaseForward>,
    ) -> Result<Response<crate::proto::cairnpb::LearnerReadyAnswer>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(CLUSTER_ID_MISMATCH));
        }
        let raft = self
            .learner_ready
            .as_ref()
            .ok_or_else(|| Status::unavailable("no raft here"))?;
        let ready = raft
            .send(crate::msg::LearnerReady { id: req.id as u64 })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(crate::proto::cairnpb::LearnerReadyAnswer {
            known: ready.is_some(),
            ready: ready.unwrap_or(false),
        }))
    }

    async fn lease_renew(
        &self,
        request: Request<LeaseForward>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        let (leases, id) = self.lease_request(request.into_inner())?;
        let ttl = leases.renew_here(id).await?;
        Ok(Response::new(LeaseAnswer {
            found: ttl.is_some(),
            ttl: ttl.unwrap_or(0),
            granted_ttl: 0,
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseForward>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        let (leases, id) = self.lease_request(request.into_inner())?;
        let ttl = leases.time_to_live_here(id).await?;
        Ok(Response::new(LeaseAnswer {
            found: ttl.is_some(),
            ttl: ttl.map_or(0, |t| t.remaining),
            granted_ttl: ttl.map_or(0, |t| t.granted),
        }))
    }

    /// The prober's round trip (`super::probe`): nothing to do but answer.
    async fn probe(
        &self,
        request: Request<crate::proto::cairnpb::ProbeRequest>,
    ) -> Result<Response<crate::proto::cairnpb::ProbeResponse>, Status> {
        if request.into_inner().cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(CLUSTER_ID_MISMATCH));
        }
        Ok(Response::new(crate::proto::cairnpb::ProbeResponse {}))
    }

    /// This member's HashKV for a peer's corruption check (`crate::corrupt`).
    async fn hash_kv(
        &self,
        request: Request<crate::proto::cairnpb::PeerHashKvRequest>,
    ) -> Result<Response<crate::proto::cairnpb::PeerHashKvResponse>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(CLUSTER_ID_MISMATCH));
        }
        let store = self
            .store
            .clone()
            .ok_or_else(|| Status::unavailable("no state store here"))?;
        let h = tokio::task::spawn_blocking(move || store.hash_kv(req.revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(crate::proto::cairnpb::PeerHashKvResponse {
            member_id: self.local_id,
            hash: h.hash,
            compact_revision: h.compact_revision,
            revision: h.current_revision,
        }))
    }
}

impl PeerService {
    fn lease_request(&self, req: LeaseForward) -> Result<(&Leases, i64), Status> {
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(CLUSTER_ID_MISMATCH));
        }
        let leases = self
            .leases
            .as_ref()
            .ok_or_else(|| Status::unavailable("no lessor"))?;
        Ok((leases, req.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn service(got: Arc<Mutex<Vec<u64>>>) -> PeerService {
        PeerService {
            cluster_id: 7,
            local_id: 1,
            members: {
                let d = crate::peer::Directory::default();
                d.replace((2..=3).map(|id| (id, vec![])).collect());
                d
            },
            leases: None,
            snaps: None,
            store: None,
            learner_ready: None,
            deliver: Arc::new(move |m| {
                got.lock().expect("lock").push(m.index);
                true
            }),
        }
    }

    fn encoded(from: u64, to: u64, index: u64) -> Vec<u8> {
        let m = raft::eraftpb::Message {
            from,
            to,
            index,
            ..Default::default()
        };
        m.write_to_bytes().expect("encode")
    }

    #[test]
    fn refuses_other_clusters_strangers_and_misaddressed_batches() {
        struct Case {
            cluster_id: u64,
            from: u64,
            to: u64,
            code: Option<tonic::Code>,
            message: Option<&'static str>,
        }
        let cases = [
            Case {
                cluster_id: 7,
                from: 2,
                to: 1,
                code: None,
                message: None,
            },
            Case {
                cluster_id: 8,
                from: 2,
                to: 1,
                code: Some(tonic::Code::FailedPrecondition),
                message: Some(CLUSTER_ID_MISMATCH),
            },
            Case {
                cluster_id: 7,
                from: 9,
                to: 1,
                code: Some(tonic::Code::PermissionDenied),
                message: None,
            },
            Case {
                cluster_id: 7,
                from: 1,
                to: 1,
                code: Some(tonic::Code::PermissionDenied),
                message: None,
            },
            Case {
                cluster_id: 7,
                from: 2,
                to: 3,
                code: Some(tonic::Code::FailedPrecondition),
                message: None,
            },
        ];
        let s = service(Arc::default());
        for c in cases {
            let batch = RaftBatch {
                cluster_id: c.cluster_id,
                from: c.from,
                to: c.to,
                messages: vec![],
            };
            let r = s.check(&batch);
            assert_eq!(
                r.as_ref().err().map(|e| e.code()),
                c.code,
                "cluster {} from {} to {}",
                c.cluster_id,
                c.from,
                c.to
            );
            if let (Some(want), Err(e)) = (c.message, &r) {
                assert_eq!(e.message(), want);
            }
        }
    }

    #[test]
    fn delivers_decoded_messages_and_drops_forged_ones() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let s = service(got.clone());
        let batch = RaftBatch {
            cluster_id: 7,
            from: 2,
            to: 1,
            messages: vec![
                encoded(2, 1, 10),
                encoded(3, 1, 11),
                b"\xff\xff".to_vec(),
                encoded(2, 1, 12),
            ],
        };
        assert_eq!(s.step_all(batch), 2);
        assert_eq!(*got.lock().expect("lock"), vec![10, 12]);
    }
}
