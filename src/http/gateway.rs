//! etcd's JSON gateway: `POST /v3/<service>/<method>` (and `/v3beta/…`)
//! with a JSON request body, answered with the JSON response, as etcd's
//! grpc-gateway does. No RPC is implemented here: each request is decoded
//! into its prost message ([`super::json`]), given to the tonic service of
//! `crate::grpc` (the same code, validation and errors as gRPC), run on the
//! gRPC runtime, and its answer encoded back. A `Status` becomes
//! grpc-gateway's error body and HTTP status.
//!
//! Streams: `/v3/watch` and `/v3/lease/keepalive` read every JSON request
//! in the body (one after another), then stream one `{"result": …}` line
//! per response over a chunked response; a client that goes away drops the
//! stream, which ends the gRPC stream behind it (its watches canceled).

use std::future::Future;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::StreamExt;
use serde::Serialize;
use tonic::{Code, Status};

use super::conn::ClientGone;
use super::grpc_metrics::{gateway_names, Call};
use super::json::{self, Named};
use super::State;
use crate::grpc::{
    auth, cluster, election, kv, lease, lock, maintenance, watch, Api, LocalClient,
    GRPC_OVERHEAD_BYTES,
};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::watch_wire::watch_server::Watch;

/// The gRPC services the gateway calls, and the runtime they run on.
pub struct Services {
    pub kv: kv::KvService,
    pub lease: lease::LeaseService,
    pub maintenance: maintenance::MaintenanceService,
    pub cluster: cluster::ClusterService,
    pub watch: watch::WatchService,
    pub lock: lock::LockService,
    pub auth: auth::AuthService,
    pub election: election::ElectionService,
    /// The gRPC runtime: the services (and the tasks they spawn) run there,
    /// not on the HTTP server's thread.
    pub runtime: tokio::runtime::Handle,
    max_decode: usize,
}

impl Services {
    /// The gRPC decode limit, for request streams built here.
    pub fn max_decode(&self) -> usize {
        self.max_decode
    }

    pub fn new(
        api: Api,
        local: LocalClient,
        max_request_bytes: usize,
        stopping: tokio::sync::watch::Receiver<bool>,
        runtime: tokio::runtime::Handle,
    ) -> Services {
        Services {
            kv: kv::KvService::new(api.clone()),
            lease: lease::LeaseService::new(api.clone()),
            maintenance: maintenance::MaintenanceService::new(api.clone()),
            cluster: cluster::ClusterService::new(api.clone()),
            watch: watch::WatchService::new(
                api.clone(),
                api.watch.clone(),
                max_request_bytes,
                stopping,
            ),
            lock: lock::LockService::new(local.clone()),
            auth: auth::AuthService::new(api.clone(), api.bcrypt_cost),
            election: election::ElectionService::new(local),
            runtime,
            max_decode: max_request_bytes + GRPC_OVERHEAD_BYTES,
        }
    }
}

/// grpc-gateway's error body.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// grpc-gateway's error object inside a stream.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// grpc-gateway's mapping of gRPC codes to HTTP statuses (v1, as etcd 3.4
/// vendors it: FailedPrecondition is 412).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(status: &Status) -> HttpResponse {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    HttpResponseBuilder::new(http_status(status.code()))
        .content_type("application/json")
        .body(serde_json::to_string(&body).unwrap_or_default())
}

fn json_response<M: Named>(msg: &M) -> HttpResponse {
    match json::to_json(msg) {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Err(e) => error_response(&Status::internal(e)),
    }
}

/// Every request in a body; an undecodable one is grpc-gateway's 400.
fn requests<M: Named>(body: &[u8]) -> Result<Vec<M>, Status> {
    json::values(body)
        .map_err(Status::invalid_argument)?
        .into_iter()
        .map(|v| json::from_json(v).map_err(Status::invalid_argument))
        .collect()
}

/// The gRPC request a gateway call makes: the message, and the auth token
/// of the `Authorization` header as the `token` metadata gRPC clients send
/// (etcd's gateway forwards it so).
pub(super) fn grpc_request<T>(http: &HttpRequest, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = http
        .headers()
        .get("Authorization")
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
    {
        req.metadata_mut().insert("token", token);
    }
    req
}

/// Calls a unary RPC with the body's (first) request.
async fn unary<Req, Resp, F, Fut>(
    http: &HttpRequest,
    state: &State,
    body: &[u8],
    (service, method): (&str, String),
    call: F,
) -> HttpResponse
where
    Req: Named + Send + 'static,
    Resp: Named + Send + 'static,
    F: FnOnce(Arc<Services>, tonic::Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
{
    let req = match requests::<Req>(body) {
        Ok(reqs) => reqs.into_iter().next().unwrap_or_default(),
        Err(status) => return error_response(&status),
    };
    let mut counted = state.grpc.call(service, &method);
    let services = state.services.clone();
    let runtime = services.runtime.clone();
    let result = match runtime.spawn(call(services, grpc_request(http, req))).await {
        Ok(result) => result,
        Err(e) => Err(Status::internal(e.to_string())),
    };
    counted.ended(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok));
    match result {
        Ok(resp) => json_response(&resp.into_inner()),
        Err(status) => error_response(&status),
    }
}

/// The requests as the gRPC stream a service takes: framed, then ended
/// (the client half-closes; the server keeps sending, as in etcd).
pub(super) fn inbound<M: prost::Message + Default + Send + 'static>(
    reqs: &[M],
    max_decode: usize,
) -> tonic::Streaming<M> {
    use tonic::codec::Codec;
    let mut framed = Vec::new();
    for m in reqs {
        let bytes = m.encode_to_vec();
        framed.push(0u8);
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(framed));
    let decoder = tonic_prost::ProstCodec::<M, M>::default().decoder();
    tonic::Streaming::new_request(decoder, body, None, Some(max_decode))
}

/// One line of a streamed response.
fn line(result: Result<String, Status>) -> Bytes {
    let text = match result {
        Ok(json) => Ok(format!("{{\"result\":{json}}}")),
        Err(status) => {
            let http = http_status(status.code());
            let error = StreamError {
                grpc_code: status.code() as i32,
                http_code: http.as_u16(),
                message: status.message(),
                http_status: http.canonical_reason().unwrap_or(""),
            };
            serde_json::to_string(&serde_json::json!({ "error": error }))
        }
    };
    let mut text = text.unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

/// Logs when a streamed response is dropped (its client gone, or done).
struct Closed;

impl Drop for Closed {
    fn drop(&mut self) {
        tracing::debug!("gateway stream closed");
    }
}

/// Streams a server stream's responses as newline-delimited JSON.
/// The answer ends when the client goes away ([`super::conn`]); `call`
/// is counted handled at the stream's end (canceled if the client left).
fn streamed<S, T, F>(req: &HttpRequest, mut call: Call, responses: S, to_json: F) -> HttpResponse
where
    S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
    T: 'static,
    F: Fn(T) -> Result<String, Status> + 'static,
{
    let gone = req.conn_data::<ClientGone>().cloned();
    let gone = async move {
        match gone {
            Some(gone) => gone.wait().await,
            None => std::future::pending().await,
        }
    };
    let guard = Closed;
    let ended = futures::stream::once(std::future::ready(None));
    let lines = responses
        .map(Some)
        .chain(ended)
        .take_until(Box::pin(gone))
        .filter_map(move |r| {
            let _ = &guard;
            let out = match r {
                None => {
                    call.ended(Code::Ok);
                    None
                }
                Some(r) => {
                    if let Err(status) = &r {
                        call.ended(status.code());
                    }
                    Some(Ok::<_, std::convert::Infallible>(line(
                        r.and_then(&to_json),
                    )))
                }
            };
            std::future::ready(out)
        });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(lines)
}

async fn watch(req: HttpRequest, state: web::Data<State>, body: Bytes) -> HttpResponse {
    let reqs = match requests(&body) {
        Ok(reqs) => reqs,
        Err(status) => return error_response(&status),
    };
    let mut call = state.grpc.call("etcdserverpb.Watch", "Watch");
    let services = state.services.clone();
    let request = grpc_request(&req, inbound(&reqs, services.max_decode));
    let opened = services
        .runtime
        .clone()
        .spawn(async move { services.watch.watch(request).await });
    let opened = opened.await;
    if let Ok(Err(status)) = &opened {
        call.ended(status.code());
    }
    match opened {
        Ok(Ok(replies)) => streamed(&req, call, replies.into_inner(), |reply| {
            let resp = reply
                .to_response()
                .map_err(|e| Status::internal(e.to_string()))?;
            json::to_json(&resp).map_err(Status::internal)
        }),
        Ok(Err(status)) => error_response(&status),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

async fn keepalive(req: HttpRequest, state: web::Data<State>, body: Bytes) -> HttpResponse {
    let reqs = match requests(&body) {
        Ok(reqs) => reqs,
        Err(status) => return error_response(&status),
    };
    let mut call = state.grpc.call("etcdserverpb.Lease", "LeaseKeepAlive");
    let services = state.services.clone();
    let request = grpc_request(&req, inbound(&reqs, services.max_decode));
    let opened = services
        .runtime
        .clone()
        .spawn(async move { services.lease.lease_keep_alive(request).await });
    let opened = opened.await;
    if let Ok(Err(status)) = &opened {
        call.ended(status.code());
    }
    match opened {
        Ok(Ok(responses)) => streamed(&req, call, responses.into_inner(), |resp| {
            json::to_json(&resp).map_err(Status::internal)
        }),
        Ok(Err(status)) => error_response(&status),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

/// Calls a server-streaming RPC with the body's (first) request and streams
/// its responses.
async fn server_stream<Req, Resp, S, F, Fut>(
    req: &HttpRequest,
    state: &State,
    body: &[u8],
    (service, method): (&str, String),
    call: F,
) -> HttpResponse
where
    Req: Named + Send + 'static,
    Resp: Named + Send + 'static,
    S: futures::Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(Arc<Services>, tonic::Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send + 'static,
{
    let first = match requests::<Req>(body) {
        Ok(reqs) => reqs.into_iter().next().unwrap_or_default(),
        Err(status) => return error_response(&status),
    };
    let mut counted = state.grpc.call(service, &method);
    let services = state.services.clone();
    let runtime = services.runtime.clone();
    let opened = runtime
        .spawn(call(services, grpc_request(req, first)))
        .await;
    if let Ok(Err(status)) = &opened {
        counted.ended(status.code());
    }
    match opened {
        Ok(Ok(responses)) => streamed(req, counted, responses.into_inner(), |resp: Resp| {
            json::to_json(&resp).map_err(Status::internal)
        }),
        Ok(Err(status)) => error_response(&status),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

/// Registers an RPC at its path under `/v3` and `/v3beta`, answered by
/// `$answer` (`unary` or `server_stream`).
macro_rules! rpc {
    ($cfg:ident, $answer:ident, $path:literal, $service:ident . $method:ident) => {
        for prefix in ["/v3", "/v3beta"] {
            $cfg.service(
                web::resource(format!("{prefix}{}", $path))
                    .route(web::post().to(
                        |req: HttpRequest, state: web::Data<State>, body: Bytes| async move {
                            let names = gateway_names(stringify!($service), stringify!($method));
                            $answer(
                                &req,
                                &state,
                                &body,
                                names,
                                |s: Arc<Services>, r| async move { s.$service.$method(r).await },
                            )
                            .await
                        },
                    ))
                    .default_service(web::to(method_not_allowed)),
            );
        }
    };
}

/// The gateway's streaming paths.
enum Stream {
    Watch,
    KeepAlive,
}

/// etcd's answer to a method other than POST on a gateway path.
async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .content_type("text/plain; charset=utf-8")
        .body("Method Not Allowed\n")
}

/// etcd's 404s: grpc-gateway's own under `/v3`, Go's elsewhere.
async fn not_found(req: HttpRequest) -> HttpResponse {
    let gateway = req.path().starts_with("/v3/") || req.path().starts_with("/v3beta/");
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(if gateway {
            "Not Found\n"
        } else {
            "404 page not found\n"
        })
}

/// The gateway's paths, `/version`, and etcd's answers to anything else.
pub fn routes(cfg: &mut web::ServiceConfig) {
    rpc!(cfg, unary, "/kv/range", kv.range);
    rpc!(cfg, unary, "/kv/put", kv.put);
    rpc!(cfg, unary, "/kv/deleterange", kv.delete_range);
    rpc!(cfg, unary, "/kv/txn", kv.txn);
    rpc!(cfg, unary, "/kv/compaction", kv.compact);
    rpc!(cfg, unary, "/lease/grant", lease.lease_grant);
    rpc!(cfg, unary, "/lease/revoke", lease.lease_revoke);
    rpc!(cfg, unary, "/kv/lease/revoke", lease.lease_revoke);
    rpc!(cfg, unary, "/lease/timetolive", lease.lease_time_to_live);
    rpc!(cfg, unary, "/kv/lease/timetolive", lease.lease_time_to_live);
    rpc!(cfg, unary, "/lease/leases", lease.lease_leases);
    rpc!(cfg, unary, "/kv/lease/leases", lease.lease_leases);
    rpc!(cfg, unary, "/cluster/member/list", cluster.member_list);
    rpc!(cfg, unary, "/maintenance/status", maintenance.status);
    rpc!(cfg, unary, "/maintenance/alarm", maintenance.alarm);
    // etcd 3.4 routes both Hash and HashKV to /hash (Hash answers);
    // /hashkv is 3.5's path for HashKV.
    rpc!(cfg, unary, "/maintenance/hash", maintenance.hash);
    rpc!(cfg, unary, "/maintenance/hashkv", maintenance.hash_kv);
    rpc!(
        cfg,
        unary,
        "/maintenance/defragment",
        maintenance.defragment
    );
    rpc!(
        cfg,
        unary,
        "/maintenance/transfer-leadership",
        maintenance.move_leader
    );
    rpc!(
        cfg,
        server_stream,
        "/maintenance/snapshot",
        maintenance.snapshot
    );
    rpc!(cfg, unary, "/cluster/member/add", cluster.member_add);
    rpc!(cfg, unary, "/cluster/member/remove", cluster.member_remove);
    rpc!(cfg, unary, "/cluster/member/update", cluster.member_update);
    rpc!(
        cfg,
        unary,
        "/cluster/member/promote",
        cluster.member_promote
    );
    rpc!(cfg, unary, "/lock/lock", lock.lock);
    rpc!(cfg, unary, "/lock/unlock", lock.unlock);
    rpc!(cfg, unary, "/election/campaign", election.campaign);
    rpc!(cfg, unary, "/election/proclaim", election.proclaim);
    rpc!(cfg, unary, "/election/leader", election.leader);
    rpc!(cfg, unary, "/election/resign", election.resign);
    rpc!(cfg, server_stream, "/election/observe", election.observe);
    rpc!(cfg, unary, "/auth/enable", auth.auth_enable);
    rpc!(cfg, unary, "/auth/disable", auth.auth_disable);
    // etcd 3.5's path; 3.4.23 has no AuthStatus route.
    rpc!(cfg, unary, "/auth/status", auth.auth_status);
    rpc!(cfg, unary, "/auth/authenticate", auth.authenticate);
    rpc!(cfg, unary, "/auth/user/add", auth.user_add);
    rpc!(cfg, unary, "/auth/user/get", auth.user_get);
    rpc!(cfg, unary, "/auth/user/list", auth.user_list);
    rpc!(cfg, unary, "/auth/user/delete", auth.user_delete);
    rpc!(cfg, unary, "/auth/user/changepw", auth.user_change_password);
    rpc!(cfg, unary, "/auth/user/grant", auth.user_grant_role);
    rpc!(cfg, unary, "/auth/user/revoke", auth.user_revoke_role);
    rpc!(cfg, unary, "/auth/role/add", auth.role_add);
    rpc!(cfg, unary, "/auth/role/get", auth.role_get);
    rpc!(cfg, unary, "/auth/role/list", auth.role_list);
    rpc!(cfg, unary, "/auth/role/delete", auth.role_delete);
    rpc!(cfg, unary, "/auth/role/grant", auth.role_grant_permission);
    rpc!(cfg, unary, "/auth/role/revoke", auth.role_revoke_permission);
    for prefix in ["/v3", "/v3beta"] {
        for (path, handler) in [
            ("/watch", Stream::Watch),
            ("/lease/keepalive", Stream::KeepAlive),
        ] {
            let route = match handler {
                Stream::Watch => web::post().to(watch),
                Stream::KeepAlive => web::post().to(keepalive),
            };
            cfg.service(
                web::resource(format!("{prefix}{path}"))
                    .route(route)
                    .default_service(web::to(method_not_allowed)),
            );
        }
    }
    super::health::version_routes(cfg);
    cfg.default_service(web::route().to(not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_header_becomes_the_token() {
        let http = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "tok.en"))
            .to_http_request();
        let req = grpc_request(&http, ());
        let token = req.metadata().get("token").and_then(|v| v.to_str().ok());
        assert_eq!(token, Some("tok.en"));
        let bare = grpc_request(
            &actix_web::test::TestRequest::default().to_http_request(),
            (),
        );
        assert!(bare.metadata().get("token").is_none());
    }

    #[test]
    fn statuses_are_grpc_gateways() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::FailedPrecondition, 412),
            (Code::NotFound, 404),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in cases {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }
}
