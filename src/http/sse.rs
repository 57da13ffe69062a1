//! A watch as Server-Sent Events, for browsers (beyond etcd):
//! `GET /v3/watch/sse?key=K[&prefix=true|&range_end=E][&prev_kv=true][&start_revision=N]`.
//!
//! Keys are plain text (percent-encoded in the URL). The answer is
//! `text/event-stream`: one `change` event per revision, `id:` = that
//! revision, `data:` = a JSON array of its events (`type`, `key`, `value`,
//! `create_revision`, `mod_revision`, `version`, `lease`, and `prev_value`
//! with `prev_kv`; keys and values as text, or all base64 with
//! `"base64":true` when one is not UTF-8). A browser's `EventSource`
//! reconnects by itself with `Last-Event-ID`, and the watch then starts
//! right after that revision: no gap, no duplicate, across restarts of the
//! member too. A start revision already compacted gets one `compacted`
//! event (`{"compact_revision":N}`: re-list, then watch from there) and the
//! stream ends. A comment every [`KEEP_ALIVE`] keeps proxies from closing a
//! quiet stream. With auth on, the token comes in the `Authorization`
//! header or, from a browser's `EventSource`, the [`TOKEN_COOKIE`] cookie.
//!
//! It is a client of the same Watch service as gRPC and the gateway.

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Serialize;
use tonic::Status;

use super::conn::ClientGone;
use super::State;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::{event::EventType, Event};
use crate::proto::watch_wire::watch_server::Watch;

/// How often a quiet stream gets a comment line.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event of a revision, as the `data:` JSON carries it.
#[derive(Serialize)]
struct Change {
    #[serde(rename = "type")]
    kind: &'static str,
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    base64: bool,
}

fn change(event: &Event) -> Change {
    use base64::Engine as _;
    let kv = event.kv.clone().unwrap_or_default();
    let prev = event.prev_kv.as_ref().map(|p| p.value.clone());
    let text = std::str::from_utf8(&kv.key).is_ok()
        && std::str::from_utf8(&kv.value).is_ok()
        && prev.as_ref().is_none_or(|p| std::str::from_utf8(p).is_ok());
    let show = |bytes: &[u8]| match text {
        true => String::from_utf8_lossy(bytes).into_owned(),
        false => base64::engine::general_purpose::STANDARD.encode(bytes),
    };
    Change {
        kind: match EventType::try_from(event.r#type) {
            Ok(EventType::Delete) => "DELETE",
            _ => "PUT",
        },
        key: show(&kv.key),
        value: show(&kv.value),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
        prev_value: prev.as_deref().map(show),
        base64: !text,
    }
}

/// etcd's prefix end: the key with its last byte below 0xff incremented
/// and what follows dropped; "\0" (every key from `key` on) if none is.
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The watch the query asks for; the error text is the client's 400.
fn create_request(req: &HttpRequest) -> Result<WatchCreateRequest, String> {
    let mut create = WatchCreateRequest::default();
    let mut prefix = false;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        let yes = matches!(&*v, "" | "true" | "1");
        match &*k {
            "key" => create.key = v.as_bytes().to_vec(),
            "range_end" => create.range_end = v.as_bytes().to_vec(),
            "prefix" => prefix = yes,
            "prev_kv" => create.prev_kv = yes,
            "start_revision" => {
                create.start_revision = v
                    .parse()
                    .map_err(|_| format!("start_revision {v:?} is not a number"))?
            }
            _ => {}
        }
    }
    if create.key.is_empty() {
        return Err("key is required".into());
    }
    if prefix {
        create.range_end = prefix_end(&create.key);
    }
    // EventSource's reconnect: resume right after the last revision seen.
    if let Some(last) = req.headers().get("Last-Event-ID") {
        let last: i64 = last
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("Last-Event-ID is not a revision")?;
        create.start_revision = last + 1;
    }
    Ok(create)
}

/// The SSE text for one watch response, and whether the stream ends.
fn render(resp: &WatchResponse) -> (String, bool) {
    if resp.compact_revision > 0 {
        let data = serde_json::json!({ "compact_revision": resp.compact_revision });
        return (format!("event: compacted\ndata: {data}\n\n"), true);
    }
    if resp.canceled {
        let data = serde_json::json!({ "reason": resp.cancel_reason });
        return (format!("event: canceled\ndata: {data}\n\n"), true);
    }
    let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
    if resp.created {
        return (
            format!("retry: 1000\n: watching at revision {revision}\n\n"),
            false,
        );
    }
    if resp.events.is_empty() {
        return (format!(": progress {revision}\n\n"), false);
    }
    let mut out = String::new();
    let mut i = 0;
    while i < resp.events.len() {
        let rev = resp.events[i]
            .kv
            .as_ref()
            .map(|kv| kv.mod_revision)
            .unwrap_or(0);
        let mut batch = Vec::new();
        while i < resp.events.len()
            && resp.events[i]
                .kv
                .as_ref()
                .map(|kv| kv.mod_revision)
                .unwrap_or(0)
                == rev
        {
            batch.push(change(&resp.events[i]));
            i += 1;
        }
        let data = serde_json::to_string(&batch).unwrap_or_default();
        out.push_str(&format!("id: {rev}\nevent: change\ndata: {data}\n\n"));
    }
    (out, false)
}

fn error_event(status: &Status) -> Bytes {
    let data = serde_json::json!({ "error": status.message(), "code": status.code() as i32 });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The cookie a page's `EventSource` carries its auth token in (it cannot
/// set headers); the dashboard sets it at login.
pub const TOKEN_COOKIE: &str = "cairn-token";

/// The token of the [`TOKEN_COOKIE`] cookie, when no `Authorization` header
/// gave one.
fn with_cookie_token<T>(http: &HttpRequest, mut req: tonic::Request<T>) -> tonic::Request<T> {
    if req.metadata().get("token").is_some() {
        return req;
    }
    let token = http
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .and_then(|(_, value)| tonic::metadata::MetadataValue::try_from(value).ok());
    if let Some(token) = token {
        req.metadata_mut().insert("token", token);
    }
    req
}

async fn sse(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let create = match create_request(&req) {
        Ok(create) => create,
        Err(why) => return HttpResponse::BadRequest().body(why),
    };
    let services = state.services.clone();
    let inbound = super::gateway::inbound(
        &[WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        }],
        services.max_decode(),
    );
    let request = with_cookie_token(&req, super::gateway::grpc_request(&req, inbound));
    // Counted as a Watch call, as the gateway's /v3/watch is: handled with
    // the stream's status at its end, Canceled when the client leaves.
    let mut call = state.grpc.call("etcdserverpb.Watch", "Watch");
    let opened = services
        .runtime
        .clone()
        .spawn(async move { services.watch.watch(request).await });
    let replies = match opened.await {
        Ok(Ok(replies)) => replies.into_inner(),
        Ok(Err(status)) => {
            call.ended(status.code());
            return HttpResponse::ServiceUnavailable().body(status.message().to_string());
        }
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    let gone = req.conn_data::<ClientGone>().cloned();
    let gone: futures::future::BoxFuture<'static, ()> = match gone {
        Some(gone) => Box::pin(gone.wait()),
        None => Box::pin(std::future::pending()),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (Box::pin(replies), tick, gone, false, call);
    let events = futures::stream::unfold(
        state,
        |(mut replies, mut tick, mut gone, done, mut call)| async move {
            if done {
                return None;
            }
            let (bytes, done) = tokio::select! {
                // The client left: the call is dropped, counted Canceled.
                _ = &mut gone => return None,
                item = replies.next() => match item {
                    None => {
                        call.ended(tonic::Code::Ok);
                        return None;
                    }
                    Some(Ok(reply)) => match reply.to_response() {
                        Ok(resp) => {
                            let (text, end) = render(&resp);
                            if end {
                                call.ended(tonic::Code::Ok);
                            }
                            (Bytes::from(text), end)
                        }
                        Err(e) => {
                            call.ended(tonic::Code::Internal);
                            (error_event(&Status::internal(e.to_string())), true)
                        }
                    },
                    Some(Err(status)) => {
                        call.ended(status.code());
                        (error_event(&status), true)
                    }
                },
                _ = tick.tick() => (Bytes::from_static(b": keep-alive\n\n"), false),
            };
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (replies, tick, gone, done, call),
            ))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v3/watch/sse", web::get().to(sse));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn a_cookie_gives_the_token_when_no_header_does() {
        let http = actix_web::test::TestRequest::default()
            .insert_header(("Cookie", "a=b; cairn-token=tok.1"))
            .to_http_request();
        let req = with_cookie_token(&http, tonic::Request::new(()));
        let token = req.metadata().get("token").and_then(|v| v.to_str().ok());
        assert_eq!(token, Some("tok.1"));
        let http = actix_web::test::TestRequest::default()
            .insert_header(("Cookie", "cairn-token=tok.1"))
            .insert_header(("Authorization", "tok.2"))
            .to_http_request();
        let req = with_cookie_token(&http, super::super::gateway::grpc_request(&http, ()));
        let token = req.metadata().get("token").and_then(|v| v.to_str().ok());
        assert_eq!(token, Some("tok.2"));
    }

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/flags/"), b"/flags0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn one_event_per_revision_with_its_id() {
        let kv = |key: &[u8], rev| KeyValue {
            key: key.to_vec(),
            value: b"on".to_vec(),
            mod_revision: rev,
            ..Default::default()
        };
        let resp = WatchResponse {
            events: vec![
                Event {
                    kv: Some(kv(b"a", 5)),
                    ..Default::default()
                },
                Event {
                    kv: Some(kv(b"b", 5)),
                    ..Default::default()
                },
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(kv(b"\xff", 6)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let (text, end) = render(&resp);
        assert!(!end);
        assert_eq!(
            text,
            "id: 5\nevent: change\ndata: [{\"type\":\"PUT\",\"key\":\"a\",\"value\":\"on\",\"create_revision\":0,\"mod_revision\":5,\"version\":0,\"lease\":0},\
             {\"type\":\"PUT\",\"key\":\"b\",\"value\":\"on\",\"create_revision\":0,\"mod_revision\":5,\"version\":0,\"lease\":0}]\n\n\
             id: 6\nevent: change\ndata: [{\"type\":\"DELETE\",\"key\":\"/w==\",\"value\":\"b24=\",\"create_revision\":0,\"mod_revision\":6,\"version\":0,\"lease\":0,\"base64\":true}]\n\n"
        );
        let compacted = WatchResponse {
            canceled: true,
            compact_revision: 4,
            ..Default::default()
        };
        assert_eq!(
            render(&compacted),
            (
                "event: compacted\ndata: {\"compact_revision\":4}\n\n".to_string(),
                true
            )
        );
    }
}
