//! Envoy's ext_authz over gRPC: `envoy.service.auth.v3.Authorization/Check`.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use bytes::Bytes;
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use http::header::CONTENT_LENGTH;
use http::{
    HeaderMap, HeaderName, HeaderValue as HttpHeaderValue, Method, Request, StatusCode, Uri,
};
use tokengate_ipfilter::PeerAddr;
use tower::Service;

use super::forward::{Refusals, answer};
use super::{Current, IDENTITY_HEADERS};

/// Envoy's ext_authz gRPC service over the service in force (a Gate
/// around [`Admitted`](super::Admitted)).
///
/// The request is rebuilt from the `CheckRequest`'s attributes: the
/// method, the path with its query (as Envoy sends it), the headers
/// (`headers`, or `header_map` when Envoy sends raw values) and the source
/// address as the peer (the gRPC connection's when the check names
/// none), through the policy's trusted proxies like any
/// other. Admitted: `OkHttpResponse` with the identity headers (replacing
/// any the client sent), `headers_to_remove: ["authorization"]` when the
/// policy says `[upstream] remove_authorization = true`, and the success
/// headers (`RateLimit`, `token-expires`) in `response_headers_to_add`.
/// Refused: `DeniedHttpResponse` with the status, headers and body an
/// in-process Gate sends, and `CheckResponse.status` carrying the gRPC
/// code of that status (16 for 401, 7 for 403, 8 for 429, 14 for 503).
pub struct ExtAuthz<S> {
    current: Current<S>,
    remove_authorization: bool,
}

impl<S> std::fmt::Debug for ExtAuthz<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("remove_authorization", &self.remove_authorization)
            .finish_non_exhaustive()
    }
}

impl<S> ExtAuthz<S> {
    /// Checks with the service in force in `current`; asks Envoy to drop
    /// the `Authorization` header before the upstream when
    /// `remove_authorization`.
    pub fn new(current: Current<S>, remove_authorization: bool) -> Self {
        Self {
            current,
            remove_authorization,
        }
    }

    /// As a tonic service, to add to a server.
    pub fn into_server(self) -> AuthorizationServer<Self>
    where
        Self: Authorization,
    {
        AuthorizationServer::new(self)
    }
}

/// The gRPC code of an HTTP refusal's status.
fn grpc_code(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        500..=599 => tonic::Code::Internal,
        _ => tonic::Code::PermissionDenied,
    }
}

/// The request Envoy asks about, or why it cannot be rebuilt.
fn rebuild(
    check: &CheckRequest,
    connection: Option<SocketAddr>,
) -> Result<Request<Body>, &'static str> {
    let http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or("the check carries no HTTP request attributes")?;
    let method = Method::from_bytes(http.method.as_bytes())
        .map_err(|_| "the method is not an HTTP method")?;
    let uri = Uri::try_from(http.path.as_str())
        .ok()
        .filter(|u| u.path().starts_with('/'))
        .ok_or("the path is not a path")?;
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| {
        // Pseudo-headers (:authority, :path) are not header names.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    };
    match &http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, value);
            }
        }
        _ => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes());
            }
        }
    }
    headers.remove(CONTENT_LENGTH);
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    // The source Envoy reports; without one, the connection's peer (Envoy).
    let source = check
        .get_client_address()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 0))
        .or(connection);
    if let Some(peer) = source {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    Ok(request)
}

fn header(name: &str, value: &[u8], append_action: HeaderAppendAction) -> HeaderValueOption {
    #[allow(
        deprecated,
        reason = "`append` is deprecated for `append_action`; left unset"
    )]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: append_action.into(),
        keep_empty_value: false,
    }
}

fn status(code: tonic::Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code.into(),
        message: message.to_owned(),
        details: Vec::new(),
    }
}

fn denied(code: StatusCode, headers: &HeaderMap, body: String) -> CheckResponse {
    let headers = headers
        .iter()
        .map(|(n, v)| {
            header(
                n.as_str(),
                v.as_bytes(),
                HeaderAppendAction::AppendIfExistsOrAdd,
            )
        })
        .collect();
    CheckResponse {
        status: Some(status(
            grpc_code(code),
            code.canonical_reason().unwrap_or(""),
        )),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(code.as_u16()),
            }),
            headers,
            body,
        })),
        ..CheckResponse::default()
    }
}

#[tonic::async_trait]
impl<S, RB> Authorization for ExtAuthz<S>
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
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let connection = request.remote_addr();
        let check = request.into_inner();
        let request = match rebuild(&check, connection) {
            Ok(request) => request,
            Err(detail) => {
                tracing::warn!(detail, "ext_authz check without a usable HTTP request");
                let body = format!(
                    "{{\"type\":\"urn:tokengate:problem:bad-forward-request\",\"title\":\"Bad Request\",\"status\":400,\"detail\":\"{detail}\"}}"
                );
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/problem+json"),
                );
                return Ok(tonic::Response::new(denied(
                    StatusCode::BAD_REQUEST,
                    &headers,
                    body,
                )));
            }
        };
        let mut service = self.current.get();
        let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
        let Ok(response) = service.call(request).await;
        let response = answer(response, Refusals::AsSent).await;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let body = axum::body::to_bytes(body, super::forward::BODY_LIMIT)
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            return Ok(tonic::Response::new(denied(
                parts.status,
                &parts.headers,
                body,
            )));
        }
        let mut ok = OkHttpResponse::default();
        for (name, value) in &parts.headers {
            if value.is_empty() {
                // Nothing to say: an identity header is removed below.
            } else if IDENTITY_HEADERS.contains(name) {
                // Replaces whatever the client sent under that name.
                ok.headers.push(header(
                    name.as_str(),
                    value.as_bytes(),
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ));
            } else if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_TYPE {
                ok.response_headers_to_add.push(header(
                    name.as_str(),
                    value.as_bytes(),
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ));
            }
        }
        // A client-sent identity header the check did not set is dropped.
        for name in IDENTITY_HEADERS {
            if parts
                .headers
                .get(&name)
                .is_none_or(HttpHeaderValue::is_empty)
            {
                ok.headers_to_remove.push(name.as_str().to_owned());
            }
        }
        if self.remove_authorization {
            ok.headers_to_remove.push("authorization".to_owned());
        }
        Ok(tonic::Response::new(CheckResponse {
            status: Some(status(tonic::Code::Ok, "")),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..CheckResponse::default()
        }))
    }
}
