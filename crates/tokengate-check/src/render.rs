use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::{CheckBody, Refusal};
use tokengate_core::Denial;
use tokengate_core::RequestTrail;
use tokengate_core::TOKEN_USES_REMAINING;
use tokengate_core::denial::retry_after_seconds;

/// Characters gRPC requires percent-encoded in `grpc-message`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE_HEADER: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Whether a request is gRPC: `content-type: application/grpc` or
/// `application/grpc+…` / `application/grpc;…`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let bytes = content_type.as_bytes();
    bytes
        .get(..16)
        .is_some_and(|head| head.eq_ignore_ascii_case(b"application/grpc"))
        && matches!(bytes.get(16), None | Some(b'+' | b';'))
}

/// Whether a refusal of `request` must close its HTTP/1 connection: the
/// request may carry a body (a `Transfer-Encoding`, or a `Content-Length`
/// other than 0) that is never read. A server that answers before reading
/// a body cannot reuse the connection (hyper drains what has arrived and
/// closes otherwise), and a client not told so sends its next request on
/// a connection that is closing: that request is lost. `Connection: close`
/// tells it to open a new one. HTTP/2 streams need nothing of the kind.
pub fn refusal_closes_connection<B>(request: &Request<B>) -> bool {
    let http1 = matches!(
        request.version(),
        http::Version::HTTP_10 | http::Version::HTTP_11
    );
    let headers = request.headers();
    http1
        && (headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0"))
}

/// The `realm` of the `WWW-Authenticate` challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct Realm(Arc<str>);

impl Realm {
    /// A realm of 1 to 64 printable ASCII characters other than `"` and `\`.
    pub fn new(realm: &str) -> Result<Self, RealmError> {
        let valid = (1..=64).contains(&realm.len())
            && realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if valid {
            Ok(Self(realm.into()))
        } else {
            Err(RealmError {
                realm: realm.chars().take(80).collect(),
            })
        }
    }

    /// The realm text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Realm {
    fn default() -> Self {
        Self("tokengate".into())
    }
}

impl fmt::Debug for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Realm({:?})", &*self.0)
    }
}

/// A realm that cannot be put in a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("realm {realm:?} must be 1 to 64 printable ASCII characters without '\"' or '\\'")]
pub struct RealmError {
    realm: String,
}

/// Renders a denial as an HTTP response, for deployments that want their
/// own error bodies. Implemented for closures.
///
/// The renderer chooses the body and may add headers. Whatever it returns,
/// the status is forced to the denial's and the challenge and rate-limit
/// headers are set by tokengate, so a custom body cannot weaken the
/// protocol.
pub trait RenderDenial: Send + Sync + 'static {
    /// The response for `denial`.
    fn render(&self, denial: &Denial) -> Response<Bytes>;
}

impl<F> RenderDenial for F
where
    F: Fn(&Denial) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, denial: &Denial) -> Response<Bytes> {
        self(denial)
    }
}

/// The default body: RFC 9457 `application/problem+json`.
///
/// ```json
/// {"type":"urn:tokengate:problem:insufficient-scope","title":"Forbidden",
///  "status":403,"detail":"The bearer token lacks a required scope.",
///  "missing_scopes":["notes:write"]}
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

impl RenderDenial for ProblemJson {
    fn render(&self, denial: &Denial) -> Response<Bytes> {
        let status = denial.status();
        let mut body = serde_json::json!({
            "type": format!("urn:tokengate:problem:{}", denial.problem_slug()),
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": denial.public_detail(),
        });
        if let Denial::InsufficientScope { missing } = denial {
            body["missing_scopes"] = missing.iter().map(|s| s.as_str()).collect();
        }
        if let Some(wait) = denial.retry_after() {
            body["retry_after"] = retry_after_seconds(wait).into();
        }
        let mut response = Response::new(Bytes::from(body.to_string()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// Turns denials into responses for one deployment: HTTP bodies through a
/// [`RenderDenial`] (by default [`ProblemJson`]), gRPC as trailers-only
/// responses, challenges in the configured [`Realm`].
///
/// Every response it makes carries the [`Denial`] in its extensions, and the
/// denial is also noted in the request's [`RequestTrail`] when the audit
/// layer put one there.
#[derive(Clone)]
pub struct Renderer {
    realm: Realm,
    http: Arc<dyn RenderDenial>,
    /// The `algs` of a `WWW-Authenticate: DPoP` challenge sent beside the
    /// `Bearer` one on 401s, when DPoP proofs are accepted.
    dpop_algs: Option<Arc<str>>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(Realm::default())
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("realm", &self.realm)
            .field("dpop_algs", &self.dpop_algs)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Problem+json bodies and challenges in `realm`.
    pub fn new(realm: Realm) -> Self {
        Self {
            realm,
            http: Arc::new(ProblemJson),
            dpop_algs: None,
        }
    }

    /// Adds a `WWW-Authenticate: DPoP algs="…"` challenge beside the
    /// `Bearer` one on every 401 (RFC 9449 §7.1), or none with `None`.
    /// The authenticate layer sets it to the algorithms it accepts.
    pub fn dpop_challenge(mut self, algs: Option<&str>) -> Self {
        self.dpop_algs = algs.map(Arc::from);
        self
    }

    /// Uses `render` for HTTP bodies.
    pub fn with_body(mut self, render: impl RenderDenial) -> Self {
        self.http = Arc::new(render);
        self
    }

    /// The realm.
    pub fn realm(&self) -> &Realm {
        &self.realm
    }

    /// Refuses `request` with `denial`: notes it in the request's trail and
    /// renders it for the request's protocol.
    ///
    /// A refusal of an HTTP/1 request with a body (left unread) says
    /// `Connection: close` (see [`refusal_closes_connection`]).
    pub fn refuse<B>(&self, request: &Request<B>, denial: Denial) -> Refusal {
        RequestTrail::note_denial(request.extensions(), &denial);
        let mut refusal = self.render_refusal(denial, is_grpc(request.headers()));
        if refusal_closes_connection(request) {
            refusal
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        refusal
    }

    /// Renders `denial` as an HTTP response, or as a gRPC trailers-only
    /// response when `grpc` is true.
    pub fn render<B>(&self, denial: Denial, grpc: bool) -> Response<CheckBody<B>> {
        self.render_refusal(denial, grpc).into_response()
    }

    /// Renders `denial` as a [`Refusal`] (see [`render`](Self::render)).
    pub fn render_refusal(&self, denial: Denial, grpc: bool) -> Refusal {
        let mut response = if grpc {
            grpc_response(&denial)
        } else {
            self.http_response(&denial)
        };
        response.extensions_mut().insert(denial);
        Refusal::new(response)
    }

    fn http_response(&self, denial: &Denial) -> Response<Bytes> {
        let (mut parts, body) = self.http.render(denial).into_parts();
        parts.status = denial.status();
        let headers = &mut parts.headers;
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge(denial) {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(challenge) = self.dpop_challenge_value(denial) {
            headers.append(WWW_AUTHENTICATE, challenge);
        }
        if let Denial::UsageExhausted { retry_after } = denial {
            headers.insert(TOKEN_USES_REMAINING, HeaderValue::from_static("0"));
            if let Some(wait) = retry_after {
                headers.insert(RETRY_AFTER, retry_after_seconds(*wait).into());
            }
        }
        if let Denial::RateLimited(limited) = denial {
            headers.insert(RETRY_AFTER, limited.retry_after_seconds().into());
        }
        rate_limit_headers(headers, denial);
        Response::from_parts(parts, body)
    }

    /// The RFC 9449 challenge, on 401s when DPoP proofs are accepted:
    /// `use_dpop_nonce` when the proof lacked a current nonce.
    fn dpop_challenge_value(&self, denial: &Denial) -> Option<HeaderValue> {
        let algs = self.dpop_algs.as_deref()?;
        let text = match denial {
            Denial::MissingToken => format!("DPoP algs=\"{algs}\""),
            Denial::InvalidToken(tokengate_core::InvalidReason::DpopNonce) => {
                format!("DPoP error=\"use_dpop_nonce\", algs=\"{algs}\"")
            }
            Denial::InvalidToken(_) => format!("DPoP error=\"invalid_token\", algs=\"{algs}\""),
            _ => return None,
        };
        HeaderValue::from_str(&text).ok()
    }

    /// The RFC 6750 challenge, for the denials that have one.
    fn challenge(&self, denial: &Denial) -> Option<HeaderValue> {
        let realm = self.realm.as_str();
        let text = match denial {
            Denial::MissingToken => format!("Bearer realm=\"{realm}\""),
            Denial::InsufficientScope { missing } => {
                let scope = missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\"")
            }
            other => format!(
                "Bearer realm=\"{realm}\", error=\"{}\"",
                other.error_code()?
            ),
        };
        HeaderValue::from_str(&text).ok()
    }
}

fn grpc_response(denial: &Denial) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), u16::from(denial.grpc_code()).into());
    let message = utf8_percent_encode(denial.public_detail(), GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE_HEADER.clone(), value);
    }
    if let Denial::UsageExhausted { .. } = denial {
        headers.insert(TOKEN_USES_REMAINING, HeaderValue::from_static("0"));
    }
    if let Some(wait) = denial.retry_after() {
        headers.insert(RETRY_AFTER, retry_after_seconds(wait).into());
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        headers.insert(GRPC_PUSHBACK.clone(), millis.max(1).into());
    }
    rate_limit_headers(headers, denial);
    response
}

/// The spent quota's `RateLimit-Policy` and `RateLimit` (nothing left,
/// reset when a request will pass again), on HTTP and gRPC refusals alike,
/// as admitted responses of both carry them.
fn rate_limit_headers(headers: &mut http::HeaderMap, denial: &Denial) {
    if let Denial::RateLimited(limited) = denial {
        headers.insert(RATELIMIT_POLICY.clone(), limited.policy.policy_header());
        headers.insert(
            RATELIMIT.clone(),
            limited.policy.state_header(0, limited.retry_after),
        );
    }
}
