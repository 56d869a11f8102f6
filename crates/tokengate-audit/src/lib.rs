//! `AuditLayer`: exactly one structured record per request.
//!
//! Placed outermost, the layer sees every outcome: the IP filter's 403,
//! authenticate's 400/401/503, the scope layer's 403, the rate layer's
//! 429, the handler's 2xx or 5xx. Inner layers report what they decided
//! through the request's [`RequestTrail`](tokengate_core::RequestTrail)
//! (client address, principal, denial) and the response's
//! [`Denial`](tokengate_core::Denial); the layer never reads bodies.
//!
//! **Exactly once.** The record is emitted when the response body ends
//! (with a gRPC status read from the trailers of streamed responses), when
//! the inner service fails (`service_error`, status 500), when the body
//! fails (`body_error`), or, if the client goes away first, when the future
//! or the body is dropped (`cancelled`, status 499 if no response was made).
//!
//! **Nothing secret.** The path without its query; query values replaced by
//! `REDACTED`; the token's public id and owner, never the token or any
//! prefix of it; no header values but the user agent and the request id.
//! Request-controlled text has control characters escaped and is cut to
//! [`FieldLimits`], with cut fields listed in `tokengate.truncated`.
//!
//! **Sinks.** [`TracingSink`] (a structured `tracing` event),
//! [`JsonLinesSink`] (a dedicated writer thread, a bounded queue, an
//! explicit [`Overflow`] policy: `Block` makes a request wait for room,
//! asynchronously and within a bound (then 503), and loses no record of a
//! request it handled; `Drop` never waits and counts every drop; periodic
//! and shutdown flushes, optional fsync,
//! and a hash chain that [`hash_chain::verify`] checks), or any [`AuditSink`].
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::{Arc, Mutex};
//! use http::{Request, Response, StatusCode};
//! use tokengate_audit::{AuditEvent, AuditLayer, Decision};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let records = Arc::new(Mutex::new(Vec::<AuditEvent>::new()));
//! let sink = { let records = records.clone(); move |e: AuditEvent| records.lock().unwrap().push(e) };
//! let service = ServiceBuilder::new()
//!     .layer(AuditLayer::new(sink))
//!     .service(service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) }));
//!
//! let response = service.oneshot(Request::get("/notes?page=2").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! drop(response);
//! let records = records.lock().unwrap();
//! assert_eq!(records.len(), 1);
//! assert_eq!(records[0].decision, Decision::Allow);
//! assert_eq!(records[0].query.as_deref(), Some("page=REDACTED"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (the request trail, denials), `tower`, `http`,
//! `http-body`, `bytes` and `pin-project-lite` (the middleware and the
//! watched body), `crossbeam-channel` (the bounded queue with blocking and
//! non-blocking sends), `tokio` (`sync` and `time`: the Block policy's
//! asynchronous, bounded wait for room), `serde_json` (reading lines back to verify a chain), `sha2`, `hmac` and
//! `hex` (the hash chain, unkeyed or keyed), `percent-encoding` (a
//! token sent percent-encoded as a query name is still recognised), `zeroize` (the audit key's
//! text is wiped after reading), `humantime` (RFC 3339 timestamps), `itoa` (numbers
//! in a line without `fmt`), `rand` (request ids and new audit keys), `tracing` (the tracing
//! sink) and `thiserror` (verification errors).

mod capture;
mod future;
pub mod hash_chain;
mod json;
mod layer;
mod leak;
mod limits;
mod record;
mod request_id;
mod service;
mod sink;
mod text;

pub use capture::Ending;
pub use future::{AuditBody, ResponseFuture};
pub use hash_chain::{AuditKey, AuditKeyError};
pub use layer::AuditLayer;
pub use leak::{LEAK_REPORTED, LeakFacts, LeakReport};
pub use limits::{FieldLimits, clean};
pub use record::{AuditEvent, AuditRecord, CLIENT_CLOSED, Decision};
pub use service::Audit;
pub use sink::{
    AuditSink, CountUsage, JsonLinesSink, JsonLinesSinkBuilder, Overflow, Reservation, SinkStats,
    TracingSink,
};

#[cfg(test)]
mod tests;
