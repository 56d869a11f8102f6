//! The Gate as an authorization service for proxies in front of services
//! in any language: what `tokengate serve` runs.
//!
//! - [`ForwardAuth`]: HTTP forward-auth, one contract for nginx
//!   `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth` and
//!   Envoy's HTTP ext_authz. The original method and URI come from
//!   `X-Forwarded-Method` + `X-Forwarded-Uri` (or `X-Original-Method` +
//!   `X-Original-URI`; for Envoy, from the request itself after a
//!   [path prefix](ForwardAuth::path_prefix)), the client from `X-Forwarded-For` through the
//!   policy's trusted proxies, the credential from the forwarded
//!   `Authorization` header. Admitted: `200` with the identity headers
//!   ([`SUBJECT`], [`TOKEN_ID`], [`SCOPES`]) for the upstream and the
//!   success headers for the client; refused: the status, headers and
//!   problem+json body an in-process Gate sends.
//! - [`ExtAuthz`] (feature `ext-authz`): Envoy's
//!   `envoy.service.auth.v3.Authorization/Check` over gRPC.
//! - [`Current`]: the service in force, replaced whole when the policy
//!   file is read again; a request finishes under the one it started with.
//!
//! Each check goes through one Gate ([`Admitted`] behind it), so it leaves
//! one audit record with the original method and path and the client
//! address the proxy reported, and counts in the metrics under layer
//! `gate`, as in-process.
//!
//! # Example
//!
//! ```
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use tokengate::config::GateConfig;
//! use tokengate::core::KeyId;
//! use tokengate::sidecar::{Current, ForwardAuth, checking};
//! use tokengate::{CacheConfig, CachedStore, MemoryStore, Pepper, TokenHasher};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GateConfig::parse(
//!     "audience = \"notes\"\n[[routes]]\npath = \"/notes\"\nscopes = [\"notes:read\"]\n",
//!     "notes.toml",
//! )?;
//! let store = CachedStore::new(MemoryStore::new(), CacheConfig::default());
//! let gate = config.gate(store, TokenHasher::new(Pepper::generate(KeyId::new(1))));
//! let auth = ForwardAuth::new(Current::new(checking(&gate)));
//!
//! // What nginx asks: may GET /notes through, from this client, with no token?
//! let ask = Request::builder()
//!     .uri("/auth")
//!     .header("x-original-method", "GET")
//!     .header("x-original-uri", "/notes")
//!     .extension(tokengate::ipfilter::PeerAddr(([127, 0, 0, 1], 40000).into()))
//!     .body(Body::empty())?;
//! let answer = auth.clone().oneshot(ask).await?;
//! assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
//! assert!(answer.headers().contains_key("www-authenticate"));
//!
//! // Without the original request: 400, naming the header to send.
//! let bare = Request::builder().uri("/auth").body(Body::empty())?;
//! assert_eq!(auth.oneshot(bare).await?.status(), StatusCode::BAD_REQUEST);
//! # Ok(()) }
//! ```

mod forward;

#[cfg(feature = "ext-authz")]
mod ext_authz;

#[cfg(test)]
mod tests;

pub use forward::{ForwardAuth, Refusals};

#[cfg(feature = "ext-authz")]
pub use ext_authz::ExtAuthz;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response};
use tokengate_core::Principal;
use tower::Service;

/// The caller's subject, for the upstream.
pub const SUBJECT: HeaderName = HeaderName::from_static("x-tokengate-subject");
/// The token's id, for the upstream.
pub const TOKEN_ID: HeaderName = HeaderName::from_static("x-tokengate-token-id");
/// The token's scopes, space-separated, for the upstream.
pub const SCOPES: HeaderName = HeaderName::from_static("x-tokengate-scopes");
/// The status of a refusal answered as 403 to nginx (see [`Refusals`]).
pub const STATUS: HeaderName = HeaderName::from_static("x-tokengate-status");
/// A refusal's problem+json body, on one line, for nginx (see [`Refusals`]).
pub const PROBLEM: HeaderName = HeaderName::from_static("x-tokengate-problem");

/// The identity headers, which a proxy must never take from its client.
pub const IDENTITY_HEADERS: [HeaderName; 3] = [SUBJECT, TOKEN_ID, SCOPES];

/// The headers an admitted check may send for the client; forward-auth
/// sends each, empty when it has no value, so that a proxy copying them
/// never copies a stale or absent one.
pub const SUCCESS_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("ratelimit"),
    HeaderName::from_static("ratelimit-policy"),
    HeaderName::from_static("token-expires"),
    HeaderName::from_static("token-uses-remaining"),
];

/// What an admitted check answers: `200`, and who the caller is in
/// [`SUBJECT`], [`TOKEN_ID`] and [`SCOPES`]. On a public route they are
/// sent empty: a proxy that copies them then replaces whatever the client
/// sent under those names, whichever proxy it is. A subject outside ASCII
/// is sent as its UTF-8 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admitted;

impl<B> Service<Request<B>> for Admitted {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut response = Response::new(String::new());
        let headers = response.headers_mut();
        for name in IDENTITY_HEADERS {
            headers.insert(name, HeaderValue::from_static(""));
        }
        if let Some(principal) = request.extensions().get::<Principal>() {
            for (name, value) in identity(principal) {
                headers.insert(name, value);
            }
        }
        ready(Ok(response))
    }
}

/// The check a sidecar runs: `gate` around [`Admitted`].
pub fn checking<St, P, K, R, X: Clone>(
    gate: &crate::Gate<St, P, K, R, X>,
) -> crate::gate::GateService<Admitted, St, P, K, R, X> {
    tower::Layer::layer(gate, Admitted)
}

/// The identity headers of `principal`.
pub(crate) fn identity(principal: &Principal) -> Vec<(HeaderName, HeaderValue)> {
    let scopes: Vec<&str> = principal.scopes().iter().map(|s| s.as_str()).collect();
    let values = [
        (SUBJECT, principal.subject().to_owned()),
        (TOKEN_ID, principal.token_id().as_str().to_owned()),
        (SCOPES, scopes.join(" ")),
    ];
    values
        .into_iter()
        .filter_map(|(name, value)| Some((name, HeaderValue::from_bytes(value.as_bytes()).ok()?)))
        .collect()
}

/// The service in force: cloned for each request, replaced whole by
/// [`replace`](Self::replace) (a reloaded policy). A request keeps the
/// service it started with until it is answered.
pub struct Current<S> {
    inner: Arc<ArcSwap<S>>,
}

impl<S> Clone for Current<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> std::fmt::Debug for Current<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl<S: Clone> Current<S> {
    /// `service` in force.
    pub fn new(service: S) -> Self {
        Self {
            inner: Arc::new(ArcSwap::from_pointee(service)),
        }
    }

    /// Puts `service` in force from the next request on.
    pub fn replace(&self, service: S) {
        self.inner.store(Arc::new(service));
    }

    /// The service in force now.
    pub fn get(&self) -> S {
        S::clone(&self.inner.load())
    }
}
