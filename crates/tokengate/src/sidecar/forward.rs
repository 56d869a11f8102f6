//! HTTP forward-auth: one contract for nginx, Caddy, Traefik and Envoy.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use tower::Service;

use super::{Current, PROBLEM, STATUS, SUCCESS_HEADERS};

/// The largest refusal body read back from the Gate (they are a few
/// hundred bytes).
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// How refusals reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Refusals {
    /// As an in-process Gate sends them: status, headers, problem+json
    /// body (Caddy, Traefik, Envoy).
    #[default]
    AsSent,
    /// For nginx's `auth_request`, which passes only 2xx, 401 and 403 on
    /// and turns any other status into 500: a refusal other than 401 is
    /// answered 403, every refusal carries its status in
    /// `X-Tokengate-Status` and its body, on one line, in
    /// `X-Tokengate-Problem`, and the shipped nginx snippet answers the
    /// client with them.
    Nginx,
}

/// The forward-auth endpoint: the original request is rebuilt from the
/// forwarded method and URI, with the headers the proxy sent, and checked
/// by the service in force (a Gate around [`Admitted`](super::Admitted)).
/// A request without a forwarded method or URI gets `400` naming the
/// header the proxy must send.
pub struct ForwardAuth<S> {
    current: Current<S>,
    refusals: Refusals,
    path_prefix: Option<&'static str>,
}

impl<S> Clone for ForwardAuth<S> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            refusals: self.refusals,
            path_prefix: self.path_prefix,
        }
    }
}

impl<S> std::fmt::Debug for ForwardAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("refusals", &self.refusals)
            .field("path_prefix", &self.path_prefix)
            .finish_non_exhaustive()
    }
}

impl<S> ForwardAuth<S> {
    /// Checks with the service in force in `current`.
    pub fn new(current: Current<S>) -> Self {
        Self {
            current,
            refusals: Refusals::AsSent,
            path_prefix: None,
        }
    }

    /// Takes the original request from the request itself, as Envoy's HTTP
    /// ext_authz sends it: its method, and its path and query after
    /// `prefix` (the filter's `path_prefix`), e.g. `GET /auth/envoy/notes?page=2`
    /// for `GET /notes?page=2`.
    #[must_use]
    pub fn path_prefix(mut self, prefix: &'static str) -> Self {
        self.path_prefix = Some(prefix);
        self
    }

    /// Answers refusals as `refusals` says.
    #[must_use]
    pub fn refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
    }
}

const METHOD_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-method"),
];
const URI_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-uri"),
];

/// The original method and URI from the forwarded headers, or what is missing.
fn original(headers: &HeaderMap) -> Result<(Method, Uri), String> {
    let first = |names: &[HeaderName; 2]| names.iter().find_map(|n| headers.get(n));
    let Some(method) = first(&METHOD_HEADERS) else {
        return Err("the original method is missing: the proxy must send X-Forwarded-Method (Traefik, Caddy) or X-Original-Method (nginx)".to_owned());
    };
    let Some(uri) = first(&URI_HEADERS) else {
        return Err("the original URI is missing: the proxy must send X-Forwarded-Uri (Traefik, Caddy) or X-Original-URI (nginx)".to_owned());
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| "the forwarded method is not an HTTP method".to_owned())?;
    let uri = Uri::try_from(uri.as_bytes())
        .ok()
        .and_then(|uri| uri.path_and_query().cloned())
        .filter(|p| p.path().starts_with('/'))
        .ok_or_else(|| "the forwarded URI is not a path (with its query)".to_owned())?;
    Ok((method, Uri::from(uri)))
}

/// The original request of `method` on `uri`, whose path starts with `prefix`.
fn after_prefix(method: &Method, uri: &Uri, prefix: &str) -> Result<(Method, Uri), String> {
    let rest = uri
        .path()
        .strip_prefix(prefix)
        .filter(|rest| rest.starts_with('/'))
        .ok_or_else(|| format!("the path does not continue after {prefix}: set the ext_authz filter's path_prefix to {prefix}"))?;
    let rebuilt = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let uri = Uri::try_from(rebuilt).map_err(|_| "the path is not a path".to_owned())?;
    Ok((method.clone(), uri))
}

/// A `400` problem naming what the proxy got wrong.
fn malformed(detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "urn:tokengate:problem:bad-forward-request",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl<S, RB> Service<Request<Body>> for ForwardAuth<S>
where
    S: Service<Request<Body>, Response = http::Response<RB>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // A body the proxy sent is never read: the answer closes the
        // connection, or the proxy's next request on it could be lost.
        let closes = tokengate_check::refusal_closes_connection(&request);
        let (mut parts, _body) = request.into_parts();
        let original = match self.path_prefix {
            None => original(&parts.headers),
            Some(prefix) => after_prefix(&parts.method, &parts.uri, prefix),
        };
        let (method, uri) = match original {
            Ok(original) => original,
            Err(detail) => {
                tracing::warn!(%detail, "forward-auth request without the original request");
                return Box::pin(std::future::ready(Ok(closing(malformed(&detail), closes))));
            }
        };
        parts.method = method;
        parts.uri = uri;
        // The check has no body to read: nothing to drain, no reason to
        // close the proxy's connection.
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.remove(TRANSFER_ENCODING);
        let request = Request::from_parts(parts, Body::empty());
        let mut service = self.current.get();
        let refusals = self.refusals;
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request).await?;
            Ok(closing(answer(response, refusals).await, closes))
        })
    }
}

/// `response`, with `Connection: close` when `closes`.
fn closing(mut response: Response, closes: bool) -> Response {
    if closes {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The Gate's answer as the proxy needs it.
pub(crate) async fn answer<RB>(response: http::Response<RB>, refusals: Refusals) -> Response
where
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    // Read to its end: the audit record is written when the body is.
    let body = axum::body::to_bytes(Body::new(body), BODY_LIMIT)
        .await
        .unwrap_or_default();
    if parts.status.is_success() {
        for name in SUCCESS_HEADERS {
            if !parts.headers.contains_key(&name) {
                parts.headers.insert(name, HeaderValue::from_static(""));
            }
        }
    } else if refusals == Refusals::Nginx {
        parts
            .headers
            .insert(STATUS, HeaderValue::from(parts.status.as_u16()));
        // nginx's `$upstream_http_www_authenticate` holds the first header
        // only: the challenges (`Bearer`, `DPoP`) go in one, as RFC 9110
        // allows.
        let challenges: Vec<&[u8]> = parts
            .headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if challenges.len() > 1
            && let Ok(joined) = HeaderValue::from_bytes(&challenges.join(&b", "[..]))
        {
            parts.headers.insert(http::header::WWW_AUTHENTICATE, joined);
        }
        if let Ok(problem) = HeaderValue::from_bytes(&body) {
            parts.headers.insert(PROBLEM, problem);
        }
        if parts.status != StatusCode::UNAUTHORIZED {
            parts.status = StatusCode::FORBIDDEN;
        }
    }
    Response::from_parts(parts, Body::from(body))
}
