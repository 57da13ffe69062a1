//! etcd's Cluster service. MemberList serves the configured members;
//! membership changes arrive with clustering and return UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::{unimplemented, Api};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;

pub struct ClusterService {
    api: Api,
}

impl ClusterService {
    pub fn new(api: Api) -> ClusterService {
        ClusterService { api }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.api.membership_header()),
            members: crate::cluster::member_list(
                &self.api.cluster,
                &self.api.store.membership(),
                &self.api.store.member_attributes(),
            ),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
