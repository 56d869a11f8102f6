//! tokengate: API-token access control for any `tower` stack.
//!
//! This facade re-exports the layers behind features and holds the
//! framework glue:
//!
//! | feature | what it brings |
//! |---|---|
//! | `authenticate` (default) | [`AuthenticateLayer`]: bearer tokens → [`Principal`] |
//! | `scope` (default) | [`EnforceScopeLayer`], [`RequireScope`], [`ScopePolicy`] |
//! | `rate` (default) | [`RateLimitLayer`], [`Limiter`], [`MemoryRateState`] |
//! | `ipfilter` (default) | [`ResolveClientIpLayer`], [`IpFilterLayer`], [`IpRules`] |
//! | `audit` (default) | [`AuditLayer`], [`JsonLinesSink`], [`TracingSink`], [`audit_chain`] |
//! | `gate` (default: all five layers) | [`Gate`]: the layers in their one right order, the six after audit run as one [`Chain`] of checks in one [`CheckService`] ([`GateCheck`]) |
//! | `redis` | `RedisRateState`: rate limits shared by every instance in Redis, for `Gate::rate_state` or `RateLimitLayer::state` |
//! | `sqlite` | `SqliteStore` (with its pepper, `SqliteStore::pepper`): the embedded default store; with `gate`, `Embedded` assembles a single-machine deployment and `shutdown_signal` (SIGTERM or SIGINT, through tokio's `signal`) ends it gracefully |
//! | `admin` | `admin::router`: a JSON API to manage tokens behind the Gate, with its OpenAPI document |
//! | `full` | everything above and below |
//! | `axum` | `axum::Authenticated`: the principal as an extractor; with `sqlite`, `ops::ops_router` (`/healthz`, `/readyz`, `/metrics` for an admin listener) |
//! | `tonic` | `tonic::PrincipalExt`: the principal from a `tonic::Request` |
//!
//! The shared vocabulary (tokens, stores, the verifying cache, denials) is
//! re-exported from [`tokengate_core`] at the crate root.
//!
//! # axum, on one screen
//!
//! ```no_run
//! # #[cfg(feature = "full")] {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use http::Method;
//! use tokengate::axum::Authenticated;
//! use tokengate::{AuditLayer, AuthenticateLayer, CacheConfig, CachedStore,
//!     EnforceScopeLayer, Gate, JsonLinesSink, PublicPaths, Requirement, ScopePolicy,
//!     SqliteStore, TokenHasher};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let db = std::path::Path::new("tokengate.db");
//!     let store = SqliteStore::create(db)?;                                // tokens: the CLI manages them
//!     let hasher = TokenHasher::new(store.pepper()?);                      // checked against the database
//!     let cache = CachedStore::new(store.clone(), CacheConfig::default());
//!     store.follow(cache.clone(), Duration::from_millis(250));             // revocations from other processes
//!     let policy = ScopePolicy::builder()
//!         .read_write("/notes", "notes")                                   // GET: notes:read, POST: notes:write
//!         .route([Method::GET], "/healthz", Requirement::Public)
//!         .build()?;                                                       // anything else: 403
//!     let gate = Gate::new(
//!         AuthenticateLayer::new(cache, hasher, "notes".parse()?)
//!             .public(PublicPaths::new().exact("/healthz")),
//!         EnforceScopeLayer::new(policy),
//!     )
//!     .audit(AuditLayer::new(JsonLinesSink::open("audit.jsonl".as_ref())?));
//!     // The Gate reads the peer address from axum's ConnectInfo: serve with it.
//!     let app = Router::new()
//!         .route("/notes", get(|Authenticated(p): Authenticated| async move { p.subject().to_owned() }))
//!         .route("/healthz", get(|| async { "ok" }))
//!         .layer(gate);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! `Router::layer` runs the gate for every request, unknown paths included
//! (401 before 404); per-route requirements can instead use
//! `RequireScope::all([...])` as a `route_layer`.
//!
//! # tonic, on one screen
//!
//! ```no_run
//! # #[cfg(feature = "full")] {
//! use tokengate::tonic::PrincipalExt;
//! use tokengate::{AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer,
//!     Gate, PublicPaths, Requirement, ScopePolicy, SqliteStore, TokenHasher};
//!
//! // In a generated service method, the principal is in the request's extensions:
//! async fn list_notes(request: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
//!     Ok(tonic::Response::new(request.principal()?.subject().to_owned()))
//! }
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let db = std::path::Path::new("tokengate.db");
//! let store = SqliteStore::create(db)?;
//! let hasher = TokenHasher::new(store.pepper()?);
//! let cache = CachedStore::new(store, CacheConfig::default());
//! let policy = ScopePolicy::builder()
//!     .grpc_method("/notes.v1.Notes/ListNotes", Requirement::all(["notes:read"])?)
//!     .grpc_service("grpc.health.v1.Health", Requirement::Public)
//!     .build()?;
//! let gate = Gate::new(
//!     AuthenticateLayer::new(cache, hasher, "notes".parse()?)
//!         .public(PublicPaths::new().grpc_health()),
//!     EnforceScopeLayer::new(policy),
//! ); // the peer address comes from tonic's TcpConnectInfo
//! let router = tonic::transport::Server::builder().layer(gate);
//! // router.add_service(NotesServer::new(...)).serve(addr).await?;
//! # drop(router); Ok(()) }
//! # }
//! ```
//!
//! Refusals reach gRPC clients as HTTP 200 trailers-only responses with
//! `grpc-status` 16, 7, 8, 3 or 14, never as HTTP 401/403.

pub use tokengate_check::*;
pub use tokengate_core::*;
pub use tokengate_store::*;

pub use tokengate_cache::{CacheConfig, CacheStats, CachedStore, VerifyError};

#[cfg(feature = "authenticate")]
pub use tokengate_authenticate::{
    Authenticate, AuthenticateLayer, ExpiryHeader, IsPublic, PublicPaths, SpendWait, Spent,
    TOKEN_EXPIRES, TOKEN_EXPIRES_WITHIN, TokenLookup, UriCopy, UsageTracker, UseLimitLayer,
    UsesLeft,
};
#[cfg(feature = "scope")]
pub use tokengate_scope::{
    EnforceScope, EnforceScopeLayer, PolicyError, RequireScope, Requirement, RequirementError,
    ScopeLookup, ScopePolicy, ScopePolicyBuilder,
};

#[cfg(feature = "rate")]
pub use tokengate_rate::{
    KeyBy, Limiter, MemoryRateState, MissingKey, RateConfigError, RateHeaders, RateKey, RateLimit,
    RateLimitLayer, RateState, RateStateError,
};

#[cfg(feature = "ipfilter")]
pub use tokengate_ipfilter::{
    CidrError, ForwardedHeader, IpFilter, IpFilterLayer, IpRules, IpSet, PeerAddr, ResolveClientIp,
    ResolveClientIpLayer, parse_net,
};

#[cfg(feature = "audit")]
pub use tokengate_audit::{
    Audit, AuditBody, AuditEvent, AuditKey, AuditKeyError, AuditLayer, AuditRecord, AuditSink,
    Decision, Ending, FieldLimits, JsonLinesSink, JsonLinesSinkBuilder, Overflow, SinkStats,
    TracingSink, chain as audit_chain,
};

#[cfg(feature = "redis")]
pub use tokengate_redis::{RedisRateState, RedisStateError, RedisUses, Unavailable};

#[cfg(feature = "sqlite")]
pub use tokengate_sqlite::{OpenError, SqliteStore, pepper_path};

#[cfg(feature = "postgres")]
pub use tokengate_postgres::{
    ConnectError, FEED_APPLICATION, Feed, FeedStatus, FeedWatch, PostgresStore,
    PostgresStoreBuilder,
};

#[cfg(feature = "sqlite")]
mod database;
#[cfg(feature = "sqlite")]
pub use database::{AnyStore, Database, DatabaseError};

#[cfg(all(feature = "sqlite", feature = "gate"))]
mod embedded;
#[cfg(all(feature = "sqlite", feature = "gate"))]
mod reload;
#[cfg(all(feature = "sqlite", feature = "gate"))]
pub use embedded::{Embedded, SetupError, shutdown_signal};

#[cfg(feature = "sqlite")]
pub mod ops;

#[cfg(feature = "view")]
pub mod view;

#[cfg(feature = "gate")]
mod gate;
#[cfg(feature = "gate")]
pub use gate::{Gate, GateCheck, GateService, connection_peer};

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tonic")]
pub mod tonic;

/// The README's code, compiled and run as doc tests so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
