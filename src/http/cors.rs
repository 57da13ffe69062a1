//! etcd's `--cors` on the client URLs: the origins allowed to call the
//! member from a browser. As etcd's CORS handler: when `*` is allowed (the
//! default), or the list is empty, every answer carries
//! `Access-Control-Allow-Origin: *`; otherwise an answer to an allowed
//! `Origin` names it, and any other gets no CORS headers (the browser then
//! refuses the page its answer). Every `OPTIONS` request (a preflight) is
//! answered 200 with no body, before any route.

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpResponse;

/// The allowed origins, from `--cors`.
#[derive(Clone, Debug)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: &[String]) -> Cors {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        Cors {
            any: origins.is_empty() || origins.iter().any(|o| o == "*"),
            origins,
        }
    }

    /// The `Access-Control-Allow-Origin` to answer a request from `origin`
    /// with, if any.
    pub fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let listed = origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|allowed| allowed == o));
        listed.then(|| origin.clone())
    }
}

/// Answers preflights and adds the CORS headers (an actix-web `wrap_fn`).
pub fn middleware<S, B>(
    cors: &Cors,
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let allowed = cors.allow(req.headers().get(header::ORIGIN));
    let call = match *req.method() == Method::OPTIONS {
        true => Err(req.into_parts().0),
        false => Ok(srv.call(req)),
    };
    async move {
        let mut res = match call {
            Ok(answer) => answer.await?.map_into_left_body(),
            Err(http) => {
                ServiceResponse::new(http, HttpResponse::Ok().finish()).map_into_right_body()
            }
        };
        if let Some(origin) = allowed {
            let headers = res.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("accept, content-type, authorization"),
            );
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_allowed_as_etcd_allows_them() {
        let a = HeaderValue::from_static("http://a.example:8080");
        let b = HeaderValue::from_static("http://b.example:8080");
        let star = Some(HeaderValue::from_static("*"));
        assert_eq!(Cors::new(&["*".into()]).allow(Some(&a)), star);
        assert_eq!(Cors::new(&[]).allow(None), star);
        assert_eq!(Cors::new(&["".into()]).allow(Some(&a)), star);
        let listed = Cors::new(&["http://a.example:8080".into()]);
        assert_eq!(listed.allow(Some(&a)), Some(a.clone()));
        assert_eq!(listed.allow(Some(&b)), None);
        assert_eq!(listed.allow(None), None);
    }
}
