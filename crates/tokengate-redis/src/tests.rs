//! Against a real Redis: `TOKENGATE_REDIS_URL`, by default the local one.
//! Without one the tests skip with one line, unless
//! `TOKENGATE_REQUIRE_SERVICES=1` (CI) makes that a failure.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokengate_core::{RateQuota, TokenId};
use tokengate_rate::gcra::Gcra;
use tokengate_rate::{Charge, Outcome, RateKey, RateState};

use tokengate_core::testing::Proxy;

use super::*;

fn url() -> String {
    std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or `None` (skip) when there is none.
async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let connected = async {
        let client = redis::Client::open(url())?;
        client.get_multiplexed_async_connection().await
    };
    match tokio::time::timeout(Duration::from_secs(2), connected).await {
        Ok(Ok(connection)) => Some(connection),
        _ if std::env::var("TOKENGATE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!(
                "Redis is required (TOKENGATE_REQUIRE_SERVICES=1) but {} does not answer",
                url()
            )
        }
        _ => {
            println!("skipped: no Redis at {} (set TOKENGATE_REDIS_URL)", url());
            None
        }
    }
}

/// A prefix of the test's own; its keys are removed when it is dropped.
struct Prefix {
    name: String,
    connection: redis::aio::MultiplexedConnection,
}

impl Prefix {
    fn new(connection: &redis::aio::MultiplexedConnection) -> Self {
        Self {
            name: format!("tg-test-{}", rand::random::<u64>()),
            connection: connection.clone(),
        }
    }

    fn state(&self) -> RedisRateState {
        RedisRateState::new(&url())
            .unwrap()
            .prefix(&self.name)
            .unwrap()
            .timeout(Duration::from_secs(2))
    }

    async fn keys(&self) -> Vec<String> {
        let mut connection = self.connection.clone();
        connection
            .keys(format!("{{{}}}:*", self.name))
            .await
            .unwrap()
    }

    async fn clean(self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let mut connection = self.connection.clone();
            let _: () = connection.del(keys).await.unwrap();
        }
    }
}

fn charge(limiter: u8, key: RateKey, count: u32, burst: u32) -> Charge {
    let n = |v| NonZeroU32::new(v).unwrap();
    let quota = RateQuota::new(n(count), Duration::from_secs(60), n(burst)).unwrap();
    Charge {
        key: (limiter, key),
        gcra: Gcra::new(quota),
        cost: 1,
    }
}

fn token() -> RateKey {
    RateKey::Token(TokenId::generate())
}

fn admitted(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Admitted { .. })
}

#[tokio::test]
async fn a_burst_is_admitted_whole_then_refused_with_the_wait() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let state = prefix.state();
    let charges = [charge(0, token(), 10, 3)];
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(state.acquire(&charges, 0).await.unwrap());
    }
    assert!(answers[..3].iter().all(admitted), "{answers:?}");
    let Outcome::Admitted {
        tightest: Some((0, remaining, _)),
    } = answers[2]
    else {
        panic!("{answers:?}");
    };
    assert_eq!(remaining, 0);
    let Outcome::Refused {
        charge: 0,
        retry_after,
        fallback: None,
    } = answers[3]
    else {
        panic!("{answers:?}");
    };
    // One request every 6 s: the next passes within 6 s.
    assert!(retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(6));
    assert_eq!(state.fallbacks(), 0);
    // The bucket expires when full again: within the 18 s its burst takes.
    let keys = prefix.keys().await;
    assert_eq!(keys.len(), 1);
    let mut c = connection.clone();
    let ttl: i64 = c.pttl(&keys[0]).await.unwrap();
    assert!(ttl > 0 && ttl <= 18_000, "{ttl}");
    prefix.clean().await;
}

#[tokio::test]
async fn a_request_refused_by_one_limiter_spends_no_other() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let state = prefix.state();
    let owner = || charge(1, RateKey::Owner(Arc::from("team-a")), 10, 1);
    let roomy = charge(0, token(), 10, 5);
    assert!(admitted(
        &state.acquire(&[roomy.clone(), owner()], 0).await.unwrap()
    ));
    // The owner's burst of 1 is spent: refused, and the token's limiter
    // keeps its 4 remaining.
    for _ in 0..3 {
        let refused = state.acquire(&[roomy.clone(), owner()], 0).await.unwrap();
        assert!(
            matches!(refused, Outcome::Refused { charge: 1, .. }),
            "{refused:?}"
        );
    }
    for left in (0..4).rev() {
        let Outcome::Admitted {
            tightest: Some((0, remaining, _)),
        } = state
            .acquire(std::slice::from_ref(&roomy), 0)
            .await
            .unwrap()
        else {
            panic!("the token's budget was spent by refused requests");
        };
        assert_eq!(remaining, left);
    }
    prefix.clean().await;
}

#[tokio::test]
async fn two_instances_share_one_quota() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let (a, b) = (prefix.state(), prefix.state());
    let charges = [charge(0, token(), 10, 10)];
    let mut admitted_count = 0;
    for i in 0..30 {
        let state = if i % 2 == 0 { &a } else { &b };
        if admitted(&state.acquire(&charges, 0).await.unwrap()) {
            admitted_count += 1;
        }
    }
    assert_eq!(admitted_count, 10);
    prefix.clean().await;
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_burst() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let state = prefix.state();
    let charges = Arc::new([charge(0, token(), 10, 16)]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (state, charges) = (state.clone(), Arc::clone(&charges));
            tokio::spawn(async move { state.acquire(&*charges, 0).await.unwrap() })
        })
        .collect();
    let mut admitted_count = 0;
    for task in tasks {
        if admitted(&task.await.unwrap()) {
            admitted_count += 1;
        }
    }
    assert_eq!(admitted_count, 16);
    prefix.clean().await;
}

/// A state pointed at a port nobody listens on.
fn unreachable(policy: Unavailable) -> RedisRateState {
    RedisRateState::new("redis://127.0.0.1:1")
        .unwrap()
        .timeout(Duration::from_millis(200))
        .unavailable(policy)
}

#[tokio::test]
async fn without_redis_the_policy_decides_and_is_counted() {
    let charges = [charge(0, token(), 10, 2)];
    let local = unreachable(Unavailable::Local);
    let answers: Vec<bool> = futures_like(&local, &charges, 3).await;
    assert_eq!(answers, [true, true, false], "local limits still hold");
    assert_eq!(local.fallbacks(), 3);

    let closed = unreachable(Unavailable::FailClosed);
    assert!(closed.acquire(&charges, 0).await.is_err());
    let open = unreachable(Unavailable::FailOpen);
    for _ in 0..3 {
        assert!(admitted(&open.acquire(&charges, 0).await.unwrap()));
    }
    assert_eq!((closed.fallbacks(), open.fallbacks()), (1, 3));
}

async fn futures_like(state: &RedisRateState, charges: &[Charge], n: usize) -> Vec<bool> {
    let mut out = Vec::new();
    for i in 0..n {
        let now = u64::try_from(i).unwrap();
        out.push(admitted(&state.acquire(charges, now).await.unwrap()));
    }
    out
}

#[test]
fn bad_configuration_names_the_value() {
    let bad = RedisRateState::new("http://x").unwrap_err();
    assert!(bad.to_string().contains("\"http://x\""), "{bad}");
    let secret = RedisRateState::new("mysql://user:hunter2@host").unwrap_err();
    assert!(!secret.to_string().contains("hunter2"), "{secret}");
    let prefix = RedisRateState::new("redis://127.0.0.1")
        .unwrap()
        .prefix("a{b}")
        .unwrap_err();
    assert!(prefix.to_string().contains("\"a{b}\""), "{prefix}");
}

#[tokio::test]
async fn redis_gone_then_back_falls_back_then_shares_again() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let target = url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut proxy = Proxy::start(&target).await;
    let state = RedisRateState::new(&format!("redis://{}", proxy.addr()))
        .unwrap()
        .prefix(&prefix.name)
        .unwrap()
        .timeout(Duration::from_millis(300));
    let witness = prefix.state();
    let charges = [charge(0, token(), 10, 4)];

    // Shared: one request through the proxy, one direct, on one bucket.
    assert!(admitted(&state.acquire(&charges, 0).await.unwrap()));
    assert!(admitted(&witness.acquire(&charges, 0).await.unwrap()));
    assert_eq!(state.fallbacks(), 0);

    // Gone: decided locally (its own burst of 4), and counted.
    proxy.cut();
    let mut local = 0;
    for _ in 0..5 {
        if admitted(&state.acquire(&charges, 0).await.unwrap()) {
            local += 1;
        }
    }
    assert_eq!(local, 4, "the local state's own burst");
    assert!(state.fallbacks() >= 5, "{}", state.fallbacks());

    // Back: the shared bucket decides again (2 of 4 were spent there).
    proxy.restore().await;
    let mut shared = Vec::new();
    for _ in 0..40 {
        let before = state.fallbacks();
        let answer = state.acquire(&charges, 0).await.unwrap();
        if state.fallbacks() == before {
            shared.push(admitted(&answer));
            if shared.len() == 3 {
                break;
            }
        } else {
            // Still reconnecting.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(shared, [true, true, false], "two left in the shared bucket");
    prefix.clean().await;
}
