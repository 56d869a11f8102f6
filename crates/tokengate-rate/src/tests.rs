//! The layer's decisions under a manual clock: no test sleeps.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use tokengate_core::{ClientIp, Denial, ManualClock, Principal, RateQuota, RequestTrail};
use tokengate_store::testing::record;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

use super::*;

type Svc = BoxCloneService<Request<()>, Response<tokengate_check::CheckBody<()>>, Infallible>;

fn quota(count: u32, period_secs: u64, burst: u32) -> RateQuota {
    RateQuota::new(
        NonZeroU32::new(count).unwrap(),
        Duration::from_secs(period_secs),
        NonZeroU32::new(burst).unwrap(),
    )
    .unwrap()
}

fn service<St: RateState + Clone>(layer: &RateLimitLayer<St>) -> Svc {
    let handler = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    BoxCloneService::new(layer.layer(handler))
}

fn as_principal(principal: &Principal) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(principal.clone());
    request
}

async fn status(svc: &Svc, request: Request<()>) -> StatusCode {
    svc.clone().oneshot(request).await.unwrap().status()
}

fn per_token(count: u32, period: u64, burst: u32) -> (RateLimitLayer, ManualClock) {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::per_token(quota(count, period, burst)).clock(clock.shared());
    (layer, clock)
}

#[tokio::test]
async fn exactly_the_burst_passes_then_429_with_headers_then_exactly_when_promised() {
    let (layer, clock) = per_token(1, 2, 3); // one per 2 s, bursts of 3
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    for i in 0..3 {
        let ok = svc.clone().oneshot(as_principal(&p)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "request {i}");
        assert_eq!(ok.headers()["ratelimit-policy"], r#""per-token";q=3;w=6"#);
        assert_eq!(
            ok.headers()["ratelimit"],
            format!("\"per-token\";r={};t={}", 2 - i, 2 * (i + 1)).as_str()
        );
    }
    let limited = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()[RETRY_AFTER], "2");
    assert_eq!(limited.headers()["ratelimit"], r#""per-token";r=0;t=2"#);
    assert!(matches!(
        limited.extensions().get::<Denial>(),
        Some(Denial::RateLimited(_))
    ));

    clock.advance(Duration::from_millis(1_999));
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_long_idle_refills_the_burst_and_no_more() {
    let (layer, clock) = per_token(1, 1, 4);
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    for _ in 0..4 {
        assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(3_600));
    let mut admitted = 0;
    for _ in 0..10 {
        if status(&svc, as_principal(&p)).await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
}

#[tokio::test]
async fn hammering_while_limited_does_not_push_the_next_admission_out() {
    let (layer, clock) = per_token(1, 10, 1);
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    for _ in 0..500 {
        clock.advance(Duration::from_millis(10));
        assert_eq!(
            status(&svc, as_principal(&p)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    clock.advance(Duration::from_secs(5)); // 10 s after the admitted request
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_tasks_across_clones_admit_exactly_the_burst() {
    let (layer, _clock) = per_token(1, 60, 10);
    let p = Principal::from_record(&record("alice", ""));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let svc = service(&layer); // a separate service per task, one shared state
            let request = as_principal(&p);
            tokio::spawn(async move { svc.oneshot(request).await.unwrap().status() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn one_token_is_one_bucket_over_http_and_grpc() {
    let (layer, _clock) = per_token(1, 60, 2);
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    let grpc = || {
        let mut request = as_principal(&p);
        request
            .headers_mut()
            .insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
        *request.method_mut() = Method::POST;
        request
    };
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    assert_eq!(status(&svc, grpc()).await, StatusCode::OK);
    let limited = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(
        limited.status(),
        StatusCode::OK,
        "gRPC refusals are HTTP 200"
    );
    assert_eq!(limited.headers()["grpc-status"], "8");
    assert_eq!(limited.headers()["grpc-retry-pushback-ms"], "60000");
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_owner_limit_caps_the_sum_of_its_tokens() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::new([
        Limiter::per_token(quota(1, 60, 5)),
        Limiter::per_owner(quota(1, 60, 8)),
    ])
    .unwrap()
    .clock(clock.shared());
    let svc = service(&layer);
    let tokens: Vec<Principal> = (0..20)
        .map(|_| Principal::from_record(&record("team-a", "")))
        .collect();
    let mut admitted = 0;
    for round in 0..5 {
        for p in &tokens {
            if status(&svc, as_principal(p)).await == StatusCode::OK {
                admitted += 1;
            }
            let _ = round;
        }
    }
    assert_eq!(admitted, 8);
    let other = Principal::from_record(&record("team-b", ""));
    assert_eq!(status(&svc, as_principal(&other)).await, StatusCode::OK);
}

#[tokio::test]
async fn a_refusal_by_one_limiter_spends_nothing_of_another() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::new([
        Limiter::per_token(quota(1, 60, 3)),
        Limiter::per_owner(quota(1, 60, 1)),
    ])
    .unwrap()
    .clock(clock.shared());
    let svc = service(&layer);
    let a = Principal::from_record(&record("team-a", ""));
    assert_eq!(status(&svc, as_principal(&a)).await, StatusCode::OK);
    for _ in 0..10 {
        let limited = svc.clone().oneshot(as_principal(&a)).await.unwrap();
        assert_eq!(
            limited.headers()["ratelimit-policy"],
            r#""per-owner";q=1;w=60"#
        );
    }
    // A minute later the owner has one request again; the token still has
    // its full burst minus the one admitted request: 10 refusals spent nothing.
    clock.advance(Duration::from_secs(60));
    let ok = svc.clone().oneshot(as_principal(&a)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit"], r#""per-owner";r=0;t=60"#);
    let state = MemoryRateState::default();
    let layer = layer.state(state.clone());
    let _ = service(&layer).oneshot(as_principal(&a)).await.unwrap();
    assert_eq!(state.len(), 2, "one key per limiter");
}

#[tokio::test]
async fn the_token_records_own_quota_wins() {
    let (layer, _clock) = per_token(100, 1, 100);
    let svc = service(&layer);
    let mut tight = record("alice", "");
    tight.rate_quotas = vec![quota(1, 60, 2)];
    let p = Principal::from_record(&tight);
    for remaining in ["1", "0"] {
        let admitted = svc.clone().oneshot(as_principal(&p)).await.unwrap();
        assert_eq!(admitted.status(), StatusCode::OK);
        // Stated from the principal's memo after the first request.
        assert_eq!(
            admitted.headers()["ratelimit-policy"],
            r#""per-token";q=2;w=120"#
        );
        let state = admitted.headers()["ratelimit"].to_str().unwrap();
        assert!(
            state.starts_with(&format!(r#""per-token";r={remaining};"#)),
            "{state}"
        );
    }
    let limited = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.headers()["ratelimit-policy"],
        r#""per-token";q=2;w=120"#
    );
}

/// A request from client address `ip`.
fn from(ip: &str) -> Request<()> {
    let mut request = Request::new(());
    RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new(ip.parse().unwrap()));
    request
}

#[tokio::test]
async fn client_ip_limits_work_before_authentication() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::per_client_ip(quota(1, 60, 2)).clock(clock.shared());
    let svc = service(&layer);
    assert_eq!(status(&svc, from("192.0.2.1")).await, StatusCode::OK);
    assert_eq!(status(&svc, from("::ffff:192.0.2.1")).await, StatusCode::OK);
    assert_eq!(
        status(&svc, from("192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&svc, from("192.0.2.2")).await, StatusCode::OK);
    let none = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        none.status(),
        StatusCode::FORBIDDEN,
        "no client address: fail closed"
    );
}

#[tokio::test]
async fn missing_keys_are_refused_or_skipped_never_pooled() {
    let (layer, _clock) = per_token(1, 60, 1);
    let denied = service(&layer).oneshot(Request::new(())).await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let skip = service(&layer.clone().missing_key(MissingKey::Skip));
    for _ in 0..10 {
        let response = skip.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn route_costs_spend_more_of_the_burst() {
    let (layer, _clock) = per_token(1, 60, 5);
    let layer = layer.cost(|method, _| if method == Method::POST { 3 } else { 1 });
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    let post = || {
        let mut r = as_principal(&p);
        *r.method_mut() = Method::POST;
        r
    };
    assert_eq!(status(&svc, post()).await, StatusCode::OK);
    assert_eq!(status(&svc, post()).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    assert_eq!(status(&svc, as_principal(&p)).await, StatusCode::OK);
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_free_route_charges_nothing_and_headers_count_in_units_of_cost() {
    let (layer, _clock) = per_token(1, 60, 5);
    let layer = layer.cost(|_, uri| match uri.path() {
        "/healthz" => 0,
        "/export" => 3,
        _ => 1,
    });
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    let to = |path: &str| {
        let mut r = as_principal(&p);
        *r.uri_mut() = path.parse().unwrap();
        r
    };
    let export = svc.clone().oneshot(to("/export")).await.unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let left = export.headers()["ratelimit"].to_str().unwrap();
    assert!(left.starts_with(r#""per-token";r=2;"#), "{left}");
    for _ in 0..20 {
        let free = svc.clone().oneshot(to("/healthz")).await.unwrap();
        assert_eq!(free.status(), StatusCode::OK);
        assert!(!free.headers().contains_key("ratelimit"), "nothing charged");
    }
    let refused = svc.clone().oneshot(to("/export")).await.unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "2 left, 3 asked"
    );
    assert_eq!(status(&svc, to("/notes")).await, StatusCode::OK);
    assert_eq!(status(&svc, to("/notes")).await, StatusCode::OK);
    assert_eq!(
        status(&svc, to("/notes")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A handler that charges `X-Rows` more through the request's meter:
/// 200, 429 when the meter refuses, 500 without a meter.
fn charging<St: RateState + Clone>(layer: &RateLimitLayer<St>) -> Svc {
    let handler = service_fn(|request: Request<()>| async move {
        let rows: u32 = request
            .headers()
            .get("x-rows")
            .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
        let status = match request.extensions().get::<tokengate_core::Meter>() {
            None => StatusCode::INTERNAL_SERVER_ERROR,
            Some(meter) => match meter.charge(rows).await {
                Ok(()) => StatusCode::OK,
                Err(denial) => denial.status(),
            },
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    });
    BoxCloneService::new(layer.layer(handler))
}

#[tokio::test]
async fn a_handler_charges_more_after_the_fact_within_the_same_quota() {
    let (layer, clock) = per_token(1, 60, 10);
    let p = Principal::from_record(&record("alice", ""));
    let rows = |n: u32| {
        let mut r = as_principal(&p);
        r.headers_mut().insert("x-rows", n.into());
        r
    };
    let off = charging(&layer);
    assert_eq!(
        status(&off, rows(1)).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "off by default: no meter"
    );
    let svc = charging(&layer.late_charges(true));
    // 9 left: 1 for the route and 5 after it.
    assert_eq!(status(&svc, rows(5)).await, StatusCode::OK);
    // 3 left: the route's 1 passes, 7 more cannot and charge nothing.
    assert_eq!(status(&svc, rows(7)).await, StatusCode::TOO_MANY_REQUESTS);
    // 2 left: the route's 1 and 1 more.
    assert_eq!(status(&svc, rows(1)).await, StatusCode::OK, "2 were left");
    assert_eq!(status(&svc, rows(0)).await, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(60));
    assert_eq!(status(&svc, rows(0)).await, StatusCode::OK);
}

#[tokio::test]
async fn a_free_route_still_meters_its_handler() {
    let (layer, _clock) = per_token(1, 60, 4);
    let svc = charging(&layer.cost(|_, _| 0).late_charges(true));
    let p = Principal::from_record(&record("alice", ""));
    let mut request = as_principal(&p);
    request.headers_mut().insert("x-rows", 4.into());
    assert_eq!(status(&svc, request).await, StatusCode::OK);
    let mut request = as_principal(&p);
    request.headers_mut().insert("x-rows", 1.into());
    assert_eq!(status(&svc, request).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn every_quota_of_a_token_is_checked_and_the_tightest_stated() {
    let (layer, clock) = per_token(100, 1, 100);
    let svc = service(&layer);
    let mut with_two = record("alice", "");
    // 1 a second in bursts of 5, and 6 a day.
    with_two.rate_quotas = vec![quota(1, 1, 5), quota(6, 86_400, 6)];
    let p = Principal::from_record(&with_two);
    for left in [4, 3, 2, 1, 0] {
        let ok = svc.clone().oneshot(as_principal(&p)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let state = ok.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!(r#""per-token";r={left};"#)),
            "{state}"
        );
        assert_eq!(ok.headers()["ratelimit-policy"], r#""per-token";q=5;w=5"#);
    }
    let burst = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(burst.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(burst.headers()[RETRY_AFTER], "1", "the per-second quota");
    clock.advance(Duration::from_secs(1));
    let last = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(last.status(), StatusCode::OK, "the sixth of the day");
    assert_eq!(
        last.headers()["ratelimit-policy"],
        r#""per-token";q=6;w=86400"#,
        "the daily quota is now the tightest"
    );
    clock.advance(Duration::from_secs(10));
    let day = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(day.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = day.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 14_000, "a sixth of a day, less what passed: {wait}");
    // Another token with one quota is untouched by alice's.
    let bob = Principal::from_record(&record("bob", ""));
    assert_eq!(status(&svc, as_principal(&bob)).await, StatusCode::OK);
}

#[tokio::test]
async fn success_headers_can_be_turned_off_but_429s_keep_them() {
    let (layer, _clock) = per_token(1, 60, 1);
    let svc = service(&layer.success_headers(false));
    let p = Principal::from_record(&record("alice", ""));
    let ok = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert!(!ok.headers().contains_key("ratelimit"));
    let limited = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert!(limited.headers().contains_key("ratelimit"));
}

#[test]
fn a_million_distinct_keys_stay_under_the_cap_and_each_first_request_passes() {
    let state = MemoryRateState::new(10_000);
    let gcra = gcra::Gcra::new(quota(1, 60, 5));
    let now = 1_000_000_000_000;
    let check = |ip: std::net::IpAddr| Charge {
        key: (0, RateKey::Ip(ip)),
        gcra,
        cost: 1,
    };
    // A client that is being limited: it has spent its burst.
    let heavy: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    for _ in 0..5 {
        assert!(matches!(
            state.decide(&[check(heavy)], now),
            Outcome::Admitted { .. }
        ));
    }
    let mut refused = 0;
    for i in 0..1_000_000u32 {
        let ip = std::net::IpAddr::from(i.to_be_bytes());
        if let Outcome::Refused { .. } = state.decide(&[check(ip)], now) {
            refused += 1;
        }
        assert!(state.len() <= 10_000, "{}", state.len());
    }
    assert_eq!(
        refused, 0,
        "a client that has sent nothing is never refused for room"
    );
    // The flood evicted the keys closest to idle, not the limited client.
    assert!(matches!(
        state.decide(&[check(heavy)], now),
        Outcome::Refused { .. }
    ));
}

#[test]
fn keys_made_in_one_clock_tick_are_evicted_a_sixteenth_at_a_time_not_a_shard_at_once() {
    // Every key has the same TAT (one instant, as with a coarse clock):
    // a full shard used to drop every key sharing the threshold's TAT.
    let state = MemoryRateState::new(16_000);
    let gcra = gcra::Gcra::new(quota(1, 60, 5));
    let now = 1_000_000_000_000;
    for i in 0..32_000u32 {
        let charge = Charge {
            key: (0, RateKey::Ip(std::net::IpAddr::from(i.to_be_bytes()))),
            gcra,
            cost: 1,
        };
        assert!(matches!(
            state.decide(&[charge], now),
            Outcome::Admitted { .. }
        ));
        assert!(state.len() <= 16_000, "{}", state.len());
    }
    // Each full shard lost a sixteenth at a time, so the state stays
    // nearly full (it fell to about half before).
    assert!(state.len() >= 16_000 * 7 / 8, "{}", state.len());
}

#[tokio::test]
async fn ipv6_clients_are_keyed_by_their_64_and_prefixes_are_configurable() {
    let default = service(&RateLimitLayer::per_client_ip(quota(1, 60, 1)));
    assert_eq!(
        status(&default, from("2001:db8:1:2::1")).await,
        StatusCode::OK
    );
    // Another address of the same /64: the same bucket.
    assert_eq!(
        status(&default, from("2001:db8:1:2:ffff::9")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&default, from("2001:db8:1:3::1")).await,
        StatusCode::OK
    );
    // IPv4 addresses stay separate by default.
    assert_eq!(status(&default, from("192.0.2.1")).await, StatusCode::OK);
    assert_eq!(status(&default, from("192.0.2.2")).await, StatusCode::OK);

    let wide = service(
        &RateLimitLayer::new([Limiter::per_client_ip(quota(1, 60, 1)).client_ip_prefixes(24, 48)])
            .unwrap(),
    );
    assert_eq!(status(&wide, from("192.0.2.1")).await, StatusCode::OK);
    assert_eq!(
        status(&wide, from("192.0.2.200")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&wide, from("2001:db8:1::1")).await, StatusCode::OK);
    assert_eq!(
        status(&wide, from("2001:db8:1:ffff::1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn keys_are_separate_per_limiter_and_per_kind_and_addresses_are_canonical() {
    let state = MemoryRateState::new(1_000);
    let gcra = gcra::Gcra::new(quota(1, 60, 1));
    let now = 1_000_000_000_000;
    let admitted = |key: (u8, RateKey)| {
        matches!(
            state.decide(&[Charge { key, gcra, cost: 1 }], now),
            Outcome::Admitted { .. }
        )
    };
    let text: std::sync::Arc<str> = "alice".into();
    let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
    // Each first use spends the burst of one: every key below is distinct.
    for key in [
        (0, RateKey::Owner(text.clone())),
        (0, RateKey::Custom(text.clone())),
        (1, RateKey::Owner(text)),
        (0, RateKey::Ip(v4)),
        (1, RateKey::Ip(v4)),
        (0, RateKey::Ip(v6)),
        (0, RateKey::Token("tok_aaaaaaaaaaaaaaaa".parse().unwrap())),
        (0, RateKey::Token("tok_aaaaaaaaaaaaaaab".parse().unwrap())),
    ] {
        assert!(admitted(key.clone()), "{key:?} is its own bucket");
        assert!(!admitted(key.clone()), "{key:?} is spent");
    }
    // The mapped form of an IPv4 address is the same client.
    assert!(!admitted((0, RateKey::Ip(mapped))));
    assert_eq!(state.len(), 8);
}

#[tokio::test]
async fn a_pending_backend_answers_the_same_and_a_failing_one_fails_closed() {
    let clock = ManualClock::new();
    let slow = crate::testing::PendingRateState::new();
    let layer = RateLimitLayer::per_token(quota(1, 60, 1))
        .clock(clock.shared())
        .state(slow.clone());
    let svc = service(&layer);
    let p = Principal::from_record(&record("alice", ""));
    let ok = svc.clone().oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().contains_key("ratelimit"));
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    slow.fail(true);
    assert_eq!(
        status(&svc, as_principal(&p)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn bad_configurations_name_the_value() {
    assert_eq!(
        RateLimitLayer::new([]).unwrap_err(),
        RateConfigError::NoLimiter
    );
    let q = quota(1, 1, 1);
    let bad = RateLimitLayer::new([Limiter::per_token(q).named("Per Token")]).unwrap_err();
    assert!(bad.to_string().contains("\"Per Token\""), "{bad}");
    let dup = RateLimitLayer::new([
        Limiter::per_token(q),
        Limiter::per_owner(q).named("per-token"),
    ])
    .unwrap_err();
    assert_eq!(dup.to_string(), "two limiters are named \"per-token\"");
    let many = RateLimitLayer::new((0..9).map(|i| Limiter::per_token(q).named(&format!("l{i}"))))
        .unwrap_err();
    assert_eq!(many, RateConfigError::TooMany { count: 9 });
}

/// The number after `key=` in a structured header.
fn param(header: &http::HeaderValue, key: &str) -> u64 {
    let text = header.to_str().unwrap();
    let at = text.find(&format!(";{key}=")).unwrap() + key.len() + 2;
    text[at..].split(';').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_fast_rate_is_stated_at_its_sustained_quota_not_its_burst() {
    // 5/s with a burst of 3: the bucket refills in 0.6 s, stated as w=1,
    // over which 5 pass, not 3.
    let (layer, _clock) = per_token(5, 1, 3);
    let p = Principal::from_record(&record("alice", ""));
    let ok = service(&layer).oneshot(as_principal(&p)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit-policy"], r#""per-token";q=5;w=1"#);
    assert_eq!(ok.headers()["ratelimit"], r#""per-token";r=2;t=1"#);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever the quota and the timing of requests, a response never
    /// states more requests left than its policy's quota.
    #[test]
    fn ratelimit_never_states_more_remaining_than_the_quota(
        count in 1u32..200,
        period in 1u64..3_600,
        burst in 1u32..300,
        gaps_ms in proptest::collection::vec(0u64..5_000, 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (layer, clock) = per_token(count, period, burst);
        let svc = service(&layer);
        let p = Principal::from_record(&record("alice", ""));
        runtime.block_on(async {
            for gap in gaps_ms {
                clock.advance(Duration::from_millis(gap));
                let response = svc.clone().oneshot(as_principal(&p)).await.unwrap();
                let headers = response.headers();
                let q = param(&headers["ratelimit-policy"], "q");
                let r = param(&headers["ratelimit"], "r");
                let w = param(&headers["ratelimit-policy"], "w");
                assert!(r <= q, "{:?} {:?}", headers["ratelimit-policy"], headers["ratelimit"]);
                // The quota is the burst, or the sustained rate over the
                // window where that is more: never less than either.
                let sustained = w * u64::from(count) / period;
                assert!(q >= u64::from(burst), "{:?}", headers["ratelimit-policy"]);
                assert!(
                    q.abs_diff(sustained.max(u64::from(burst))) <= 1,
                    "{:?} for {count}/{period}s burst {burst}",
                    headers["ratelimit-policy"]
                );
                // The window is the refill time of a whole burst, rounded up.
                let refill_ms = u64::from(burst) * period * 1000 / u64::from(count);
                assert!(w * 1000 >= refill_ms && (w - 1) * 1000 <= refill_ms.max(1000), "w={w}");
            }
        });
    }
}

#[test]
fn a_tokens_own_policy_is_kept_per_grant_and_stated_under_each_limiters_name() {
    use crate::limiter::token_policy;
    let q = quota(5, 60, 5);
    let mut a = record("alice", "");
    a.rate_quotas = vec![q];
    let mut b = a.clone();
    b.id = tokengate_core::TokenId::generate();
    let grants = tokengate_core::Grants::new();
    let (pa, pb) = (
        Principal::from_record_in(&a, &grants),
        Principal::from_record_in(&b, &grants),
    );
    let (policy, header) = token_policy(&pa, "per-token", q).unwrap();
    assert_eq!(policy.name(), "per-token");
    assert_eq!(header, r#""per-token";q=5;w=60"#);
    assert_eq!(token_policy(&pb, "per-token", q).unwrap().1, header);
    let (other, other_header) = token_policy(&pa, "per-client", q).unwrap();
    assert_eq!(other.name(), "per-client");
    assert_eq!(other_header, r#""per-client";q=5;w=60"#);
    assert!(token_policy(&Principal::from_record(&record("bob", "")), "per-token", q).is_some());
}
