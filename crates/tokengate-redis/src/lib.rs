//! `RedisRateState`: tokengate's rate limits shared by every instance.
//!
//! N replicas of a service each with in-memory rate state give a token N
//! times its quota. With [`RedisRateState`] they share one state in
//! Redis: a token's quota is its quota whichever instance serves it.
//!
//! - **Concurrent requests share a round trip.** A Lua script
//!   (`EVALSHA`, loaded again on `NOSCRIPT`) runs GCRA for every limiter
//!   of a request at once, with the in-memory state's all-then-commit
//!   rule: a request refused by one limiter spends no other's budget. One
//!   call is in flight at a time; the requests that arrive meanwhile go
//!   together in the next (up to 128), decided one after another inside
//!   the script, so a batch answers exactly as one call each would. An
//!   idle instance's lone request is sent at once.
//! - **One clock.** The script reads the Redis server's `TIME`, so
//!   instances whose clocks disagree still agree on every bucket.
//! - **Bounded memory.** A bucket's key expires when its burst is full
//!   again; keys are `{prefix}:<limiter>:<kind>:<key>`, the prefix being
//!   their hash tag (one Redis Cluster slot, as a script needs).
//! - **Bounded waits.** Every call has a timeout (50 ms by default), and a
//!   request waits for all of its calls (rate limits, a usage-limited
//!   token's lease) one timeout in all. When
//!   Redis is slow or down, [`Unavailable`] decides: `Local` (the default:
//!   in-memory state, limits per instance), `FailClosed` (503, gRPC 14)
//!   or `FailOpen`; [`RedisRateState::fallbacks`] counts them. Every
//!   request a fallback decided says so in its audit record:
//!   `"tokengate.rate_fallback":"local"` on an answer of the local limits
//!   (admitted or 429), `"fail_open"` on an admission without a limit,
//!   `"fail_closed"` on the 503 (reason `rate_state_unavailable`).
//!
//! # What it costs
//!
//! A lone request: one round trip, 1.40–1.65× a Redis `PING` on the same
//! kind of connection (`cargo bench --bench redis`), against about
//! 0.18 µs for the in-memory state. Under load, one script call for all
//! the requests waiting: [`RedisRateState::round_trips`] beside the
//! requests served tells how many shared one. While Redis is down, each
//! request waits at most the timeout before its fallback answers.
//!
//! It plugs into the standalone layer (`RateLimitLayer::state`) and the
//! facade's `Gate` (`Gate::rate_state`).
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use tokengate_core::RateQuota;
//! use tokengate_rate::RateLimitLayer;
//! use tokengate_redis::{RedisRateState, Unavailable};
//!
//! // Nothing connects until the first request.
//! let shared = RedisRateState::new("redis://127.0.0.1:6379")?
//!     .prefix("notes-prod")?
//!     .unavailable(Unavailable::Local);
//! let sixty = NonZeroU32::new(60).unwrap();
//! let quota = RateQuota::new(sixty, Duration::from_secs(60), sixty)?;
//! let layer = RateLimitLayer::per_token(quota).state(shared);
//! # drop(layer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` and `tokengate-rate` (charges, outcomes, the in-memory
//! fallback), `redis` (the async client: a multiplexed connection manager
//! that reconnects, and `Script` for the script's hash and its loading on
//! `NOSCRIPT`), `tokio` (the timeout, the lazily made connection, and the
//! batcher task with its queue and answers),
//! `tracing` (one warning when the fallback starts, then at powers of two)
//! and `thiserror` (configuration errors).

mod batch;
mod replay;
mod script;
mod state;
mod uses;

pub use replay::RedisReplay;
pub use state::{RedisRateState, RedisStateError, Unavailable};
pub use uses::RedisUses;

#[cfg(test)]
mod tests;
