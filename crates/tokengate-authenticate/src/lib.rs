//! `AuthenticateLayer`: opaque bearer tokens, verified in-process.
//!
//! For every request that is not [public](AuthenticateLayer::public), the
//! layer decides in this order, and refuses with the first [`Denial`](tokengate_core::Denial) that
//! applies:
//!
//! 1. **One credential.** `Authorization: Bearer <token>` (scheme name
//!    case-insensitive, exactly one space, nothing after the token), plus an
//!    optional [custom header](AuthenticateLayer::header) and an optional
//!    [query parameter](AuthenticateLayer::query_param). None: 401 with a
//!    bare `WWW-Authenticate: Bearer realm="…"` challenge. Two, or a
//!    malformed `Authorization` value: 400 `invalid_request`. A token in the
//!    query string when that is not enabled: 400. Another scheme (`Basic …`)
//!    is no credential: 401.
//! 2. **Well-formed.** Prefix, length, alphabet and checksum, before any
//!    cache or store access: 401 `invalid_token` otherwise.
//! 3. **Known, unexpired, unrevoked** through the verifying
//!    [`CachedStore`](tokengate_cache::CachedStore): a hit answers without
//!    allocating; a miss asks the store once for all concurrent requests,
//!    within the [lookup timeout](AuthenticateLayer::lookup_timeout). A store
//!    failure or timeout is 503, never 401.
//! 4. **For this service**: the token must list the layer's audience.
//! 5. **From an allowed network**: a token bound to networks must come from
//!    one of them, read with [`ClientIp::of`](tokengate_core::ClientIp::of)
//!    (set by the client-IP layer); with no client address known,
//!    it is refused (403).
//!
//! Unknown, wrong-secret, expired, revoked and wrong-audience tokens all get
//! the same 401 body; the precise reason travels to the audit layer (in the
//! response's extensions and the request's
//! [`RequestTrail`](tokengate_core::RequestTrail)). gRPC requests get
//! trailers-only responses with `grpc-status` instead.
//!
//! 6. **A use left**, for a usage-limited token
//!    ([`UseLimit`](tokengate_core::UseLimit)): one is spent in the store
//!    ([`UseLimitLayer`]); none left is 403 `usage-exhausted`, or 429
//!    with `Retry-After` until a refill; a store that cannot count is 503.
//!    Stacked alone the layer spends it here; the Gate spends it after
//!    every other check.
//!
//! On success the [`Principal`](tokengate_core::Principal) is inserted into
//! the request's extensions, and in a token's last
//! [7 days](TOKEN_EXPIRES_WITHIN) the response carries a `token-expires`
//! header (an HTTP date) so clients can rotate in time
//! ([`AuthenticateLayer::expires_header_within`] changes the window).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode, header::AUTHORIZATION};
//! use tokengate_authenticate::{AuthenticateLayer, PublicPaths};
//! use tokengate_cache::{CacheConfig, CachedStore};
//! use tokengate_core::{KeyId, Pepper, Principal, TokenHasher};
//! use tokengate_store::{Expiry, Lifecycle, MemoryStore, TokenSpec};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
//! let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
//! let spec = TokenSpec::new("ci", "team-a")
//!     .scopes(["notes:read".parse()?])
//!     .audiences(["notes".parse()?])
//!     .expiry(Expiry::After(Duration::from_secs(3 * 24 * 60 * 60)));
//! let token = lifecycle.issue(spec).await?.token;
//!
//! let service = ServiceBuilder::new()
//!     .layer(
//!         AuthenticateLayer::new(cache, hasher, "notes".parse()?)
//!             .public(PublicPaths::new().exact("/healthz")),
//!     )
//!     .service(service_fn(|request: Request<String>| async move {
//!         let subject = request.extensions().get::<Principal>().map(|p| p.subject().to_owned());
//!         Ok::<_, Infallible>(Response::new(subject.unwrap_or_default()))
//!     }));
//!
//! let bearer = format!("Bearer {}", token.expose_secret());
//! let ok = service.clone()
//!     .oneshot(Request::get("/notes").header(AUTHORIZATION, bearer).body(String::new())?)
//!     .await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//! // Three days left: time to rotate, and the response says until when.
//! assert!(ok.headers().contains_key("token-expires"));
//!
//! let missing = service.clone().oneshot(Request::get("/notes").body(String::new())?).await?;
//! assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
//!
//! let health = service.oneshot(Request::get("/healthz").body(String::new())?).await?;
//! assert_eq!(health.status(), StatusCode::OK);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (tokens, denials, the `Check` service),
//! `tokengate-cache` (the verifying cache), `tower` and `http` (the
//! middleware contract), `tokio` (the lookup timeout and the usage flusher),
//! `form_urlencoded` (reading and redacting query tokens), `httpdate` (the
//! `token-expires` header) and `tracing` (store failures).

mod check;
mod credential;
pub mod dpop;
mod layer;
mod public;
mod spend;
mod usage;

pub use check::{AuthenticateWait, ExpiryHeader, TokenLookup};
pub use dpop::{ClientCertificate, Dpop, DpopAlgorithm, DpopConfigError, DpopKey};
pub use layer::{
    Authenticate, AuthenticateLayer, TOKEN_EXPIRES, TOKEN_EXPIRES_WITHIN, UriCopy, UseLimitLayer,
    VerifyToken,
};
pub use public::{IsPublic, PublicPaths};
pub use spend::{SpendWait, Spent, UsesLeft};
pub use usage::UsageTracker;

#[cfg(test)]
mod tests;
