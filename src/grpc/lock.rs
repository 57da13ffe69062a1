//! etcd's Lock service (v3lockpb): Lock, Unlock.
//!
//! Built as etcd builds it (`etcdserver/api/v3lock`): a client of this
//! member's own etcd API ([`super::LocalClient`]) running the mutex recipe
//! (`recipes::mutex`), so it needs nothing from the KV, lease or watch
//! internals. Lock takes the caller's lease (or grants a 60 s one when the
//! request has none) and never keeps it alive: the lock lasts until Unlock
//! deletes the returned key or the lease ends. A Lock that waits is a
//! Range-plus-Watch on the key queued before it; if the caller cancels, its
//! key is removed again.

use tonic::{Request, Response, Status};

use super::LocalClient;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::recipes::{mutex, Session};

pub struct LockService {
    local: LocalClient,
}

impl LockService {
    pub fn new(local: LocalClient) -> LockService {
        LockService { local }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let locked = self
            .local
            .until_stopped(async {
                let session = Session::new(client, req.lease).await?;
                mutex::lock(&session, &req.name).await
            })
            .await?;
        Ok(Response::new(LockResponse {
            header: Some(locked.header),
            key: locked.key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        // As etcd's: the recipe acts with the caller's credentials.
        let client = self
            .local
            .client
            .with_metadata(crate::auth::Credentials::of(&req).forwarded());
        let req = req.into_inner();
        let client = &client;
        let header = self
            .local
            .until_stopped(mutex::unlock(client, &req.key))
            .await?;
        Ok(Response::new(UnlockResponse {
            header: Some(header),
        }))
    }
}
