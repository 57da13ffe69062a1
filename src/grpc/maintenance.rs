//! etcd's Maintenance service: Status, Alarm, Hash, HashKV, Defragment,
//! Snapshot (a cairn snapshot file, see `snapshot`). MoveLeader and
//! Downgrade return UNIMPLEMENTED for now.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{unimplemented, Api, ETCD_API_VERSION};
use crate::error::{fatal, EtcdError};
use crate::msg::CaptureImage;
use crate::mvcc::HashKv;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;
use crate::snapshot::{write_image, SnapshotError};

pub struct MaintenanceService {
    api: Api,
}

impl MaintenanceService {
    pub fn new(api: Api) -> MaintenanceService {
        MaintenanceService { api }
    }

    fn db_size(&self) -> Result<i64, Status> {
        let size = self
            .api
            .store
            .backend()
            .size_on_disk()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(size as i64)
    }

    /// Runs [`crate::mvcc::Store::hash_kv`] (a whole-store scan that may
    /// first wait for a compaction) on a blocking thread.
    async fn hash_at(&self, revision: i64) -> Result<HashKv, Status> {
        let store = self.api.store.clone();
        let h = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(h)
    }
}

/// etcd prints an alarm in Status.errors as its protobuf text form.
fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // All alarm actions go through the log, as in etcd, so every member
        // agrees on the alarm list.
        let mut resp = self.api.propose(req.into_inner()).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = &self.api.status;
        let leader = status.leader_id();
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push(EtcdError::NoLeader.to_string());
        }
        errors.extend(self.api.store.alarms().iter().map(alarm_text));
        let db_size = self.db_size()?;
        Ok(Response::new(StatusResponse {
            header: Some(self.api.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader,
            raft_index: status.commit_index(),
            raft_term: status.term(),
            raft_applied_index: self.api.raft.applied_index(),
            errors,
            // sled does not report live bytes apart from its file size.
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        crate::auth::check::maintenance_admin(&self.api.auth, &crate::auth::Credentials::of(&req))?;
        // The state store rewrites itself into a fresh database and swaps
        // it in, serving meanwhile (mvcc::defrag, docs/storage.md).
        let backend = self.api.store.backend().clone();
        tokio::task::spawn_blocking(move || backend.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        // etcd 3.4 answers a defragment with no header at all.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        crate::auth::check::maintenance_admin(&self.api.auth, &crate::auth::Credentials::of(&req))?;
        let h = self.hash_at(0).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.api.header(h.current_revision)),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        crate::auth::check::maintenance_admin(&self.api.auth, &crate::auth::Credentials::of(&req))?;
        let h = self.hash_at(req.into_inner().revision).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.api.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// Streams a consistent image of this member's applied state: its head
    /// is taken by Storage between two batches, the revision records are
    /// read on a blocking thread while writes go on (see `snapshot`). The
    /// file ends with a SHA-256 of its contents, as etcd's does.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        crate::auth::check::maintenance_admin(&self.api.auth, &crate::auth::Credentials::of(&req))?;
        let head = self
            .api
            .storage
            .send(CaptureImage)
            .await
            .map_err(|_| EtcdError::Stopped)?
            .unwrap_or_else(|e| fatal("capturing a snapshot", &e));
        let store = self.api.store.clone();
        let header = self.api.header(head.revision);
        let (cluster_id, member_id) = (self.api.cluster.cluster_id, self.api.cluster.local_id);
        let estimate = store.backend().size_on_disk().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let written = write_image(
                &store,
                head,
                (cluster_id, member_id),
                crate::snapshot::ImageHash::Sha256,
                |blob, last| {
                    sent += blob.len() as u64;
                    // The exact size is known only at the end: the last chunk
                    // says 0, the others at least 1.
                    let remaining_bytes = if last {
                        0
                    } else {
                        estimate.saturating_sub(sent).max(1)
                    };
                    let reply = SnapshotResponse {
                        header: Some(header),
                        remaining_bytes,
                        blob,
                    };
                    tx.blocking_send(Ok(reply)).is_ok()
                },
            );
            match written {
                Ok(()) | Err(SnapshotError::Gone) => {}
                Err(SnapshotError::Storage(e)) => {
                    fatal("reading the state store for a snapshot", &e)
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "snapshot failed");
                    let _ = tx.blocking_send(Err(Status::unavailable(e.to_string())));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// etcd's MoveLeader: sent to the leader (etcdctl move-leader finds
    /// it), hands leadership to a voter and answers once this member sees
    /// the new leader; `etcdserver: not leader` elsewhere, `etcdserver: bad
    /// leader transferee` for a non-voter, and `etcdserver: request timed
    /// out, leader transfer took too long` past the request timeout.
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let header = self.api.header(0);
        self.api.raft.move_leader(target, self.api.tick).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(header),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
