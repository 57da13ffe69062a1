//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Read path: Range (and a read-only Txn) is served from the shared MVCC
//! store on this gRPC thread, never through the actors' mailboxes; a
//! linearizable one first waits on the read barrier. Write path: everything
//! else is proposed through raft and answered when applied. With auth
//! enabled each request's permissions are checked first (`auth::check`), and
//! a write's again when it is applied (`Api::propose_as`).

use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{check, Credentials};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::*;
use crate::validate;

pub struct KvService {
    api: Api,
}

impl KvService {
    pub fn new(api: Api) -> KvService {
        KvService { api }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = self.api.auth.caller_of(&req)?;
        let req = req.into_inner();
        validate::validate_range(&req)?;
        check::range(&caller, &req)?;
        if !req.serializable && !crate::failpoint::stale_reads() {
            self.api.refuse_on_learner()?;
            self.api.raft.read_barrier().await?;
        }
        let mut resp = self.api.store.range(&req)?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let creds = Credentials::of(&req);
        let req = req.into_inner();
        validate::validate_put(&req)?;
        let mut resp = self.api.propose_as(&creds, req).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let creds = Credentials::of(&req);
        let req = req.into_inner();
        validate::validate_delete_range(&req)?;
        let mut resp = self.api.propose_as(&creds, req).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let creds = Credentials::of(&req);
        let req = req.into_inner();
        validate::validate_txn(&req, self.api.max_txn_ops)?;
        let mut resp = self.api.propose_as(&creds, req).await?;
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd 3.4 checks no permission for Compact.
        let req = req.into_inner();
        validate::validate_compaction(&req)?;
        let (revision, physical) = (req.revision, req.physical);
        let mut resp = self.api.propose(req).await?;
        if physical {
            // Applied means reads below `revision` fail; the old records are
            // removed afterwards by the store's compactor. etcd answers a
            // physical compaction only once they are gone.
            let store = self.api.store.clone();
            tokio::task::spawn_blocking(move || store.wait_compacted(revision))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        self.api.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
