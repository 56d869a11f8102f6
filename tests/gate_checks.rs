//! The Gate as a chain of checks: a rate state that answers later works
//! in it, and a check of one's own joins it with one builder call.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokengate::check::{Check, NoWait, Renderer, Verdict};
use tokengate::core::{MalformedReason, RateQuota, Token};
use tokengate::ipfilter::PeerAddr;
use tokengate::{Denial, Gate, MemoryStore, ScopePolicy};
use tokengate_rate::testing::PendingRateState;
use tower::{ServiceExt, service_fn};

/// The small example check of the docs: every request must name its
/// tenant in `x-tenant`, or it gets 400.
#[derive(Clone, Default)]
struct RequireTenant {
    renderer: Renderer,
}

impl<B> Check<B> for RequireTenant {
    type Admit = ();
    type Wait = NoWait;

    fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
        if request.headers().contains_key("x-tenant") {
            return Verdict::Admit(());
        }
        let denial = Denial::MalformedRequest(MalformedReason::MissingRequiredHeader);
        Verdict::Refuse(self.renderer.refuse(request, denial))
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}

fn quota(count: u32, burst: u32) -> RateQuota {
    let n = |v| NonZeroU32::new(v).unwrap();
    RateQuota::new(n(count), Duration::from_secs(60), n(burst)).unwrap()
}

/// A gate over an in-memory store, and a token with `notes:read`.
async fn gate() -> (Gate<MemoryStore, ScopePolicy>, Token) {
    support::memory_gate().await
}

fn request(token: &Token, tenant: Option<&str>) -> Request<()> {
    let mut request = Request::get("/notes")
        .header("authorization", format!("Bearer {}", token.expose_secret()))
        .body(())
        .unwrap();
    if let Some(tenant) = tenant {
        request
            .headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
    }
    request
        .extensions_mut()
        .insert(PeerAddr("192.0.2.7:40000".parse().unwrap()));
    request
}

/// The status, headers and extensions of `service`'s answer to `request`.
async fn send<S, B>(service: &S, request: Request<()>) -> http::response::Parts
where
    S: tower::Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    service
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .into_parts()
        .0
}

/// The inner service: 200 with an empty body.
type Empty = http_body_util::Empty<bytes::Bytes>;

fn ok()
-> impl tower::Service<Request<()>, Response = Response<Empty>, Error = Infallible, Future = impl Send>
+ Clone
+ Send {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::new())) })
}

#[tokio::test]
async fn a_gate_whose_rate_state_answers_later_limits_as_the_in_memory_one() {
    let (gate, token) = gate().await;
    let state = PendingRateState::new();
    let gate = gate
        .token_rate(tokengate::rate::RateLimitLayer::per_token(quota(1, 2)))
        .rate_state(state.clone());
    let service = tower::ServiceBuilder::new().layer(gate).service(ok());

    for _ in 0..2 {
        let admitted = send(&service, request(&token, None)).await;
        assert_eq!(admitted.status, StatusCode::OK);
        assert_eq!(
            admitted.headers["ratelimit-policy"],
            "\"per-token\";q=2;w=120"
        );
    }
    let limited = send(&service, request(&token, None)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key("retry-after"));

    state.fail(true);
    let failing = send(&service, request(&token, None)).await;
    assert_eq!(failing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failing.extensions.get::<Denial>(),
        Some(&Denial::RateStateUnavailable)
    );
}

#[tokio::test]
async fn a_seventh_check_joins_the_gate_with_one_builder_call() {
    let (gate, token) = gate().await;
    let gate = gate.with_check(RequireTenant::default());
    let service = tower::ServiceBuilder::new().layer(gate).service(ok());

    let refused = send(&service, request(&token, None)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.extensions.get::<Denial>(),
        Some(&Denial::MalformedRequest(
            MalformedReason::MissingRequiredHeader
        ))
    );
    // The checks before it admitted the request: their headers reach its refusal.
    assert!(refused.headers.contains_key("ratelimit"));

    let admitted = send(&service, request(&token, Some("team-a"))).await;
    assert_eq!(admitted.status, StatusCode::OK);

    // Without a token the request never reaches the seventh check.
    let mut anonymous = request(&token, Some("team-a"));
    anonymous.headers_mut().remove("authorization");
    assert_eq!(
        send(&service, anonymous).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn two_gates_sharing_redis_give_a_token_its_quota_once() {
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let prefix = format!("tg-gate-test-{}", std::process::id());
    let shared = || {
        tokengate::redis::RedisRateState::new(&url)
            .unwrap()
            .prefix(&prefix)
            .unwrap()
            .timeout(Duration::from_secs(2))
    };
    let (gate, token) = gate().await;
    let limited = gate.token_rate(tokengate::rate::RateLimitLayer::per_token(quota(1, 4)));
    let probe = shared();
    let first = tower::ServiceBuilder::new()
        .layer(limited.clone().rate_state(probe.clone()))
        .service(ok());
    let second = tower::ServiceBuilder::new()
        .layer(limited.rate_state(shared()))
        .service(ok());
    let mut statuses = Vec::new();
    for i in 0..8 {
        let parts = if i % 2 == 0 {
            send(&first, request(&token, None)).await
        } else {
            send(&second, request(&token, None)).await
        };
        statuses.push(parts.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429]);
    assert_eq!(probe.fallbacks(), 0, "every answer came from Redis");
    remove_keys(&url, &prefix).await;
}

/// Removes every key under `prefix`.
async fn remove_keys(url: &str, prefix: &str) {
    use redis::AsyncCommands;
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = connection.keys(format!("{{{prefix}}}:*")).await.unwrap();
    assert!(
        !keys.is_empty(),
        "the gates kept their buckets under {prefix}"
    );
    let _: () = connection.del(keys).await.unwrap();
}

/// The audit records of a Gate whose Redis cannot be reached, under
/// `policy`, for three requests with a per-token burst of 1.
async fn audited_with_redis_down(
    policy: tokengate::redis::Unavailable,
) -> (Vec<u16>, Vec<serde_json::Value>) {
    // Nothing listens on port 1: every call fails at once.
    let down = tokengate::redis::RedisRateState::new("redis://127.0.0.1:1")
        .unwrap()
        .timeout(Duration::from_millis(200))
        .unavailable(policy);
    audited_over(down, 3, &format!("{policy:?}")).await
}

/// The audit records of a Gate on `state` for `n` requests with a
/// per-token burst of 1.
async fn audited_over(
    state: tokengate::redis::RedisRateState,
    n: usize,
    label: &str,
) -> (Vec<u16>, Vec<serde_json::Value>) {
    let dir = std::env::temp_dir().join(format!(
        "tokengate-fallback-audit-{}-{label}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let sink = tokengate::audit::JsonLinesSink::open(&path).unwrap();
    let (gate, token) = gate().await;
    let service = tower::ServiceBuilder::new()
        .layer(
            gate.token_rate(tokengate::rate::RateLimitLayer::per_token(quota(1, 1)))
                .rate_state(state)
                .audit(tokengate::audit::AuditLayer::new(sink.clone())),
        )
        .service(ok());
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(send(&service, request(&token, None)).await.status.as_u16());
    }
    sink.shutdown();
    let records = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    (statuses, records)
}

#[tokio::test]
async fn a_request_decided_while_redis_is_down_states_the_policy_in_its_audit_record() {
    // Local: the instance's own limits admit, then refuse, and each
    // record says so.
    let (statuses, records) = audited_with_redis_down(tokengate::redis::Unavailable::Local).await;
    assert_eq!(statuses, [200, 429, 429]);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["tokengate.rate_fallback"], "local", "admitted");
    assert_eq!(records[0].get("tokengate.reason"), None);
    for record in &records[1..] {
        assert_eq!(record["tokengate.reason"], "rate_limited");
        assert_eq!(record["tokengate.rate_fallback"], "local");
    }

    // FailClosed: every request refused with 503, stated as such.
    let (statuses, records) =
        audited_with_redis_down(tokengate::redis::Unavailable::FailClosed).await;
    assert_eq!(statuses, [503, 503, 503]);
    for record in &records {
        assert_eq!(record["tokengate.reason"], "rate_state_unavailable");
        assert_eq!(record["tokengate.rate_fallback"], "fail_closed");
        assert_eq!(record["http.response.status_code"], 503);
    }

    // FailOpen admits without a limit, stated as such.
    let (statuses, records) =
        audited_with_redis_down(tokengate::redis::Unavailable::FailOpen).await;
    assert_eq!(statuses, [200, 200, 200]);
    for record in &records {
        assert_eq!(record["tokengate.rate_fallback"], "fail_open");
        assert_eq!(record.get("tokengate.reason"), None);
    }

    // Redis answering: nothing to state.
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let prefix = format!("tg-gate-audit-{}", std::process::id());
    let up = tokengate::redis::RedisRateState::new(&url)
        .unwrap()
        .prefix(&prefix)
        .unwrap()
        .timeout(Duration::from_secs(2));
    let (statuses, records) = audited_over(up, 2, "up").await;
    assert_eq!(statuses, [200, 429]);
    assert!(
        records
            .iter()
            .all(|r| r.get("tokengate.rate_fallback").is_none()),
        "{records:?}"
    );
    remove_keys(&url, &prefix).await;
}

#[tokio::test]
async fn an_owner_quota_holds_across_its_tokens_and_its_configuration_is_a_result() {
    let world = support::World::new();
    let (first, _) = world.issue("notes:read").await;
    let (second, _) = world.issue("notes:read").await;
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = Gate::new(
        world.auth.clone(),
        tokengate::EnforceScopeLayer::new(policy),
    )
    .token_and_owner_quota(quota(100, 100), quota(1, 2))
    .expect("two limiters of their own names");
    let service = tower::ServiceBuilder::new().layer(gate).service(ok());
    for token in [&first, &second] {
        assert_eq!(
            send(&service, request(token, None)).await.status,
            StatusCode::OK
        );
    }
    // Both tokens are alice's: the owner's burst of two is spent.
    let limited = send(&service, request(&first, None)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.headers["ratelimit-policy"],
        "\"per-owner\";q=2;w=120"
    );
}

/// The quotas and the rate state may be given in either order: the same
/// limits apply, kept in the state given (which a failing state proves).
#[tokio::test]
async fn quotas_and_a_rate_state_apply_in_either_order() {
    for state_first in [true, false] {
        let (gate, token) = gate().await;
        let state = PendingRateState::new();
        let gate = if state_first {
            gate.rate_state(state.clone())
                .token_rate(tokengate::rate::RateLimitLayer::per_token(quota(1, 2)))
                .pre_auth_quota(quota(100, 200))
        } else {
            gate.token_rate(tokengate::rate::RateLimitLayer::per_token(quota(1, 2)))
                .pre_auth_quota(quota(100, 200))
                .rate_state(state.clone())
        };
        let service = tower::ServiceBuilder::new().layer(gate).service(ok());
        for _ in 0..2 {
            let admitted = send(&service, request(&token, None)).await;
            assert_eq!(
                admitted.status,
                StatusCode::OK,
                "state first: {state_first}"
            );
            assert_eq!(
                admitted.headers["ratelimit-policy"],
                "\"per-token\";q=2;w=120"
            );
        }
        let limited = send(&service, request(&token, None)).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        state.fail(true);
        let failing = send(&service, request(&token, None)).await;
        assert_eq!(
            failing.extensions.get::<Denial>(),
            Some(&Denial::RateStateUnavailable),
            "the limits live in the given state (state first: {state_first})"
        );
    }
}

/// The authenticate layer decides the same as a `tower` layer and as a
/// check in a chain of one's own: a usage-limited token spends its use
/// either way.
#[tokio::test]
async fn the_authenticate_layer_spends_a_use_as_a_layer_and_as_a_check() {
    use std::num::NonZeroU64;
    let world = support::World::new();
    let spec = world
        .spec("notes:read")
        .uses(tokengate::core::UseLimit::new(NonZeroU64::new(1).unwrap()));
    let (as_layer, _) = world.issue_spec(spec.clone()).await;
    let (as_check, _) = world.issue_spec(spec).await;
    let layer = tower::ServiceBuilder::new()
        .layer(world.auth.clone())
        .service(ok());
    let check = tower::ServiceBuilder::new()
        .layer(tokengate::check::CheckLayer::new(world.auth.clone()))
        .service(ok());
    let first = send(&layer, request(&as_layer, None)).await;
    assert_eq!(first.status, StatusCode::OK, "layer");
    assert_eq!(first.headers["token-uses-remaining"], "0", "layer");
    let second = send(&layer, request(&as_layer, None)).await;
    assert_eq!(second.status, StatusCode::FORBIDDEN, "layer: spent");
    let first = send(&check, request(&as_check, None)).await;
    assert_eq!(first.status, StatusCode::OK, "check");
    assert_eq!(first.headers["token-uses-remaining"], "0", "check");
    let second = send(&check, request(&as_check, None)).await;
    assert_eq!(second.status, StatusCode::FORBIDDEN, "check: spent");
}
