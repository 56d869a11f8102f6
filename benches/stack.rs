//! The full five-layer stack on a cache hit, beside a bare service and a
//! naive stack in the same run.
//!
//! - `gate`: `tokengate::Gate` with audit to a JSON-lines file (Drop
//!   overflow), client IP, an IP filter of 1,000 deny rules, the per-IP
//!   pre-auth limit, authenticate, the per-token limit and a scope table.
//! - `gate-discard`: the same gate with a sink that drops each record as it
//!   is handed over: the request path alone, without the writer thread
//!   sharing the machine.
//! - `gate-handover`: the same gate with a sink that queues each record to
//!   a thread that drains the queue every 5 ms (as the JSON-lines writer
//!   does under load) and only drops what it takes: the request path plus
//!   the hand-over, without the formatting and the file.
//! - `naive`: what one would write by hand: SHA-256 of the token, a moka
//!   lookup, governor's keyed limiter, a `tracing::info!` through
//!   tracing-appender's non-blocking writer, and a linear scan of the same
//!   1,000 CIDRs.
//!
//! Tokens are hit round-robin over 1 (hot), 1k, 100k and 1M issued tokens,
//! all cached before measuring.
//!
//! `stack-cold` repeats the hot case for `bare`, `naive`, `gate` and
//! `gate-discard` with the core's caches evicted before each request (the
//! eviction is not timed): a request as a server runs it, after the kernel
//! and other connections have had the core. Run: `cargo bench --bench
//! stack` (`-- stack-cold` for that group alone).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use ipnet::{IpNet, Ipv4Net};
use tokengate::audit::{AuditLayer, AuditRecord, AuditSink, JsonLinesSink, Overflow};
use tokengate::core::{ClientIp, KeyId, RateQuota, RequestTrail};
use tokengate::ipfilter::{IpFilterLayer, IpRules, PeerAddr};
use tokengate::rate::RateLimitLayer;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, Lifecycle, MemoryStore,
    Pepper, ScopePolicy, TokenHasher, TokenSpec,
};
use tokengate_tests::{CacheEvictor, call_now};
use tower::{Layer, Service, service_fn};

#[path = "support/naive.rs"]
mod naive;
use naive::{Naive, remember};

type Body = Full<Bytes>;

fn handler()
-> impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

fn rules() -> Vec<String> {
    (0..1000u32)
        .map(|i| format!("{}/24", Ipv4Addr::from(0xC000_0000 | (i << 8))))
        .collect()
}

fn request(bearer: &str) -> Request<()> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri("/notes")
        .header("authorization", bearer)
        .body(())
        .unwrap();
    let peer: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    request.extensions_mut().insert(PeerAddr(peer));
    RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new(peer.ip()));
    request
}

fn run<S, B>(service: &mut S, bearer: &str) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    call_now(service, request(bearer))
}

/// A sink that drops each record where it is handed over.
struct Discard;

impl AuditSink for Discard {
    fn record(&self, record: AuditRecord) {
        drop(black_box(record));
    }
}

/// A sink that queues each record to a thread that only drops it.
#[derive(Clone)]
struct Handover(crossbeam_channel::Sender<AuditRecord>);

impl Handover {
    fn spawn() -> (Self, std::thread::JoinHandle<()>) {
        let (sender, receiver) = crossbeam_channel::bounded::<AuditRecord>(1 << 16);
        let thread = std::thread::spawn(move || {
            loop {
                match receiver.try_recv() {
                    Ok(record) => drop(black_box(record)),
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            }
        });
        (Self(sender), thread)
    }
}

impl AuditSink for Handover {
    fn record(&self, record: AuditRecord) {
        let _ = self.0.try_send(record);
    }
}

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tokengate-bench-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::fs::File::create(dir.join("naive.jsonl")).unwrap());
    let _default = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_writer(writer)
            .finish(),
    );
    let deny_nets: Vec<IpNet> = rules()
        .iter()
        .map(|r| IpNet::V4(r.parse::<Ipv4Net>().unwrap()))
        .collect();
    let roomy = RateQuota::new(NonZeroU32::MAX, Duration::from_secs(1), NonZeroU32::MAX).unwrap();
    let sink = JsonLinesSink::builder()
        .capacity(1 << 16)
        .overflow(Overflow::Drop)
        .open(&dir.join("audit.jsonl"))
        .unwrap();
    let (handover, handover_thread) = Handover::spawn();

    let mut group = c.benchmark_group("stack");
    let mut bare = handler();
    let hot = "Bearer tg_unused".to_owned();
    group.bench_function("bare", |b| b.iter(|| black_box(run(&mut bare, &hot))));

    let mut hot = None;
    for count in [1usize, 1_000, 100_000, 1_000_000] {
        let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
        let config = CacheConfig::default()
            .max_entries(count as u64 + 16)
            .ttl(Duration::from_secs(3600));
        let cache = CachedStore::new(MemoryStore::new(), config);
        let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
        let naive_tokens = moka::sync::Cache::builder()
            .max_capacity(count as u64 + 16)
            .build();
        let bearers: Vec<String> = runtime.block_on(async {
            let mut bearers = Vec::with_capacity(count);
            for _ in 0..count {
                let issued = lifecycle
                    .issue(
                        TokenSpec::new("bench", "owner")
                            .scopes(["notes:read".parse().unwrap()])
                            .audiences(["notes".parse().unwrap()]),
                    )
                    .await
                    .unwrap();
                cache.verify(&hasher.hash(&issued.token)).await.unwrap();
                let secret = issued.token.expose_secret();
                remember(&naive_tokens, secret, vec!["notes:read".to_owned()]);
                bearers.push(format!("Bearer {secret}"));
            }
            bearers
        });
        let gate = Gate::new(
            AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap()),
            EnforceScopeLayer::new(
                ScopePolicy::builder()
                    .read_write("/notes", "notes")
                    .build()
                    .unwrap(),
            ),
        )
        .ip_filter(IpFilterLayer::new(IpRules::deny_list(rules()).unwrap()))
        .pre_auth_quota(roomy)
        .token_rate(RateLimitLayer::per_token(roomy));
        let mut discarding = gate
            .clone()
            .audit(AuditLayer::new(Discard))
            .layer(handler());
        let mut handing_over = gate
            .clone()
            .audit(AuditLayer::new(handover.clone()))
            .layer(handler());
        let mut gated = gate.audit(AuditLayer::new(sink.clone())).layer(handler());
        let mut naive = Naive {
            tokens: naive_tokens,
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX),
            )),
            deny: Arc::new(deny_nets.clone()),
        }
        .around(handler());
        assert_eq!(run(&mut gated, &bearers[0]).status(), StatusCode::OK);
        assert_eq!(run(&mut naive, &bearers[0]).status(), StatusCode::OK);

        if count == 1 {
            hot = Some((
                bearers[0].clone(),
                gated.clone(),
                discarding.clone(),
                naive.clone(),
            ));
        }

        let mut i = 0usize;
        warm_case(&mut group, "naive", count, &mut naive, &bearers, &mut i);
        warm_case(&mut group, "gate", count, &mut gated, &bearers, &mut i);
        // The request path alone: no writer thread sharing the machine.
        warm_case(
            &mut group,
            "gate-discard",
            count,
            &mut discarding,
            &bearers,
            &mut i,
        );
        // The request path and the hand-over to another thread.
        warm_case(
            &mut group,
            "gate-handover",
            count,
            &mut handing_over,
            &bearers,
            &mut i,
        );
    }
    group.finish();
    let (bearer, gated, discarding, naive) = hot.expect("the hot case ran");
    cold(c, &bearer, gated, discarding, naive);
    sink.shutdown();
    drop(handover);
    handover_thread.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = IpAddr::V4(Ipv4Addr::LOCALHOST);
}

/// The hot token again, each request timed alone after [`CacheEvictor::evict`]: what a
/// request costs when its code and data are no longer in the core's
/// caches, as in a server, where the kernel and the other connections run
/// between two requests.
fn cold<G, D, N, BG, BD, BN>(c: &mut Criterion, bearer: &str, gated: G, discarding: D, naive: N)
where
    G: Service<Request<()>, Response = Response<BG>, Error: std::fmt::Debug>,
    D: Service<Request<()>, Response = Response<BD>, Error: std::fmt::Debug>,
    N: Service<Request<()>, Response = Response<BN>, Error: std::fmt::Debug>,
{
    let mut group = c.benchmark_group("stack-cold");
    // Each request costs an eviction of ~0.1 ms beside it: few, short samples.
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700));
    let mut evictor = CacheEvictor::default();
    cold_case(&mut group, "bare", &mut evictor, handler(), bearer);
    cold_case(&mut group, "naive", &mut evictor, naive, bearer);
    cold_case(&mut group, "gate", &mut evictor, gated, bearer);
    cold_case(&mut group, "gate-discard", &mut evictor, discarding, bearer);
    group.finish();
}

/// One variant over `bearers`, back to back, walking them with a stride
/// (`i` carries on from variant to variant).
fn warm_case<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    count: usize,
    service: &mut S,
    bearers: &[String],
    i: &mut usize,
) where
    S: Service<Request<()>, Response = Response<B>, Error: std::fmt::Debug>,
{
    group.bench_with_input(BenchmarkId::new(name, count), &count, |b, _| {
        b.iter(|| {
            *i = (*i + 7919) % bearers.len();
            black_box(run(service, &bearers[*i]))
        });
    });
}

fn cold_case<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    evictor: &mut CacheEvictor,
    mut service: S,
    bearer: &str,
) where
    S: Service<Request<()>, Response = Response<B>, Error: std::fmt::Debug>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                evictor.evict();
                let start = std::time::Instant::now();
                drop(black_box(run(&mut service, bearer)));
                total += start.elapsed();
            }
            total
        });
    });
}

criterion_group!(benches, stack);
criterion_main!(benches);
