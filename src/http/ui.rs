//! The web dashboard (beyond etcd, which has none): `GET /ui/` and its two
//! assets, compiled into the binary (no CDN, no build step; works
//! offline). Served on the client URLs with `--enable-ui` only: it can
//! change keys, so it is off unless asked for (docs/dashboard.md).
//!
//! The page is plain HTML, CSS and JavaScript (src/http/ui/) and has no
//! server side of its own: it calls the member's JSON gateway (`/v3/…`,
//! with the `Authorization` token once logged in), `/health`, `/metrics`
//! and the SSE watch (`/v3/watch/sse`, token in the `cairn-token`
//! cookie), like any other client.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The page loads only its own assets; it may call other members' client
/// URLs (the cluster view asks each for its status).
const CSP: &str = "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(to_index))
        .route("/ui/", web::get().to(index))
        .route("/ui/app.js", web::get().to(script))
        .route("/ui/app.css", web::get().to(style));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_with_their_types() {
        actix_web::rt::System::new().block_on(served_with_their_types());
    }

    async fn served_with_their_types() {
        let app = actix_web::test::init_service(actix_web::App::new().configure(routes)).await;
        for (path, kind) in [
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let req = actix_web::test::TestRequest::get().uri(path).to_request();
            let resp = actix_web::test::call_service(&app, req).await;
            assert_eq!(resp.status(), 200, "{path}");
            let got = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert!(got.is_some_and(|t| t.starts_with(kind)), "{path}: {got:?}");
        }
        let req = actix_web::test::TestRequest::get().uri("/ui").to_request();
        let resp = actix_web::test::call_service(&app, req).await;
        assert_eq!(resp.status(), 308);
    }

    #[test]
    fn the_page_names_only_embedded_assets() {
        for line in INDEX
            .lines()
            .filter(|l| l.contains("<script") || l.contains("<link"))
        {
            assert!(
                line.contains("\"/ui/app.js\"")
                    || line.contains("\"/ui/app.css\"")
                    || line.contains("href=\"data:,\""),
                "{line}"
            );
        }
        for asset in [INDEX, STYLE] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
    }
}
