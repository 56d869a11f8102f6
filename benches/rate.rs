//! The rate check on a hit, beside governor's keyed limiter (the same GCRA,
//! on a DashMap) in the same run, for 1 key and for 100k keys; and the whole
//! layer beside tower_governor's layer and a bare service.
//!
//! Run: `cargo bench --bench rate`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use tokengate::core::{ClientIp, Clock, RateQuota, RequestTrail, SystemClock};
use tokengate_rate::gcra::Gcra;
use tokengate_rate::{Charge, MemoryRateState, RateKey, RateLimitLayer};
use tokengate_tests::call_now;
use tower::{Layer, Service, service_fn};
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

fn ip(i: u32) -> IpAddr {
    IpAddr::from(i.to_be_bytes())
}

/// What the layer reads: the system clock's monotonic nanoseconds.
fn now_nanos() -> u64 {
    SystemClock.now_nanos()
}

/// A quota no benchmark exhausts: every measured check is an admission.
fn roomy() -> RateQuota {
    RateQuota::new(NonZeroU32::MAX, Duration::from_secs(1), NonZeroU32::MAX).unwrap()
}

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_check");
    for keys in [1u32, 100_000] {
        let governor =
            RateLimiter::keyed(Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX));
        let state = MemoryRateState::new(200_000);
        let gcra = Gcra::new(roomy());
        for i in 0..keys {
            let _ = governor.check_key(&ip(i));
            let _ = state.decide(
                &[Charge {
                    key: (0, RateKey::Ip(ip(i))),
                    gcra,
                    cost: 1,
                }],
                now_nanos(),
            );
        }
        let mut i = 0u32;
        group.bench_with_input(
            BenchmarkId::new("governor_check_key", keys),
            &keys,
            |b, _| {
                b.iter(|| {
                    i = (i + 7919) % keys;
                    black_box(governor.check_key(&ip(i)).is_ok())
                });
            },
        );
        // The same check on a time read once: isolates the state update.
        let fixed = now_nanos();
        group.bench_with_input(
            BenchmarkId::new("tokengate_decide_clock_excluded", keys),
            &keys,
            |b, _| {
                b.iter(|| {
                    i = (i + 7919) % keys;
                    let check = Charge {
                        key: (0, RateKey::Ip(ip(i))),
                        gcra,
                        cost: 1,
                    };
                    black_box(state.decide(&[check], fixed))
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("tokengate_decide", keys), &keys, |b, _| {
            b.iter(|| {
                i = (i + 7919) % keys;
                let check = Charge {
                    key: (0, RateKey::Ip(ip(i))),
                    gcra,
                    cost: 1,
                };
                black_box(state.decide(&[check], now_nanos()))
            });
        });
    }
    group.finish();
}

/// tower_governor keyed by the same client address tokengate reads.
#[derive(Clone)]
struct ClientIpKey;

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        ClientIp::of(request.extensions())
            .map(|ip| ip.addr())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// axum's body on every side: tower_governor needs `Response<B>: From<GovernorError>`.
fn handler()
-> impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) })
}

fn run<S, B>(service: &mut S) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut request = Request::new(());
    RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new(ip(7)));
    call_now(service, request)
}

fn layers(c: &mut Criterion) {
    let config = GovernorConfigBuilder::default()
        .key_extractor(ClientIpKey)
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    let mut peer = tower_governor::GovernorLayer::new(config).layer(handler());
    let mut ours = RateLimitLayer::per_client_ip(roomy()).layer(handler());
    // tower_governor adds no headers unless asked: the like-for-like variant.
    let mut ours_quiet = RateLimitLayer::per_client_ip(roomy())
        .success_headers(false)
        .layer(handler());
    let mut bare = handler();
    assert_eq!(run(&mut peer).status(), 200);
    assert_eq!(run(&mut ours).status(), 200);

    let mut group = c.benchmark_group("rate_layer");
    group.bench_function("bare", |b| b.iter(|| black_box(run(&mut bare))));
    group.bench_function("tower_governor", |b| b.iter(|| black_box(run(&mut peer))));
    group.bench_function("tokengate_per_ip", |b| b.iter(|| black_box(run(&mut ours))));
    group.bench_function("tokengate_per_ip_no_success_headers", |b| {
        b.iter(|| black_box(run(&mut ours_quiet)));
    });
    group.finish();
}

criterion_group!(benches, checks, layers);
criterion_main!(benches);
