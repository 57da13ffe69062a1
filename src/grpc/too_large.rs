//! grpc-go's answer to a request message over the server's size limit
//! (`--max-request-bytes` plus gRPC's overhead): code ResourceExhausted,
//! `grpc: received message larger than max (<found> vs. <limit>)`. tonic
//! refuses the same message with OutOfRange and its own text; this tower
//! layer around the router rewrites that answer of a unary call (tonic
//! sends it as a trailers-only response, the status in the headers) into
//! etcd's. Anything else passes untouched, at the cost of a look at two
//! headers of a failed call.

use std::task::{Context, Poll};

use futures::future::{MapOk, TryFutureExt};
use http::{HeaderMap, HeaderValue};

/// Wraps the gRPC router (`grpc::serve`).
#[derive(Clone, Copy, Default)]
pub struct TooLargeLayer;

impl<S> tower_layer::Layer<S> for TooLargeLayer {
    type Service = TooLarge<S>;
    fn layer(&self, inner: S) -> TooLarge<S> {
        TooLarge { inner }
    }
}

#[derive(Clone)]
pub struct TooLarge<S> {
    inner: S,
}

type Fix<RB> = fn(http::Response<RB>) -> http::Response<RB>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for TooLarge<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Fix<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fix: Fix<RB> = |mut resp| {
            rewrite(resp.headers_mut());
            resp
        };
        self.inner.call(req).map_ok(fix)
    }
}

/// tonic's `Error, decoded message length too large: found N bytes, the
/// limit is: M bytes` (code 11) becomes grpc-go's (code 8).
fn rewrite(headers: &mut HeaderMap) {
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return;
    }
    let Some((found, limit)) = headers
        .get("grpc-message")
        .map(|m| percent_decoded(m.as_bytes()))
        .and_then(|m| sizes(&m))
    else {
        return;
    };
    let message = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", message);
    }
}

/// A `grpc-message` as written (tonic percent-encodes spaces; grpc-go
/// only bytes outside printable ASCII).
fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The two sizes of tonic's message, if it is that message.
fn sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(status));
        h.insert("grpc-message", HeaderValue::from_static(message));
        h
    }

    #[test]
    fn tonics_too_large_becomes_grpc_gos() {
        // As tonic writes it: spaces percent-encoded.
        let mut h = headers(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%203145737%20bytes,\
             %20the%20limit%20is:%202097152%20bytes",
        );
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "grpc: received message larger than max (3145737 vs. 2097152)"
        );
    }

    #[test]
    fn other_answers_pass_untouched() {
        for (status, message) in [
            (
                "11",
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                "3",
                "Error, decoded message length too large: found 1 bytes, the limit is: 0 bytes",
            ),
            ("0", ""),
        ] {
            let mut h = headers(status, message);
            rewrite(&mut h);
            assert_eq!(h, headers(status, message));
        }
    }
}
