//! `RateLimitLayer`: GCRA quotas per token, per owner and per client IP.
//!
//! # Semantics
//!
//! A quota reads "`N` per `period`, burst `B`" ([`RateQuota`](tokengate_core::RateQuota),
//! non-zero by type). One request is allowed every `period / N`; from a
//! fresh or idle key, exactly `B` requests pass back to back; idling refills
//! the burst to `B`, never beyond; a refused request changes nothing, and
//! its `Retry-After` is exactly when the same request will pass (rounded up
//! to whole seconds, at least 1). See [`gcra`] for the arithmetic.
//!
//! # Keys
//!
//! Each [`Limiter`] counts by the token ([`Limiter::per_token`]: a quota
//! stored on the token record wins over the limiter's), by the owner
//! ([`Limiter::per_owner`]: twenty tokens cannot route around a quota), by
//! the client address ([`Limiter::per_client_ip`], before authentication,
//! against key spraying) or by a user function. One layer checks all its
//! limiters all-then-commit: a request refused by one spends nothing of the
//! others. A request without a limiter's key is refused by default
//! ([`MissingKey`]); there is never a shared fallback bucket.
//!
//! # State
//!
//! [`MemoryRateState`] holds one atomic theoretical arrival time per key,
//! updated by compare-and-swap, shared by every clone of the service and
//! bounded in keys (idle keys are dropped when room is needed; when the
//! table is full of active keys, the keys closest to idle are evicted, so a
//! new client is never refused for room). Client addresses count by
//! network: each IPv4 address, and each IPv6 /64
//! ([`Limiter::client_ip_prefixes`]). The [`RateState`]
//! trait lets a shared backend (Redis) take its place; the in-memory path
//! answers with a ready future, with no boxing and no allocation.
//!
//! # Responses
//!
//! 429 with `Retry-After`, `RateLimit-Policy: "per-token";q=100;w=2` and
//! `RateLimit: "per-token";r=0;t=2` (the IETF httpapi draft's structured
//! fields). `w` is the time an empty bucket takes to refill, in whole
//! seconds rounded up, and `q` the larger of the burst and the sustained
//! rate over `w` (50 per second with bursts of 100: `q=100;w=2`; 5 per
//! second with bursts of 3: `q=5;w=1`), so `r`, the requests left now,
//! never exceeds `q`, and `q` never understates the sustained rate; `t` is
//! the seconds until the burst is full again, or until retry on a 429.
//! Admitted responses carry the same two headers for the tightest limiter,
//! unless [turned off](RateLimitLayer::success_headers). gRPC gets status
//! 8 with the same two, `retry-after` and `grpc-retry-pushback-ms`
//! metadata.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, num::NonZeroU32, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tokengate_core::{ClientIp, RateQuota, RequestTrail};
//! use tokengate_rate::RateLimitLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let quota = RateQuota::new(NonZeroU32::new(60).unwrap(), Duration::from_secs(60), NonZeroU32::new(2).unwrap())?;
//! let mut service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::per_client_ip(quota))
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//! let request = || {
//!     let mut request = Request::new(());
//!     // What ResolveClientIpLayer does in front of it.
//!     RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new("192.0.2.7".parse().unwrap()));
//!     request
//! };
//! for _ in 0..2 {
//!     assert_eq!(service.ready().await?.call(request()).await?.status(), StatusCode::OK);
//! }
//! let limited = service.ready().await?.call(request()).await?;
//! assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(limited.headers()["retry-after"], "1");
//! assert_eq!(limited.headers()["ratelimit-policy"], r#""per-ip";q=2;w=2"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (principals, client IPs, quotas, denials, the `Check`
//! service), `tower` and `http` (the middleware contract), `ipnet` (client
//! addresses keyed by network), `smallvec` (a request's charges without a
//! heap allocation),
//! `hashbrown` (a table that takes a precomputed hash, so a key is hashed
//! once for shard and slot), `foldhash` (a fast hasher with a random
//! per-process seed; keys such as client addresses are attacker-chosen, so
//! an unseeded hash would invite collision floods) and `thiserror`
//! (configuration errors).

mod check;
pub mod gcra;
mod layer;
mod limiter;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use check::{RateAnswer, RateHeaders, RateWait};
pub use layer::{CostFn, MAX_LIMITERS, MissingKey, RateConfigError, RateLimit, RateLimitLayer};
pub use limiter::{KeyBy, KeyFn, Limiter};
pub use state::{Charge, MemoryRateState, Outcome, RateKey, RateState, RateStateError};

#[cfg(test)]
mod tests;
