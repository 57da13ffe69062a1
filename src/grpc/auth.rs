//! etcd's Auth service: all 17 RPCs.
//!
//! Changes (enable, disable, users, roles, permissions) are proposed through
//! raft and applied by Storage (`auth::state`); passwords are hashed here,
//! with bcrypt at `--bcrypt-cost`, on a blocking thread, so only the hash
//! enters the log. Reads (AuthStatus, UserGet/List, RoleGet/List) wait on
//! the read barrier and answer from the applied auth store. Authenticate
//! goes to the AuthManager actor, which owns tokens. While auth is enabled
//! every RPC but Authenticate and AuthStatus needs the root role, except
//! UserGet of oneself and RoleGet of one's own role (etcd's rules).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Api;
use crate::apply::ApplyResponse;
use crate::auth::{AuthState, Credentials};
use crate::error::EtcdError;
use crate::proto::cairnpb::internal_request::Request as Internal;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;

pub struct AuthService {
    api: Api,
    /// `--bcrypt-cost`.
    bcrypt_cost: u32,
}

impl AuthService {
    pub fn new(api: Api, bcrypt_cost: u32) -> AuthService {
        AuthService { api, bcrypt_cost }
    }

    /// Root role required while auth is enabled.
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.api.auth.caller_of(req)?.check_admin()?;
        Ok(())
    }

    /// An admin-only change sent as is: check, propose, answer the header.
    async fn admin_change<T>(
        &self,
        req: Request<T>,
        wrap: fn(T) -> Internal,
    ) -> Result<Option<ResponseHeader>, Status> {
        self.admin(&req)?;
        let creds = Credentials::of(&req);
        self.change(&creds, wrap(req.into_inner())).await
    }

    /// The applied auth store for an admin-only read, after the read barrier.
    async fn admin_read<T>(&self, req: &Request<T>) -> Result<Arc<AuthState>, Status> {
        self.admin(req)?;
        self.api.raft.read_barrier().await?;
        Ok(self.api.store.auth())
    }

    /// Proposes an auth change as `creds` (judged again at apply, as etcd's
    /// `needAdminPermission`); the answer is just a header.
    async fn change(
        &self,
        creds: &Credentials,
        req: Internal,
    ) -> Result<Option<ResponseHeader>, Status> {
        match self.api.propose_request_as(creds, req).await? {
            ApplyResponse::Auth => Ok(Some(self.api.header(0))),
            _ => Err(Status::internal(
                "apply returned a response of another kind",
            )),
        }
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("hashing the password: {e}")))
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.admin_change(req, Internal::AuthEnable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.admin_change(req, Internal::AuthDisable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.api.raft.read_barrier().await?;
        let state = self.api.store.auth();
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.api.header(0)),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = req.into_inner();
        self.api.raft.read_barrier().await?;
        let token = self.api.auth.authenticate(req.name, req.password).await?;
        Ok(Response::new(AuthenticateResponse {
            header: Some(self.api.header(0)),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.admin(&req)?;
        let creds = Credentials::of(&req);
        let mut req = req.into_inner();
        if req.name.is_empty() {
            return Err(EtcdError::UserEmpty.into());
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        req.password = if no_password {
            String::new()
        } else {
            self.hash(std::mem::take(&mut req.password)).await?
        };
        let header = self.change(&creds, Internal::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.api.auth.caller_of(&req)?;
        let req = req.into_inner();
        if caller.user() != Some(req.name.as_str()) {
            caller.check_admin()?;
        }
        self.api.raft.read_barrier().await?;
        let state = self.api.store.auth();
        let user = state.users.get(&req.name).ok_or(EtcdError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.api.header(0)),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self.admin_read(&req).await?.users.keys().cloned().collect();
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.api.header(0)),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let header = self.admin_change(req, Internal::UserDelete).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.admin(&req)?;
        let creds = Credentials::of(&req);
        let mut req = req.into_inner();
        if !self.api.store.auth().users.contains_key(&req.name) {
            return Err(EtcdError::UserNotFound.into());
        }
        req.password = self.hash(std::mem::take(&mut req.password)).await?;
        let header = self
            .change(&creds, Internal::UserChangePassword(req))
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let header = self.admin_change(req, Internal::UserGrantRole).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let header = self.admin_change(req, Internal::UserRevokeRole).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let header = self.admin_change(req, Internal::RoleAdd).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.api.auth.caller_of(&req)?;
        let req = req.into_inner();
        let own = match (&caller.state, caller.user()) {
            (Some(state), Some(user)) => state
                .users
                .get(user)
                .is_some_and(|u| u.roles.contains(&req.role)),
            _ => false,
        };
        if !own {
            caller.check_admin()?;
        }
        self.api.raft.read_barrier().await?;
        let state = self.api.store.auth();
        let role = state.roles.get(&req.role).ok_or(EtcdError::RoleNotFound)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.api.header(0)),
            perm: role.key_permission.clone(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self.admin_read(&req).await?.roles.keys().cloned().collect();
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.api.header(0)),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let header = self.admin_change(req, Internal::RoleDelete).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let header = self
            .admin_change(req, Internal::RoleGrantPermission)
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let header = self
            .admin_change(req, Internal::RoleRevokePermission)
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
