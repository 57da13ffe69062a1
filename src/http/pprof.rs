//! `--enable-pprof`: CPU profiles at Go's pprof paths, on the client URLs
//! and `--listen-metrics-urls`, as etcd serves Go's `net/http/pprof` there.
//!
//! * `GET /debug/pprof/profile?seconds=N` samples every thread of the
//!   process at 100 Hz (SIGPROF, the `pprof` crate) for N seconds (30 when
//!   missing or not a positive number, as Go; at most [`MAX_SECONDS`]) and
//!   answers the profile in pprof's protobuf format, not gzipped (Go's is;
//!   `go tool pprof` and pprof read both).
//! * `GET /debug/pprof/cmdline`: the command line, NUL-separated, as Go.
//! * `GET /debug/pprof/`: a plain index of the two.
//!
//! Go's other profiles (heap, goroutine, allocs, block, mutex,
//! threadcreate, trace, symbol) have no Rust equivalent here: 404. One CPU
//! profile runs at a time (the sampler is process-wide); a second request
//! meanwhile gets Go's 500 answer. Without the flag, none of these routes
//! exist (404), as etcd without `--enable-pprof`.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

/// The longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 600;
/// Go's `runtime.SetCPUProfileRate` default.
const FREQUENCY_HZ: i32 = 100;

/// The seconds a profile request asks for: Go's rule (`seconds` missing,
/// unparsable or not positive: 30).
fn seconds(req: &HttpRequest) -> u64 {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "seconds")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .map_or(30, |s| s as u64)
}

async fn profile(req: HttpRequest) -> HttpResponse {
    let secs = seconds(&req);
    if secs > MAX_SECONDS {
        return HttpResponse::BadRequest().body(format!(
            "profile duration exceeds the server's limit of {MAX_SECONDS} seconds"
        ));
    }
    // Sampling, then symbolizing (slow in a debug build), on a blocking
    // thread: the admin server's worker goes on serving meanwhile.
    let encoded = web::block(move || record(Duration::from_secs(secs))).await;
    match encoded {
        Ok(Ok(body)) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header(("Content-Disposition", "attachment; filename=\"profile\""))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .body(body),
        Ok(Err(e)) => HttpResponse::InternalServerError().body(e),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// Samples the process for `duration`; the profile, encoded.
fn record(duration: Duration) -> Result<Vec<u8>, String> {
    // Frames inside these libraries are not unwound: unwinding through
    // them from a signal handler can deadlock (pprof-rs's advice).
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("Could not enable CPU profiling: {e}"))?;
    std::thread::sleep(duration);
    let report = guard.report().build();
    drop(guard);
    let profile = report
        .and_then(|report| report.pprof())
        .map_err(|e| format!("Could not build the CPU profile: {e}"))?;
    use pprof::protos::Message as _;
    Ok(profile.encode_to_vec())
}

async fn cmdline() -> HttpResponse {
    let args: Vec<String> = std::env::args().collect();
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(args.join("\0"))
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(
            "cairn pprof (--enable-pprof)\n\
             /debug/pprof/profile?seconds=N  CPU profile (pprof protobuf)\n\
             /debug/pprof/cmdline            the command line\n",
        )
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/debug/pprof/", web::get().to(index))
        .route("/debug/pprof/profile", web::get().to(profile))
        .route("/debug/pprof/cmdline", web::get().to(cmdline));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_follow_gos_rule() {
        let secs = |q: &str| {
            seconds(
                &actix_web::test::TestRequest::get()
                    .uri(&format!("/debug/pprof/profile{q}"))
                    .to_http_request(),
            )
        };
        assert_eq!(secs(""), 30);
        assert_eq!(secs("?seconds=2"), 2);
        assert_eq!(secs("?seconds=0"), 30);
        assert_eq!(secs("?seconds=-4"), 30);
        assert_eq!(secs("?seconds=x"), 30);
    }
}
