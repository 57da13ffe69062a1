//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Read path: Range (and a read-only Txn) is served from the shared MVCC
//! store on this gRPC thread, never through the actors' mailboxes; a
//! linearizable one first waits on the read barrier. Write path: everything
//! else is proposed through raft and answered when applied. With auth
//! enabled each request's permissions are checked first (`auth::check`), and
//! a write's again when it is applied (`Api::propose_as`).
//!
//! Two faces: the gRPC server serves `kv_wire::k_v_server::KV`, whose Range
//! reads under the member's range budget (`grpc::budget`) and answers a
//! [`RangeReply`]; the HTTP gateway and the health check call the
//! generated `kv_server::Kv`, whose Range is not budgeted.

use tonic::{Request, Response, Status};

use super::budget::{with_budget, HeldCharge};
use super::range::RangeReply;
use super::Api;
use crate::auth::{check, Credentials};
use crate::error::EtcdError;
use crate::mvcc::ReadError;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::*;
use crate::proto::kv_wire::k_v_server::KV;
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
        let req = self.admit_range(req).await?;
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

impl KvService {
    /// What every Range goes through before it reads: auth, validation,
    /// the read barrier of a linearizable read.
    async fn admit_range(&self, req: Request<RangeRequest>) -> Result<RangeRequest, Status> {
        let caller = self.api.auth.caller_of(&req)?;
        let req = req.into_inner();
        validate::validate_range(&req)?;
        check::range(&caller, &req)?;
        if !req.serializable && !crate::failpoint::stale_reads() {
            self.api.refuse_on_learner()?;
            self.api.raft.read_barrier().await?;
        }
        Ok(req)
    }
}

#[tonic::async_trait]
impl KV for KvService {
    /// Range under the member's budget of response bytes in flight: the
    /// charge travels with the response until it has been sent.
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeReply>, Status> {
        let req = self.admit_range(req).await?;
        let store = &self.api.store;
        let (mut resp, charge) = with_budget(
            &self.api.range_budget,
            |charge| store.range_metered(&req, charge),
            |e| matches!(e, ReadError::Client(EtcdError::TooManyRequests)),
        )
        .await?;
        self.api.fill(&mut resp.header);
        let mut reply = Response::new(RangeReply::from(resp));
        if charge.held() > 0 {
            reply
                .extensions_mut()
                .insert(HeldCharge(std::sync::Arc::new(charge)));
        }
        Ok(reply)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        <Self as Kv>::put(self, req).await
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        <Self as Kv>::delete_range(self, req).await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        <Self as Kv>::txn(self, req).await
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        <Self as Kv>::compact(self, req).await
    }
}
