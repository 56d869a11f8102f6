//! tokengate: API-token access control for any `tower` stack.
//!
//! This facade re-exports the layers behind features and holds the
//! framework glue:
//!
//! | feature | what it brings |
//! |---|---|
//! | `authenticate` (default) | [`AuthenticateLayer`]: bearer tokens → [`Principal`] |
//! | `scope` (default) | [`EnforceScopeLayer`], [`RequireScope`], [`ScopePolicy`] |
//! | `rate` (default) | [`RateByTokenLayer`], [`Limiter`], [`MemoryRateState`] |
//! | `ipfilter` (default) | [`ClientIpLayer`], [`IpFilterLayer`], [`IpRules`] |
//! | `audit` (default) | [`AuditLayer`], [`JsonLinesSink`], [`TracingSink`], [`audit_chain`] |
//! | `gate` (default: all five layers) | [`Gate`]: the layers in their one right order |
//! | `sqlite` | `SqliteStore`, `load_pepper`: the embedded default store |
//! | `full` | everything above |
//! | `axum` | `axum::Authenticated`: the principal as an extractor |
//! | `tonic` | `tonic::PrincipalExt`: the principal from a `tonic::Request` |
//!
//! The shared vocabulary (tokens, stores, the verifying cache, denials) is
//! re-exported from [`tokengate_core`] at the crate root.
//!
//! # axum
//!
//! ```
//! # #[cfg(all(feature = "axum", feature = "authenticate", feature = "scope"))] {
//! use axum::{Router, routing::get};
//! use tokengate::axum::Authenticated;
//! use tokengate::{AuthenticateLayer, CacheConfig, CachedStore, KeyId, MemoryStore, Pepper,
//!     RequireScope, TokenHasher};
//!
//! async fn list(Authenticated(principal): Authenticated) -> String {
//!     format!("notes of {}", principal.subject())
//! }
//!
//! # fn app() -> Result<Router, Box<dyn std::error::Error>> {
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
//! let app = Router::new()
//!     .route("/notes", get(list).route_layer(RequireScope::all(["notes:read"])?))
//!     .layer(AuthenticateLayer::new(cache, hasher, "notes".parse()?));
//! # Ok(app) }
//! # app().unwrap();
//! # }
//! ```
//!
//! `Router::layer` runs the authenticate layer for every request, unknown
//! paths included (they get 401 before 404); `route_layer` runs only on
//! matched routes, which is where per-route scopes belong.
//!
//! # tonic
//!
//! Put the layers into `Server::builder().layer(...)`; tonic passes the
//! request's extensions on, so a handler reads the principal with
//! `tonic::PrincipalExt::principal`. gRPC methods are the URI paths
//! `/package.Service/Method`: guard them with a [`ScopePolicy`] built with
//! `grpc_method` / `grpc_service`.

pub use tokengate_core::*;

#[cfg(feature = "authenticate")]
pub use tokengate_authenticate::{
    Authenticate, AuthenticateLayer, IsPublic, PublicPaths, TOKEN_EXPIRES, UsageTracker,
};
#[cfg(feature = "scope")]
pub use tokengate_scope::{
    EnforceScope, EnforceScopeLayer, PolicyError, RequireScope, Requirement, RequirementError,
    ScopeLookup, ScopePolicy, ScopePolicyBuilder,
};

#[cfg(feature = "rate")]
pub use tokengate_rate::{
    KeyBy, Limiter, MemoryRateState, MissingKey, RateByToken, RateByTokenLayer, RateConfigError,
    RateKey, RateState, RateStateError,
};

#[cfg(feature = "ipfilter")]
pub use tokengate_ipfilter::{
    CidrError, ClientIpLayer, ForwardedHeader, IpFilter, IpFilterLayer, IpRules, IpSet, PeerAddr,
    ResolveClientIp, parse_net,
};

#[cfg(feature = "audit")]
pub use tokengate_audit::{
    Audit, AuditBody, AuditEvent, AuditLayer, AuditSink, Decision, Ending, FieldLimits,
    JsonLinesSink, JsonLinesSinkBuilder, Overflow, SinkStats, TracingSink, chain as audit_chain,
};

#[cfg(feature = "sqlite")]
pub use tokengate_sqlite::{OpenError, PEPPER_ENV, SqliteStore, load_pepper, pepper_path};

#[cfg(feature = "gate")]
mod gate;
#[cfg(feature = "gate")]
pub use gate::{Gate, GateService};

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tonic")]
pub mod tonic;

/// The README's code, compiled and run as doc tests so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
