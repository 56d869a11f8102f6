//! tokengate: API-token access control for any `tower` stack: axum
//! routers, tonic gRPC servers, plain hyper services, in-process.
//!
//! Five layers, each usable alone, composed in their one right order by
//! the [`Gate`]; a [`Deployment`] opens what they run on (the token
//! store, its pepper, a verifying cache following the store's change
//! feed, an audit file) in one call.
//!
//! ```toml
//! [dependencies]
//! tokengate = { version = "0.1", features = ["axum"] }  # defaults: gate + sqlite
//! ```
//!
//! # The map
//!
//! | module | what it holds | feature |
//! |---|---|---|
//! | [`gate`] | the [`Gate`]: every layer in order, as one service | `gate` (default) |
//! | [`deployment`] | [`Deployment`]: store, pepper, cache, feed and audit file in one call; readiness and `/metrics` | `sqlite` (default) |
//! | [`authenticate`] | bearer tokens → [`Principal`], usage-limited tokens | `authenticate` |
//! | [`scope`] | least privilege per route, gRPC method or policy table | `scope` |
//! | [`rate`] | GCRA quotas per token, owner or client IP | `rate` |
//! | [`ipfilter`] | client IP through trusted proxies, CIDR allow/deny | `ipfilter` |
//! | [`audit`] | one record per request, hash-chained JSON lines | `audit` |
//! | [`store`] | store traits, the token lifecycle, the verifying cache, the token as JSON | always |
//! | [`sqlite`], [`postgres`], [`redis`] | the embedded store; the store and rate state shared by many instances | `sqlite`, `postgres`, `redis` |
//! | [`core`] | the vocabulary: tokens, hashes, peppers, scopes, principals, denials, clocks | always |
//! | [`check`] | the runtime every layer is built on: write a check of your own | always |
//! | [`axum`], [`tonic`] | the principal as an extractor; from a `tonic::Request` | `axum`, `tonic` |
//! | [`admin`] | a JSON admin API for tokens, with its OpenAPI document | `admin` |
//! | [`leaks`] | GitHub's and GitLab's secret-scanning reports: leaked tokens revoke themselves | `leaks` |
//! | [`webhooks`] | lifecycle events posted to your URLs, signed, retried, once across instances | `webhooks` |
//! | [`config`] | the Gate's whole configuration as a TOML policy file | `config` |
//! | [`sidecar`] | the Gate for proxies: forward-auth, Envoy's ext_authz, reloads | `sidecar`, `ext-authz` |
//!
//! The top level holds what nearly every user names: the [`Gate`] and the
//! [`Deployment`], the [`Principal`] a handler reads, the token types, the
//! stores and the layers' main types.
//!
//! # axum, in ten lines
//!
//! ```no_run
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! use tokengate::{Deployment, ScopePolicy, axum::Authenticated};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let deployment = Deployment::open("tokengate.db").await?; // tokens: `tokengate issue ...`
//!     let policy = ScopePolicy::builder().read_write("/notes", "notes").public("/healthz").build()?;
//!     let app = Router::new()
//!         .route("/notes", get(|Authenticated(who): Authenticated| async move { who.subject().to_owned() }))
//!         .route("/healthz", get(|| async { "ok" }))
//!         .layer(deployment.gate("notes", policy).await?);
//!     tokengate::axum::serve("127.0.0.1:3000", app, deployment).await?;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! The README and the guides in `docs/` go on from here.

pub use tokengate_cache::{CacheConfig, CachedStore};
pub use tokengate_core::{
    Audience, Denial, Pepper, Principal, Scope, ScopeSet, TokenHasher, TokenId, TokenRecord,
};
pub use tokengate_store::{Lifecycle, MemoryStore, StoreError, TokenSpec, TokenStore};

#[cfg(feature = "authenticate")]
pub use tokengate_authenticate::AuthenticateLayer;
#[cfg(feature = "scope")]
pub use tokengate_scope::{EnforceScopeLayer, Requirement, ScopePolicy};

/// The vocabulary every tokengate crate shares: tokens, hashes and
/// peppers, scopes and audiences, records, principals, denials, clocks
/// (`tokengate-core`).
pub mod core {
    pub use tokengate_core::*;
}

/// The check runtime every layer is built on (`tokengate-check`): a
/// [`Check`](check::Check) of your own runs in the same service, with the
/// same rendering of refusals for HTTP and gRPC.
pub mod check {
    pub use tokengate_check::*;
}

/// Where tokens live (`tokengate-store`, `tokengate-cache`): the store
/// traits, the token lifecycle, the memory store, pepper sources, and the
/// verifying cache in front of any store.
pub mod store {
    pub use tokengate_cache::{CacheConfig, CacheStats, CachedStore, VerifyError};
    pub use tokengate_store::*;

    /// A token record as JSON: the one rendering the admin API, the CLI
    /// and the audit log share.
    #[cfg(feature = "view")]
    pub mod view {
        pub use crate::view::*;
    }
}

/// Bearer tokens in, a verified [`Principal`] out (`tokengate-authenticate`).
#[cfg(feature = "authenticate")]
pub mod authenticate {
    pub use tokengate_authenticate::*;
}

/// Least privilege, deny by default (`tokengate-scope`).
#[cfg(feature = "scope")]
pub mod scope {
    pub use tokengate_scope::*;
}

/// GCRA quotas per token, per owner or per client IP (`tokengate-rate`).
#[cfg(feature = "rate")]
pub mod rate {
    pub use tokengate_rate::*;
}

/// Client IPs through trusted proxies, CIDR allow and deny sets
/// (`tokengate-ipfilter`).
#[cfg(feature = "ipfilter")]
pub mod ipfilter {
    pub use tokengate_ipfilter::*;
}

/// One structured record per request, denials included, never a secret
/// (`tokengate-audit`).
#[cfg(feature = "audit")]
pub mod audit {
    pub use tokengate_audit::*;
}

/// Rate state and use counters shared by every instance, in Redis
/// (`tokengate-redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use tokengate_redis::*;
}

/// The embedded default store: a SQLite file (`tokengate-sqlite`).
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use tokengate_sqlite::*;
}

/// The token store shared by every instance, in PostgreSQL
/// (`tokengate-postgres`).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use tokengate_postgres::*;
}

#[cfg(feature = "gate")]
pub mod gate;
#[cfg(feature = "gate")]
pub use gate::Gate;

#[cfg(all(feature = "sqlite", feature = "gate"))]
pub mod deployment;
#[cfg(all(feature = "sqlite", feature = "gate"))]
pub use deployment::{Deployment, shutdown_signal};

#[cfg(feature = "config")]
pub mod config;

#[cfg(feature = "sidecar")]
pub mod sidecar;

#[cfg(feature = "view")]
mod view;

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "leaks")]
pub mod leaks;
#[cfg(any(feature = "leaks", feature = "webhooks"))]
mod outbound;
#[cfg(feature = "tonic")]
pub mod tonic;
#[cfg(feature = "webhooks")]
pub mod webhooks;
