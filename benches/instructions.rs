//! A fixed number of requests through one stack, for instruction counts
//! under callgrind (stable to well under 1 % on this noisy machine, unlike
//! wall time). `benches/instructions.sh` runs it for each stack at two
//! request counts and prints instructions per request (the difference
//! divided by the extra requests, so setup cancels out).
//!
//! Usage: `instructions STACK REQUESTS` with STACK one of
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
//!   (every metric the gate emits recorded).
//!
//! With `COLD` set in the environment, the driver writes over a buffer
//! twice the size of this machine's L2 before each request (in
//! `CacheEvictor::evict`, which the script leaves out of the count): with callgrind's cache model
//! (`COLD=1 benches/instructions.sh`), the cache lines a request misses.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokengate::audit::{AuditLayer, AuditRecord, AuditSink, JsonLinesSink, Overflow};
use tokengate::core::{Clock as _, KeyId, RateQuota};
use tokengate::ipfilter::{IpFilterLayer, IpRules, PeerAddr};
use tokengate::rate::RateLimitLayer;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, Lifecycle, MemoryStore,
    Pepper, ScopePolicy, TokenHasher, TokenSpec,
};
use tokengate_tests::{CacheEvictor, call_now};
use tower::{Layer, Service, service_fn};

fn handler()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

#[inline(never)]
fn drive<S, B>(mut service: S, bearer: &str, requests: u64) -> u64
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let peer: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut ok = 0;
    let mut cold = std::env::var_os("COLD").map(|_| CacheEvictor::default());
    for _ in 0..requests {
        if let Some(evictor) = cold.as_mut() {
            evictor.evict();
        }
        let mut request = Request::get("/notes")
            .header("authorization", bearer)
            .body(())
            .unwrap();
        request.extensions_mut().insert(PeerAddr(peer));
        if call_now(&mut service, request).status() == 200 {
            ok += 1;
        }
    }
    ok
}

/// The token's keyed hash, `requests` times: the one part of a request
/// whose cost under callgrind (software SHA-256) differs most from the
/// hardware it runs on (SHA-NI).
#[inline(never)]
fn drive_hmac(hasher: &TokenHasher, token: &str, requests: u64) -> u64 {
    let mut ok = 0;
    for _ in 0..requests {
        let hash = hasher.hash_str(black_box(token));
        if black_box(hash).key_id() == KeyId::new(1) {
            ok += 1;
        }
    }
    ok
}

/// A sink that drops every record unread.
struct Discard;

/// A check of one's own requiring the `authorization` header (every
/// measured request has it), as `$name`, its `check` carrying `$attr`.
macro_rules! own_check {
    ($(#[$attr:meta])* $name:ident) => {
        #[derive(Clone)]
        struct $name;

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

impl AuditSink for Discard {
    fn record(&self, record: AuditRecord) {
        drop(black_box(record));
    }
}

/// Bounds on what every admitted request moves around, with room for
/// compiler layout changes: refusals and the audit record are boxed, so
/// the forwarding path carries pointers rather than whole responses.
const MAX_FUTURE: usize = 384;
const MAX_RESPONSE: usize = 256;

/// The sizes of `service`'s response future and response.
fn sizes<S: Service<Request<()>>>(_: &S) -> (usize, usize) {
    (
        std::mem::size_of::<S::Future>(),
        std::mem::size_of::<S::Response>(),
    )
}

/// Prints the full Gate's response future and response sizes; exits 1
/// when either passes its bound.
fn footprint() {
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [7u8; 32]).unwrap());
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
    let auth = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = Gate::new(auth, EnforceScopeLayer::new(policy)).audit(AuditLayer::new(Discard));
    let (future, response) = sizes(&gate.layer(handler()));
    println!(
        "footprint: gate future {future} bytes (at most {MAX_FUTURE}), response {response} bytes (at most {MAX_RESPONSE})"
    );
    if future > MAX_FUTURE || response > MAX_RESPONSE {
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("footprint") {
        footprint();
        return;
    }
    let (Some(stack), Some(requests)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok()))
    else {
        // Run without arguments (as `cargo bench` does): a smoke run.
        println!("usage: instructions STACK REQUESTS (see the module docs for stacks)");
        return;
    };
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
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [7u8; 32]).unwrap());
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
    let ok = match stack.as_str() {
        "bare" => drive(handler(), &bearer, requests),
        "hmac" => drive_hmac(&keyed, token.expose_secret(), requests),
        "authenticate" => drive(auth.layer(handler()), &bearer, requests),
        "client-ip" => drive(
            tokengate::ipfilter::ResolveClientIpLayer::new().layer(handler()),
            &bearer,
            requests,
        ),
        "audit" => drive(AuditLayer::new(Discard).layer(handler()), &bearer, requests),
        "rate-ip" => drive(
            tower::ServiceBuilder::new()
                .layer(tokengate::ipfilter::ResolveClientIpLayer::new())
                .layer(RateLimitLayer::per_client_ip(roomy).success_headers(false))
                .service(handler()),
            &bearer,
            requests,
        ),
        "rate-token" => drive(
            tower::ServiceBuilder::new()
                .layer(auth)
                .layer(RateLimitLayer::per_token(roomy))
                .service(handler()),
            &bearer,
            requests,
        ),
        "scope" => drive(
            tower::ServiceBuilder::new()
                .layer(auth)
                .layer(policy())
                .service(handler()),
            &bearer,
            requests,
        ),
        _ => {
            let dir =
                std::env::temp_dir().join(format!("tokengate-instructions-{}", std::process::id()));
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
            let ok = if stack == "gate-discard" {
                drive(
                    gate.audit(AuditLayer::new(Discard)).layer(handler()),
                    &bearer,
                    requests,
                )
            } else if stack == "gate-own-check" {
                let gate = gate.audit(AuditLayer::new(Discard)).with_check(OwnCheck);
                drive(gate.layer(handler()), &bearer, requests)
            } else if stack == "gate-own-check-inlined" {
                let gate = gate
                    .audit(AuditLayer::new(Discard))
                    .with_check(InlinedCheck);
                drive(gate.layer(handler()), &bearer, requests)
            } else if stack == "gate-usage" {
                // The Deployment's sink: the same file, each request
                // counted for its token's usage on the way.
                let tally = std::sync::Arc::new(tokengate::store::UsageTally::default());
                let sink = tokengate::audit::CountUsage::new(sink.clone(), tally);
                drive(
                    gate.audit(AuditLayer::new(sink)).layer(handler()),
                    &bearer,
                    requests,
                )
            } else {
                drive(
                    gate.audit(AuditLayer::new(sink.clone())).layer(handler()),
                    &bearer,
                    requests,
                )
            };
            sink.shutdown();
            std::fs::remove_dir_all(&dir).unwrap();
            ok
        }
    };
    println!("{stack}: {ok} of {requests} requests answered 200");
}
