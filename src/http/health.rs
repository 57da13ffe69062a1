//! `/health` (etcd 3.4's JSON with 3.5's `reason`), `/livez` and `/readyz`
//! (etcd 3.6's probes, `?verbose`, `?exclude=`), `/version`.
//!
//! `/health` is false, with the reason, when an alarm is active, when the
//! member knows no leader, or when a linearizable read (through the read
//! barrier, as a client's) fails or does not answer within the request
//! timeout.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::State;
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};

/// The cluster version cairn reports, as etcd 3.4.23's `/version`.
pub const CLUSTER_VERSION: &str = "3.4.0";

#[derive(Serialize)]
struct Health {
    health: &'static str,
    reason: String,
}

#[derive(Serialize)]
struct Version {
    etcdserver: &'static str,
    etcdcluster: &'static str,
}

/// A read of key "health" (as `etcdctl endpoint health`), serializable or
/// linearizable, through the KV service, bounded by the request timeout.
async fn read(state: &State, linearizable: bool) -> Result<(), String> {
    let req = RangeRequest {
        key: b"health".to_vec(),
        keys_only: true,
        limit: 1,
        serializable: !linearizable,
        ..Default::default()
    };
    let services = state.services.clone();
    let call = services.runtime.clone().spawn(async move {
        use crate::proto::etcdserverpb::kv_server::Kv;
        services
            .kv
            .range(tonic::Request::new(req))
            .await
            .map(|_| ())
    });
    // With auth on, the probe carries no token: a refusal for want of one
    // still shows a member that serves (etcd 3.5 counts it healthy too).
    let refused = [
        crate::error::EtcdError::UserEmpty.to_string(),
        crate::error::EtcdError::PermissionDenied.to_string(),
    ];
    match tokio::time::timeout(state.api.raft.timeout(), call).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(status))) if refused.iter().any(|r| r == status.message()) => Ok(()),
        Ok(Ok(Err(status))) => Err(status.message().to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

/// Why the member is not healthy, if it is not (etcd 3.5's reasons).
async fn unhealthy(state: &State) -> Option<String> {
    let alarms = state.api.store.alarms();
    if let Some(alarm) = alarms.first() {
        let name = AlarmType::try_from(alarm.alarm)
            .map(|t| t.as_str_name())
            .unwrap_or("UNKNOWN");
        return Some(format!("ALARM {name}"));
    }
    if state.api.status.leader_id() == 0 {
        return Some("RAFT NO LEADER".to_string());
    }
    read(state, true)
        .await
        .err()
        .map(|e| format!("QGET ERROR:{e}"))
}

async fn health(state: web::Data<State>) -> HttpResponse {
    let reason = unhealthy(&state).await;
    let (health, mut response) = match reason {
        None => {
            state.metrics.health_success.inc();
            ("true", HttpResponse::Ok())
        }
        Some(_) => {
            state.metrics.health_failures.inc();
            ("false", HttpResponse::ServiceUnavailable())
        }
    };
    if let Some(why) = &reason {
        tracing::warn!(reason = %why, "/health error");
    }
    let body = Health {
        health,
        reason: reason.unwrap_or_default(),
    };
    response
        .content_type("text/plain; charset=utf-8")
        .body(serde_json::to_string(&body).unwrap_or_default())
}

/// One named check of a probe.
type Check = (&'static str, Result<(), String>);

async fn data_corruption(state: &State) -> Result<(), String> {
    let corrupt = state
        .api
        .store
        .alarms()
        .iter()
        .any(|a| a.alarm == AlarmType::Corrupt as i32);
    if corrupt {
        Err("alarm activated: CORRUPT".to_string())
    } else {
        Ok(())
    }
}

/// A probe's answer, as Kubernetes-style probes (and etcd 3.6) write it.
fn probe(req: &HttpRequest, kind: &str, checks: Vec<Check>) -> HttpResponse {
    let mut verbose = false;
    let mut excluded = Vec::new();
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match &*k {
            "verbose" => verbose = true,
            "exclude" => excluded.push(v.into_owned()),
            _ => {}
        }
    }
    let mut lines = String::new();
    let mut ok = true;
    for (name, result) in checks {
        if excluded.iter().any(|e| e == name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match result {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(_) => {
                ok = false;
                lines.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    let mut response = if ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    let body = match (ok, verbose) {
        (true, false) => "ok".to_string(),
        (true, true) => format!("{lines}{kind} check passed\n"),
        (false, _) => format!("{lines}{kind} check failed\n"),
    };
    response
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

async fn livez(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let checks = vec![
        ("serializable_read", read(&state, false).await),
        ("data_corruption", data_corruption(&state).await),
    ];
    probe(&req, "livez", checks)
}

async fn readyz(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let checks = vec![
        ("data_corruption", data_corruption(&state).await),
        ("serializable_read", read(&state, false).await),
        ("linearizable_read", read(&state, true).await),
    ];
    probe(&req, "readyz", checks)
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(Version {
        etcdserver: crate::grpc::ETCD_API_VERSION,
        etcdcluster: CLUSTER_VERSION,
    })
}

/// The probes, on the client URLs and the metrics URLs.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz));
}

/// `/version`, on the client URLs only (as etcd).
pub fn version_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/version", web::get().to(version));
}
