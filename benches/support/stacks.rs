//! The stacks the per-request counters measure, built one way for both:
//! `benches/instructions.rs` (instructions under callgrind) and
//! `benches/allocations.rs` (heap allocations, counted in-process). A
//! counter implements [`Through`]: it is handed each stack's service and
//! sends the requests through it, counting what it counts.
//!
//! The stacks:
//! - `bare`: the handler alone;
//! - `hmac`: the token's keyed hash alone (HMAC-SHA256 under the pepper),
//!   as every request computes it: callgrind hides SHA-NI, so SHA-256 runs
//!   in software there, and the guard reports this apart from the gate;
//! - `client-ip`: the client-IP layer alone;
//! - `audit`: the audit layer alone, into a sink that drops each record
//!   (its request-side work without the queue and the writer thread);
//! - `rate-ip`: client IP, then a per-IP limit (no success headers);
//! - `authenticate`: authenticate alone (cache hit);
//! - `rate-token`: authenticate, then a per-token limit with headers;
//! - `scope`: authenticate, then a scope table;
//! - `gate-discard`: the full gate auditing into the dropping sink;
//! - `gate-own-check`, `gate-own-check-inlined`: the same with a check of
//!   one's own (`Gate::with_check`: a header required), written plainly
//!   and with `#[inline(always)]`: what a user's check costs, and whether
//!   it needs the attribute to be cheap;
//! - `gate`: the full gate auditing to a JSON-lines file;
//! - `gate-usage`: the same, each request also counted for its token's
//!   usage (`CountUsage`, as a `Deployment`'s Gates do);
//! - `gate-prometheus`: the same with a Prometheus recorder installed
//!   (every metric the gate emits recorded);
//! - `bare-headed`, `gate-headed`: `bare` and `gate` around a handler
//!   whose response has a header (`content-type`), as most do: its header
//!   map exists before the Gate adds its `RateLimit` headers;
//! - `client-ip-axum`, `governor-ip`, `rate-ip-axum`,
//!   `rate-ip-axum-headers`: the client-IP layer around an axum handler
//!   (tower_governor needs axum's body to answer with), then
//!   tower_governor's layer keyed by that address, or tokengate's per-IP
//!   limit without and with success headers: the rate layers side by
//!   side.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokengate::audit::{AuditLayer, AuditRecord, AuditSink, JsonLinesSink, Overflow};
use tokengate::core::{Clock as _, RateQuota};
use tokengate::ipfilter::{IpFilterLayer, IpRules, PeerAddr};
use tokengate::rate::RateLimitLayer;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, Lifecycle, MemoryStore,
    Pepper, ScopePolicy, TokenHasher, TokenSpec,
};
use tokengate_tests::call_now;
use tower::{Layer, Service, service_fn};

/// Every stack's name, in the order the scripts print them.
pub const STACKS: [&str; 20] = [
    "bare",
    "hmac",
    "client-ip",
    "audit",
    "rate-ip",
    "authenticate",
    "rate-token",
    "scope",
    "gate-discard",
    "gate-own-check",
    "gate-own-check-inlined",
    "gate",
    "gate-usage",
    "bare-headed",
    "gate-headed",
    "client-ip-axum",
    "governor-ip",
    "rate-ip-axum",
    "rate-ip-axum-headers",
    "gate-prometheus",
];

/// What a counter does with a stack: sends `requests` requests through
/// `service` (or hashes the token `requests` times) and answers how many
/// were admitted (or hashed as expected).
pub trait Through {
    fn drive<S, B>(&mut self, service: S, bearer: &str, requests: u64) -> u64
    where
        S: Service<Request<()>, Response = Response<B>>,
        S::Error: std::fmt::Debug;

    fn drive_hmac(&mut self, hasher: &TokenHasher, token: &str, requests: u64) -> u64;
}

/// The handler every stack wraps: an empty 200.
pub fn handler()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

/// The peer every measured request comes from.
pub const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(203, 0, 113, 9),
    40000,
));

/// The handler of the `-headed` stacks: an empty 200 with a
/// `content-type`.
pub fn headed_handler()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_: Request<()>| async {
        let mut response = Response::new(Full::new(Bytes::new()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(response)
    })
}

/// The handler of the `-axum` stacks and `governor-ip`: an empty 200
/// with axum's body.
pub fn axum_handler()
-> impl Service<Request<()>, Response = Response<axum::body::Body>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
    })
}

/// tower_governor keyed by the client address the client-IP layer
/// resolved, as tokengate's per-IP limit is.
#[derive(Clone)]
pub struct ClientIpKey;

impl tower_governor::key_extractor::KeyExtractor for ClientIpKey {
    type Key = std::net::IpAddr;

    fn extract<T>(
        &self,
        request: &Request<T>,
    ) -> Result<std::net::IpAddr, tower_governor::GovernorError> {
        tokengate::core::ClientIp::of(request.extensions())
            .map(|ip| ip.addr())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The measured request: `GET /notes` with `bearer`, from [`PEER`].
pub fn request(bearer: &str) -> Request<()> {
    let mut request = Request::get("/notes")
        .header("authorization", bearer)
        .body(())
        .unwrap();
    request.extensions_mut().insert(PeerAddr(PEER));
    request
}

/// Sends `request` through `service`: whether it was admitted (200).
pub fn admitted<S, B>(service: &mut S, request: Request<()>) -> bool
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    call_now(service, request).status() == 200
}

/// A sink that drops every record unread.
pub struct Discard;

impl AuditSink for Discard {
    fn record(&self, record: AuditRecord) {
        drop(black_box(record));
    }
}

/// A check of one's own requiring the `authorization` header (every
/// measured request has it), as `$name`, its `check` carrying `$attr`.
macro_rules! own_check {
    ($(#[$attr:meta])* $name:ident) => {
        #[derive(Clone)]
        pub struct $name;

        impl<B> tokengate::check::Check<B> for $name {
            type Admit = ();
            type Wait = tokengate::check::NoWait;

            $(#[$attr])*
            fn check(&self, request: &mut Request<B>) -> tokengate::check::Verdict<(), Self::Wait> {
                own_check(request)
            }

            fn resume(
                &self,
                _: &mut Request<B>,
                waited: Infallible,
            ) -> tokengate::check::Verdict<(), Self::Wait> {
                match waited {}
            }
        }
    };
}

// Written plainly, and marked `#[inline(always)]`: the same check.
own_check!(OwnCheck);
own_check!(
    #[inline(always)]
    InlinedCheck
);

fn own_check<B>(request: &Request<B>) -> tokengate::check::Verdict<(), tokengate::check::NoWait> {
    use tokengate::core::{Denial, MalformedReason};
    if request.headers().contains_key(http::header::AUTHORIZATION) {
        tokengate::check::Verdict::Admit(())
    } else {
        let denial = Denial::MalformedRequest(MalformedReason::MissingRequiredHeader);
        tokengate::check::Verdict::Refuse(
            tokengate::check::Renderer::default().refuse(request, denial),
        )
    }
}

/// Builds `stack` (one of [`STACKS`]) and hands it to `through` with
/// `requests`: how many were admitted, or `None` for an unknown stack.
pub fn run(stack: &str, requests: u64, through: &mut impl Through) -> Option<u64> {
    if !STACKS.contains(&stack) {
        return None;
    }
    if stack == "gate-prometheus" {
        // Before anything registers its metric handles.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = TokenHasher::new(Pepper::new(tokengate::core::KeyId::new(1), [7u8; 32]).unwrap());
    let cache = CachedStore::new(
        MemoryStore::new(),
        CacheConfig::default().ttl(Duration::from_secs(3600)),
    );
    let token = runtime.block_on(async {
        let issued = Lifecycle::new(cache.clone(), hasher.clone())
            .issue(
                TokenSpec::new("i", "owner")
                    .scopes(["notes:read".parse().unwrap()])
                    .audiences(["notes".parse().unwrap()]),
            )
            .await
            .unwrap();
        cache.verify(&hasher.hash(&issued.token)).await.unwrap();
        issued.token
    });
    let bearer = format!("Bearer {}", token.expose_secret());
    let keyed = hasher.clone();
    let auth = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    let roomy = RateQuota::new(NonZeroU32::MAX, Duration::from_secs(1), NonZeroU32::MAX).unwrap();
    let policy = || {
        EnforceScopeLayer::new(
            ScopePolicy::builder()
                .read_write("/notes", "notes")
                .build()
                .unwrap(),
        )
    };
    // The TSC clock calibrates on first use, for a varying number of
    // instructions: do it before counting starts.
    black_box(tokengate::core::SystemClock.now_nanos());
    let ok = match stack {
        "bare" => through.drive(handler(), &bearer, requests),
        "bare-headed" => through.drive(headed_handler(), &bearer, requests),
        "hmac" => through.drive_hmac(&keyed, token.expose_secret(), requests),
        "authenticate" => through.drive(auth.layer(handler()), &bearer, requests),
        "client-ip" => through.drive(
            tokengate::ipfilter::ResolveClientIpLayer::new().layer(handler()),
            &bearer,
            requests,
        ),
        "audit" => through.drive(AuditLayer::new(Discard).layer(handler()), &bearer, requests),
        "rate-ip" => through.drive(
            tower::ServiceBuilder::new()
                .layer(tokengate::ipfilter::ResolveClientIpLayer::new())
                .layer(RateLimitLayer::per_client_ip(roomy).success_headers(false))
                .service(handler()),
            &bearer,
            requests,
        ),
        "client-ip-axum" => through.drive(
            tokengate::ipfilter::ResolveClientIpLayer::new().layer(axum_handler()),
            &bearer,
            requests,
        ),
        "governor-ip" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .key_extractor(ClientIpKey)
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .unwrap();
            through.drive(
                tower::ServiceBuilder::new()
                    .layer(tokengate::ipfilter::ResolveClientIpLayer::new())
                    .layer(tower_governor::GovernorLayer::new(config))
                    .service(axum_handler()),
                &bearer,
                requests,
            )
        }
        "rate-ip-axum" | "rate-ip-axum-headers" => through.drive(
            tower::ServiceBuilder::new()
                .layer(tokengate::ipfilter::ResolveClientIpLayer::new())
                .layer(
                    RateLimitLayer::per_client_ip(roomy)
                        .success_headers(stack == "rate-ip-axum-headers"),
                )
                .service(axum_handler()),
            &bearer,
            requests,
        ),
        "rate-token" => through.drive(
            tower::ServiceBuilder::new()
                .layer(auth)
                .layer(RateLimitLayer::per_token(roomy))
                .service(handler()),
            &bearer,
            requests,
        ),
        "scope" => through.drive(
            tower::ServiceBuilder::new()
                .layer(auth)
                .layer(policy())
                .service(handler()),
            &bearer,
            requests,
        ),
        _ => {
            let dir = std::env::temp_dir()
                .join(format!("tokengate-counters-{}-{stack}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let sink = JsonLinesSink::builder()
                .overflow(Overflow::Drop)
                .open(&dir.join("audit.jsonl"))
                .unwrap();
            let rules: Vec<String> = (0..1000u32)
                .map(|i| format!("{}/24", std::net::Ipv4Addr::from(0xC000_0000 | (i << 8))))
                .collect();
            let gate = Gate::new(auth, policy())
                .ip_filter(IpFilterLayer::new(IpRules::deny_list(rules).unwrap()))
                .pre_auth_quota(roomy)
                .token_rate(RateLimitLayer::per_token(roomy));
            let ok = match stack {
                "gate-discard" => through.drive(
                    gate.audit(AuditLayer::new(Discard)).layer(handler()),
                    &bearer,
                    requests,
                ),
                "gate-own-check" => {
                    let gate = gate.audit(AuditLayer::new(Discard)).with_check(OwnCheck);
                    through.drive(gate.layer(handler()), &bearer, requests)
                }
                "gate-own-check-inlined" => {
                    let gate = gate
                        .audit(AuditLayer::new(Discard))
                        .with_check(InlinedCheck);
                    through.drive(gate.layer(handler()), &bearer, requests)
                }
                "gate-usage" => {
                    // The Deployment's sink: the same file, each request
                    // counted for its token's usage on the way.
                    let tally = std::sync::Arc::new(tokengate::store::UsageTally::default());
                    let sink = tokengate::audit::CountUsage::new(sink.clone(), tally);
                    through.drive(
                        gate.audit(AuditLayer::new(sink)).layer(handler()),
                        &bearer,
                        requests,
                    )
                }
                "gate-headed" => through.drive(
                    gate.audit(AuditLayer::new(sink.clone()))
                        .layer(headed_handler()),
                    &bearer,
                    requests,
                ),
                _ => through.drive(
                    gate.audit(AuditLayer::new(sink.clone())).layer(handler()),
                    &bearer,
                    requests,
                ),
            };
            sink.shutdown();
            std::fs::remove_dir_all(&dir).unwrap();
            ok
        }
    };
    Some(ok)
}
