//! grpc-go-prometheus's server metrics for the gRPC API, with its names
//! and labels (`grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`), as
//! etcd exports them: `grpc_server_started_total` when a call arrives,
//! `grpc_server_handled_total` and the `grpc_server_handling_seconds`
//! histogram when its status is known (the response headers of a failed
//! call, else the trailers at the end of its body). A tower layer around
//! tonic's router (wired in `grpc::serve`); the JSON gateway counts its
//! calls with the same [`Call`], under the RPC's own labels, as etcd's
//! gateway (an in-process gRPC client of its own server) is counted. The
//! same layer counts the gRPC bodies' bytes both ways
//! (`etcd_network_client_grpc_received_bytes_total` / `_sent_bytes_total`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The counters and the histogram, registered in the /metrics registry.
pub struct GrpcCounters {
    started: IntCounterVec,
    handled: IntCounterVec,
    /// From the call's arrival to its status (a stream's whole life).
    handling: HistogramVec,
}

impl GrpcCounters {
    pub fn register(registry: &Registry) -> Arc<GrpcCounters> {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("each metric registered once");
            v
        };
        Arc::new(GrpcCounters {
            started: vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            ),
            handled: vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            handling: {
                // grpc-go-prometheus's default buckets (Prometheus').
                let opts = HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                );
                let h = HistogramVec::new(opts, &["grpc_type", "grpc_service", "grpc_method"])
                    .expect("a valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("each metric registered once");
                h
            },
        })
    }

    /// A call of `service`/`method` (gRPC's names) starts now.
    pub fn call(self: &Arc<Self>, service: &str, method: &str) -> Call {
        let kind = grpc_type(method);
        self.started
            .with_label_values(&[kind, service, method])
            .inc();
        Call {
            counters: self.clone(),
            labels: [kind.to_string(), service.to_string(), method.to_string()],
            started: std::time::Instant::now(),
            counted: false,
        }
    }
}

/// The gRPC service and method a gateway route calls, from the names of
/// the gateway's service field and its Rust method (`kv`, `delete_range`
/// -> `etcdserverpb.KV`, `DeleteRange`).
pub fn gateway_names(service: &str, method: &str) -> (&'static str, String) {
    let service = match service {
        "kv" => "etcdserverpb.KV",
        "lease" => "etcdserverpb.Lease",
        "cluster" => "etcdserverpb.Cluster",
        "maintenance" => "etcdserverpb.Maintenance",
        "auth" => "etcdserverpb.Auth",
        "watch" => "etcdserverpb.Watch",
        "lock" => "v3lockpb.Lock",
        "election" => "v3electionpb.Election",
        _ => "unknown",
    };
    let mut name: String = method
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if name == "HashKv" {
        name = "HashKV".into();
    }
    (service, name)
}

/// grpc-go's names of the status codes.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The streaming kind of each etcd RPC that is not unary.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    }
}

/// One call's labels, and whether its end was counted.
pub struct Call {
    counters: Arc<GrpcCounters>,
    labels: [String; 3],
    started: std::time::Instant,
    counted: bool,
}

impl Call {
    /// The call ended with this `grpc-status` (its decimal text).
    fn handled(&mut self, code: &[u8]) {
        if !self.counted {
            self.counted = true;
            let [t, s, m] = &self.labels;
            self.counters
                .handled
                .with_label_values(&[t.as_str(), s.as_str(), m.as_str(), code_name(code)])
                .inc();
            self.counters
                .handling
                .with_label_values(&[t.as_str(), s.as_str(), m.as_str()])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    /// The call ended with this status code.
    pub fn ended(&mut self, code: tonic::Code) {
        self.handled((code as i32).to_string().as_bytes());
    }
}

impl Drop for Call {
    /// A body dropped before its trailers: the client went away.
    fn drop(&mut self) {
        self.handled(b"1");
    }
}

#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<GrpcCounters>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            counters: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    counters: Arc<GrpcCounters>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<Tapped<B>>, Response = http::Response<RB>>,
    B: Body<Data = Bytes> + Unpin,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Response = http::Response<Tapped<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or_default();
        let method = parts.next().unwrap_or_default();
        let mut call = self.counters.call(service, method);
        let response = self.inner.call(req.map(Tapped::request));
        Box::pin(async move {
            let resp = response.await?;
            // A failed call may carry its status in the headers alone.
            if let Some(code) = resp.headers().get("grpc-status") {
                call.handled(code.as_bytes());
            }
            Ok(resp.map(|inner| Tapped::response(inner, call)))
        })
    }
}

/// A body that shows each of its frames to `on_frame` as it passes: the
/// request's counts its bytes, the response's its bytes and its call's end.
pub struct Tapped<B> {
    inner: B,
    on_frame: OnFrame,
}

type OnFrame = Box<dyn FnMut(&Frame<Bytes>) + Send + Sync>;

impl<B> Tapped<B> {
    /// The request body: its bytes, in `etcd_network_client_grpc_received_bytes_total`.
    fn request(inner: B) -> Tapped<B> {
        let on_frame = Box::new(|frame: &Frame<Bytes>| {
            if let Some(data) = frame.data_ref() {
                crate::io_metrics::CLIENT_GRPC_RECEIVED.inc_by(data.len() as u64);
            }
        });
        Tapped { inner, on_frame }
    }

    /// The response body: its bytes, and `call` handled at its trailers.
    fn response(inner: B, mut call: Call) -> Tapped<B> {
        let on_frame = Box::new(move |frame: &Frame<Bytes>| {
            if let Some(data) = frame.data_ref() {
                crate::io_metrics::CLIENT_GRPC_SENT.inc_by(data.len() as u64);
            }
            if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                call.handled(code.as_bytes());
            }
        });
        Tapped { inner, on_frame }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tapped<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            (self.on_frame)(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_routes_are_named_as_grpc_calls() {
        let cases = [
            ("kv", "delete_range", "etcdserverpb.KV", "DeleteRange"),
            (
                "lease",
                "lease_time_to_live",
                "etcdserverpb.Lease",
                "LeaseTimeToLive",
            ),
            (
                "maintenance",
                "hash_kv",
                "etcdserverpb.Maintenance",
                "HashKV",
            ),
            (
                "auth",
                "user_change_password",
                "etcdserverpb.Auth",
                "UserChangePassword",
            ),
            ("election", "observe", "v3electionpb.Election", "Observe"),
        ];
        for (field, method, service, name) in cases {
            assert_eq!(gateway_names(field, method), (service, name.to_string()));
        }
    }

    #[test]
    fn a_call_is_counted_and_timed_once() {
        let registry = Registry::new();
        let counters = GrpcCounters::register(&registry);
        let mut call = counters.call("etcdserverpb.KV", "Range");
        call.ended(tonic::Code::NotFound);
        drop(call);
        let handled = counters
            .handled
            .with_label_values(&["unary", "etcdserverpb.KV", "Range", "NotFound"])
            .get();
        let canceled = counters
            .handled
            .with_label_values(&["unary", "etcdserverpb.KV", "Range", "Canceled"])
            .get();
        let timed = counters
            .handling
            .with_label_values(&["unary", "etcdserverpb.KV", "Range"])
            .get_sample_count();
        assert_eq!((handled, canceled, timed), (1, 0, 1));
    }
}
