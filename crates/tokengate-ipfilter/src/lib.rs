//! `ResolveClientIpLayer` and `IpFilterLayer`: who the client is, and whether its
//! address may come in.
//!
//! - [`ResolveClientIpLayer`] resolves the client address from the connection's
//!   peer address and, when the peer is a trusted proxy, from
//!   `X-Forwarded-For` (every line, in order) or RFC 7239 `Forwarded`,
//!   walked right to left: the first address that is not a trusted proxy is
//!   the client. Headers from untrusted peers are ignored. IPv4-mapped IPv6
//!   addresses are stored as IPv4. The result goes into the request's
//!   [`RequestTrail`](tokengate_core::RequestTrail) extension for every
//!   later layer ([`ClientIp::of`](tokengate_core::ClientIp::of)):
//!   the IP filter, the per-IP rate limit, authenticate's per-token
//!   networks, the audit record.
//! - [`IpFilterLayer`] applies global allow and deny sets ([`IpRules`]);
//!   deny wins; lookups are binary searches over merged ranges
//!   ([`IpSet`]), so 100k rules cost about what 10 do; rules can be
//!   replaced at runtime.
//!
//! Both fail closed: no peer address, a malformed trusted chain, or no
//! client address at the filter means 403 (gRPC 7), never a pass and never
//! a panic. Invalid CIDRs fail at construction with a message naming them.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tokengate_ipfilter::{ResolveClientIpLayer, IpFilterLayer, IpRules, PeerAddr};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let service = ServiceBuilder::new()
//!     .layer(ResolveClientIpLayer::trusted_proxies(["10.0.0.0/8"])?)
//!     .layer(IpFilterLayer::new(IpRules::deny_list(["198.51.100.0/24"])?))
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//!
//! // A trusted proxy forwards for a denied client.
//! let mut request = Request::builder()
//!     .header("x-forwarded-for", "198.51.100.9")
//!     .body(())?;
//! request.extensions_mut().insert(PeerAddr("10.0.0.1:50000".parse()?));
//! assert_eq!(service.clone().oneshot(request).await?.status(), StatusCode::FORBIDDEN);
//!
//! // An untrusted peer cannot claim an address.
//! let mut request = Request::builder()
//!     .header("x-forwarded-for", "198.51.100.9")
//!     .body(())?;
//! request.extensions_mut().insert(PeerAddr("203.0.113.5:50000".parse()?));
//! assert_eq!(service.oneshot(request).await?.status(), StatusCode::OK);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (client IPs, denials), `tower` and `http` (the
//! middleware contract), `ipnet` (CIDR parsing), `tracing` (the one error line a server without peer addresses gets), `arc-swap` (rules replaced
//! at runtime without locking readers) and `thiserror` (configuration errors).

mod check;
pub mod forwarded;
mod layer;
mod rules;
mod set;

pub use forwarded::ForwardedHeader;
pub use layer::{
    IpFilter, IpFilterLayer, PeerAddr, PeerSource, ResolveClientIp, ResolveClientIpLayer,
};
pub use rules::IpRules;
pub use set::{CidrError, IpSet, naive_contains, parse_net};

#[cfg(test)]
mod tests;
