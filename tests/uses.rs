//! Usage-limited tokens through a real server: exactly N admitted under
//! concurrency, 403 when the count never refills, 429 with `Retry-After`
//! to the refill when it does, nothing spent by a request refused for
//! another reason, and 503 (never a free use) when the store cannot count;
//! a handler's charges after the fact spend from the same count.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use support::{HttpClient, Reply, World};
use tokengate::core::UseLimit;
use tokengate::redis::{RedisRateState, RedisUses};
use tokengate::{EnforceScopeLayer, Gate, ScopePolicy};

fn uses(n: u64) -> UseLimit {
    UseLimit::new(NonZeroU64::new(n).unwrap())
}

/// A token with `notes:read` and `limit` (and a rate quota that does not
/// bind: the bursts below are the uses' to refuse).
async fn metered(world: &World, limit: UseLimit) -> (tokengate::core::Token, tokengate::TokenId) {
    let wide = std::num::NonZeroU32::new(100_000).unwrap();
    let quota = tokengate::core::RateQuota::new(wide, Duration::from_secs(1), wide).unwrap();
    world
        .issue_spec(world.spec("notes:read").uses(limit).rate_quota(quota))
        .await
}

/// A Gate over the world's store, `/notes` read/write by `notes`, served.
async fn serve(world: &World) -> HttpClient {
    serve_with(world, None).await
}

/// [`serve`], the uses leased in `shared` if given.
async fn serve_with(world: &World, shared: Option<RedisUses>) -> HttpClient {
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let mut gate = Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy));
    if let Some(shared) = shared {
        gate = gate.shared_uses(std::sync::Arc::new(shared));
    }
    let app = Router::new()
        .route(
            "/notes",
            get(|| async { "notes" }).post(|| async { "saved" }),
        )
        .layer(gate);
    HttpClient::new(support::serve_axum(app).await)
}

fn remaining(reply: &Reply) -> Option<u64> {
    reply
        .headers
        .get("token-uses-remaining")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn problem_type(reply: &Reply) -> String {
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    body["type"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_requests_spend_exactly_ten_uses() {
    let world = World::new();
    let client = serve(&world).await;
    let (token, id) = metered(&world, uses(10)).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, token) = (client.clone(), token.clone());
        requests.spawn(async move { client.get("/notes", Some(&token)).await });
    }
    let replies = requests.join_all().await;
    let admitted: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert_eq!(admitted.len(), 10, "exactly the ten uses");
    // Each count left is told once: 9 down to 0.
    let told: BTreeSet<u64> = admitted.iter().map(|r| remaining(r).unwrap()).collect();
    assert_eq!(told, (0..10).collect());
    for refused in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "never refills: 403");
        assert_eq!(
            problem_type(refused),
            "urn:tokengate:problem:usage-exhausted"
        );
        assert_eq!(remaining(refused), Some(0));
        assert!(refused.headers.get("retry-after").is_none());
    }
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.uses.unwrap().remaining,
        0,
        "the store holds the count"
    );
}

#[tokio::test]
async fn a_refilling_token_waits_for_the_refill_then_gets_the_refill_count() {
    let world = World::new();
    // Half past some hour: the next refill is 30 minutes away.
    let hour = 3_600;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    world
        .clock
        .set(UNIX_EPOCH + Duration::from_secs(now / hour * hour + hour / 2));
    let client = serve(&world).await;
    let limit = uses(2).with_refill("3/1h".parse().unwrap());
    let (token, _) = metered(&world, limit).await;

    for left in [1, 0] {
        let reply = client.get("/notes", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(remaining(&reply), Some(left));
    }
    let refused = client.get("/notes", Some(&token)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        problem_type(&refused),
        "urn:tokengate:problem:usage-exhausted"
    );
    assert_eq!(refused.headers["retry-after"], "1800");
    assert_eq!(remaining(&refused), Some(0));
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["retry_after"], 1800);

    world.advance(Duration::from_secs(hour / 2));
    for left in [2, 1, 0] {
        let reply = client.get("/notes", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::OK, "refilled to three");
        assert_eq!(remaining(&reply), Some(left));
    }
    let refused = client.get("/notes", Some(&token)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "3600");
}

#[tokio::test]
async fn a_request_refused_for_its_scope_spends_nothing() {
    let world = World::new();
    let client = serve(&world).await;
    let (token, _) = metered(&world, uses(1)).await;
    let write = client.with_token("POST", "/notes", &token, "{}").await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(
        problem_type(&write),
        "urn:tokengate:problem:insufficient-scope"
    );
    assert_eq!(remaining(&write), None);
    let read = client.get("/notes", Some(&token)).await;
    assert_eq!(read.status, StatusCode::OK, "the one use is still there");
    assert_eq!(remaining(&read), Some(0));
}

#[tokio::test]
async fn a_store_that_cannot_count_refuses_with_503_and_admits_nothing_uncounted() {
    let world = World::new();
    let client = serve(&world).await;
    let (limited, id) = metered(&world, uses(5)).await;
    let (unlimited, _) = world.issue("notes:read").await;
    // Both known to the cache first.
    assert_eq!(
        client.get("/notes", Some(&limited)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get("/notes", Some(&unlimited)).await.status,
        StatusCode::OK
    );

    world.probe.set_failing(true);
    let refused = client.get("/notes", Some(&limited)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let served = client.get("/notes", Some(&unlimited)).await;
    assert_eq!(
        served.status,
        StatusCode::OK,
        "unlimited tokens need no store"
    );
    assert_eq!(remaining(&served), None);

    world.probe.set_failing(false);
    let reply = client.get("/notes", Some(&limited)).await;
    assert_eq!(
        remaining(&reply),
        Some(3),
        "the refused request spent nothing"
    );
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.uses.unwrap().remaining, 3);
}

#[tokio::test]
async fn a_reset_and_a_new_limit_hold_from_the_next_request() {
    let world = World::new();
    let client = serve(&world).await;
    let (token, id) = metered(&world, uses(1)).await;
    assert_eq!(
        client.get("/notes", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get("/notes", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );
    // Never above the limit: a reset to 2 of 1 is refused.
    assert!(world.lifecycle.reset_uses(&id, Some(2)).await.is_err());
    world.lifecycle.reset_uses(&id, Some(1)).await.unwrap();
    let reply = client.get("/notes", Some(&token)).await;
    assert_eq!((reply.status, remaining(&reply)), (StatusCode::OK, Some(0)));

    // Unlimited from now on: no count, no header.
    world
        .lifecycle
        .update(&id, &tokengate::store::TokenPatch::new().uses(None))
        .await
        .unwrap();
    for _ in 0..3 {
        let reply = client.get("/notes", Some(&token)).await;
        assert_eq!((reply.status, remaining(&reply)), (StatusCode::OK, None));
    }
}

#[tokio::test]
async fn stacked_alone_authenticate_spends_the_use_itself() {
    let world = World::new();
    let app = Router::new()
        .route("/notes", get(|| async { "notes" }))
        .layer(world.auth.clone());
    let client = HttpClient::new(support::serve_axum(app).await);
    let (token, _) = metered(&world, uses(2)).await;
    let statuses: Vec<StatusCode> = [
        client.get("/notes", Some(&token)).await,
        client.get("/notes", Some(&token)).await,
        client.get("/notes", Some(&token)).await,
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::FORBIDDEN]
    );
}

/// A Gate with late charges over the world's store: `GET /rows/{n}`
/// costs 1, and its handler charges `n - 1` more through the meter,
/// answering 402 when the token cannot pay.
async fn serve_rows(world: &World) -> HttpClient {
    use axum::extract::{Extension, Path};
    let policy = ScopePolicy::builder()
        .route(
            [http::Method::GET],
            "/rows/{n}",
            tokengate::Requirement::all(["notes:read"]).unwrap(),
        )
        .build()
        .unwrap();
    let gate = Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy)).late_charges();
    let rows = |Path(n): Path<u32>, Extension(meter): Extension<tokengate::core::Meter>| async move {
        match meter.charge(n.saturating_sub(1)).await {
            Ok(()) => Ok(format!("{n} rows")),
            Err(denial) => {
                assert_eq!(denial.reason(), "usage_exhausted");
                Err(StatusCode::PAYMENT_REQUIRED)
            }
        }
    };
    let app = Router::new().route("/rows/{n}", get(rows)).layer(gate);
    HttpClient::new(support::serve_axum(app).await)
}

/// The uses the store holds for `id`.
async fn stored_left(world: &World, id: &tokengate::TokenId) -> u64 {
    let record = world.lifecycle.get(id).await.unwrap().unwrap();
    record.uses.unwrap().remaining
}

#[tokio::test]
async fn a_handler_spends_more_uses_after_the_fact_and_never_past_the_count() {
    let world = World::new();
    let client = serve_rows(&world).await;
    let (token, id) = metered(&world, uses(10)).await;
    assert_eq!(
        client.get("/rows/4", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        stored_left(&world, &id).await,
        6,
        "1 by the route, 3 by the handler"
    );
    let late = client.get("/rows/8", Some(&token)).await;
    assert_eq!(late.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        stored_left(&world, &id).await,
        5,
        "the route's use only: 7 more were refused whole"
    );
    assert_eq!(
        client.get("/rows/5", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(stored_left(&world, &id).await, 0);
    let gate = client.get("/rows/1", Some(&token)).await;
    assert_eq!(
        gate.status,
        StatusCode::FORBIDDEN,
        "the Gate refuses: none left"
    );

    // At once: every use spent is accounted for, none twice, none over.
    let (token, id) = metered(&world, uses(20)).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let (client, token) = (client.clone(), token.clone());
        requests.spawn(async move { client.get("/rows/3", Some(&token)).await.status });
    }
    let mut spent = 0;
    for status in requests.join_all().await {
        spent += match status {
            StatusCode::OK => 3,
            StatusCode::PAYMENT_REQUIRED => 1,
            refused => {
                assert_eq!(refused, StatusCode::FORBIDDEN);
                0
            }
        };
    }
    assert_eq!(
        spent + stored_left(&world, &id).await,
        20,
        "every use once: {spent} spent"
    );
}

/// 64 requests at once; how many were admitted (the rest must be 403).
async fn admitted_of_64(client: &HttpClient, token: &tokengate::core::Token) -> usize {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, token) = (client.clone(), token.clone());
        requests.spawn(async move { client.get("/notes", Some(&token)).await.status });
    }
    let statuses = requests.join_all().await;
    for status in &statuses {
        assert!(
            [StatusCode::OK, StatusCode::FORBIDDEN].contains(status),
            "{status}"
        );
    }
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_leases_admit_exactly_the_uses_and_a_reset_starts_a_new_lease() {
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let prefix = format!("tg-uses-{}", rand_suffix());
    let state = RedisRateState::new(&url).unwrap().prefix(&prefix).unwrap();
    let world = World::new();
    let client = serve_with(&world, Some(state.uses().lease(4))).await;
    let (token, id) = metered(&world, uses(10)).await;
    assert_eq!(
        admitted_of_64(&client, &token).await,
        10,
        "ten uses, leased"
    );
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.uses.unwrap().remaining,
        0,
        "all taken from the store"
    );

    // Three more by a reset: a new generation, a new lease.
    world.lifecycle.reset_uses(&id, Some(3)).await.unwrap();
    assert_eq!(admitted_of_64(&client, &token).await, 3);
    let keys = tokengate_tests::remove_redis_keys(&url, &prefix).await;
    assert!(
        keys.iter().any(|k| k.contains(&format!(":uses:{id}:1:"))),
        "the second generation's lease: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_unreachable_uses_are_spent_in_the_store_and_stay_exact() {
    let state = RedisRateState::new("redis://127.0.0.1:1")
        .unwrap()
        .timeout(std::time::Duration::from_millis(100));
    let world = World::new();
    let client = serve_with(&world, Some(state.uses())).await;
    let (token, id) = metered(&world, uses(10)).await;
    assert_eq!(admitted_of_64(&client, &token).await, 10);
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.uses.unwrap().remaining, 0);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

#[tokio::test]
async fn the_per_address_limit_before_authentication_does_not_bind_a_metered_token() {
    // The Gate's default: 100 a second per client address, bursts of 200,
    // charged where a request waits inside its shield. A metered token's
    // spend waits (for the store) but is outside it: its own quota rules.
    let world = World::new();
    let client = serve(&world).await;
    let (token, _) = metered(&world, uses(1_000)).await;
    for sent in 0..300 {
        let reply = client.get("/notes", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::OK, "request {sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_pause_costs_no_use_and_the_count_told_stays_true() {
    // A Redis of its own: the pause must not stall other tests.
    let Some(redis) = tokengate_tests::PrivateRedis::start() else {
        return;
    };
    let state = RedisRateState::new(redis.url())
        .unwrap()
        .timeout(Duration::from_millis(100));
    let world = World::new();
    let client = serve_with(&world, Some(state.uses().lease(16))).await;
    let (token, id) = metered(&world, uses(40)).await;
    let mut admitted = 0u64;
    let get = async || {
        let reply = client.get("/notes", Some(&token)).await;
        (reply.status, remaining(&reply))
    };
    // A lease taken, three spent from it.
    for _ in 0..3 {
        assert_eq!(get().await.0, StatusCode::OK);
        admitted += 1;
    }
    // Paused: each spend's script waits behind the pause, the request
    // gives up after the timeout and spends in the store; the scripts run
    // when Redis wakes, and their uses are given back.
    redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]).await;
    for _ in 0..5 {
        assert_eq!(get().await.0, StatusCode::OK);
        admitted += 1;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Every use left is admitted, once, and each count told is the truth.
    let mut told = Vec::new();
    loop {
        let (status, left) = get().await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::FORBIDDEN);
            break;
        }
        admitted += 1;
        told.push(left.unwrap());
        assert!(admitted <= 40, "more than the token's 40 uses");
    }
    assert_eq!(admitted, 40, "a pause cost uses");
    let truth: Vec<u64> = (0..told.len() as u64).rev().collect();
    assert_eq!(told, truth, "token-uses-remaining after the pause");
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.uses.unwrap().remaining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_never_answers_holds_a_request_one_timeout_in_all() {
    // Accepts connections, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(100);
    let state = RedisRateState::new(&format!("redis://{addr}"))
        .unwrap()
        .timeout(timeout);
    let world = World::new();
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy))
        .rate_state(state.clone())
        .shared_uses(std::sync::Arc::new(state.uses()));
    let app = Router::new()
        .route("/notes", get(|| async { "notes" }))
        .layer(gate);
    let client = HttpClient::new(support::serve_axum(app).await);
    let (metered_token, id) = metered(&world, uses(20)).await;
    let (plain, _) = world.issue("notes:read").await;
    let mut latencies = Vec::new();
    for round in 0..20 {
        let token = if round % 2 == 0 {
            &metered_token
        } else {
            &plain
        };
        let started = std::time::Instant::now();
        let reply = client.get("/notes", Some(token)).await;
        latencies.push(started.elapsed());
        // The rate limits fall back to this instance's own; the uses are
        // spent in the store: every request answered, none refused.
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.body
        );
    }
    let stored = world.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.uses.unwrap().remaining,
        10,
        "ten metered requests, ten uses"
    );
    latencies.sort();
    #[allow(clippy::print_stderr, reason = "reported, not asserted")]
    {
        eprintln!(
            "latency with Redis never answering (timeout {timeout:?}): median {:?}, max {:?}",
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1]
        );
    }
}
