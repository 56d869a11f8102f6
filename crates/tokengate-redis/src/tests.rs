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

use tokengate_store::SharedReplay;
use tokengate_store::testing::Proxy;

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
        fallback: None,
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
            fallback: None,
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
    let mut remaining = Vec::new();
    for task in tasks {
        if let Outcome::Admitted {
            tightest: Some((0, left, _)),
            ..
        } = task.await.unwrap()
        {
            remaining.push(left);
        }
    }
    // Each admitted request saw the bucket as the one before it left it,
    // also when several were decided in one call.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..16).collect::<Vec<u32>>());
    assert!(state.round_trips() < 64, "{}", state.round_trips());
    prefix.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_calls_and_decide_as_one_at_a_time() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let (a, b) = (prefix.state(), prefix.state());
    // Every request is also charged to one owner with a burst of 30. 40
    // requests of a token with a burst of 5 and 20 of a roomy token: 5 +
    // 20 admitted, and the 35 refused spend nothing of the owner's.
    let owner = charge(1, RateKey::Owner(Arc::from("team-b")), 1, 30);
    let tight = Arc::new([charge(0, token(), 1, 5), owner.clone()]);
    let roomy = Arc::new([charge(0, token(), 1, 100), owner.clone()]);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let state = if i % 2 == 0 { a.clone() } else { b.clone() };
        let charges = if i % 3 == 0 {
            Arc::clone(&roomy)
        } else {
            Arc::clone(&tight)
        };
        tasks.push(tokio::spawn(async move {
            (i % 3 == 0, state.acquire(&*charges, 0).await.unwrap())
        }));
    }
    let (mut tight_admitted, mut roomy_admitted) = (0, 0);
    for task in tasks {
        let (is_roomy, outcome) = task.await.unwrap();
        match (is_roomy, admitted(&outcome)) {
            (true, true) => roomy_admitted += 1,
            (false, true) => tight_admitted += 1,
            (true, false) => panic!("a roomy request was refused: {outcome:?}"),
            (false, false) => assert!(
                matches!(outcome, Outcome::Refused { charge: 0, .. }),
                "refused by the token's limiter: {outcome:?}"
            ),
        }
    }
    assert_eq!((tight_admitted, roomy_admitted), (5, 20));
    // The owner has exactly 30 - 25 = 5 left.
    let owner_only = [owner];
    let answers = futures_like(&a, &owner_only, 6).await;
    assert_eq!(answers, [true, true, true, true, true, false]);
    let calls = a.round_trips() + b.round_trips();
    assert!(
        calls < 66,
        "66 requests took {calls} calls: none shared one"
    );
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
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

fn use_key(token: &TokenId, generation: u64, window: u64) -> tokengate_store::UseKey {
    tokengate_store::UseKey {
        token: token.clone(),
        generation,
        window,
    }
}

#[tokio::test]
async fn a_lease_is_spent_one_use_at_a_time_and_only_under_its_own_key() {
    use tokengate_store::{LeaseSpend, SharedUses};
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let uses = prefix.state().uses().lease(8);
    assert_eq!(uses.lease_size(), 8);
    let token = TokenId::generate();
    let key = use_key(&token, 0, 0);
    assert_eq!(
        uses.spend(&key, Duration::from_secs(60)).await.unwrap(),
        LeaseSpend::Empty
    );
    uses.grant(&key, 2, 10, Duration::from_secs(60))
        .await
        .unwrap();
    // Another instance leased later, when the store had less left.
    uses.grant(&key, 1, 7, Duration::from_secs(60))
        .await
        .unwrap();
    let mut told = Vec::new();
    for _ in 0..3 {
        told.push(uses.spend(&key, Duration::from_secs(60)).await.unwrap());
    }
    assert_eq!(
        told,
        [2, 1, 0].map(|n| LeaseSpend::Spent { left: n + 7 }),
        "the lease's count plus the store's lowest"
    );
    assert_eq!(
        uses.spend(&key, Duration::from_secs(60)).await.unwrap(),
        LeaseSpend::Empty
    );

    // Another generation or window is another lease.
    uses.grant(&key, 5, 0, Duration::from_secs(60))
        .await
        .unwrap();
    for other in [use_key(&token, 1, 0), use_key(&token, 0, 3_600_000)] {
        assert_eq!(
            uses.spend(&other, Duration::from_secs(60)).await.unwrap(),
            LeaseSpend::Empty
        );
    }
    // The spends on empty leases counted themselves as refillers (beside
    // each lease, for 10 s); the one lease is ours.
    let keys = prefix.keys().await;
    let (refilling, leases): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| k.ends_with(":refilling"));
    assert_eq!(refilling.len(), 3, "{refilling:?}");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(
        leases[0].ends_with(&format!(":uses:{token}:0:0")),
        "{leases:?}"
    );
    let keys = leases;
    let mut connection = connection.clone();
    let pending: i64 = connection.pttl(&refilling[0]).await.unwrap();
    assert!(pending > 0 && pending <= 10_000, "{pending}");
    let ttl: i64 = connection.pttl(&keys[0]).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "kept for the given time: {ttl}");
    prefix.clean().await;
}

#[tokio::test]
async fn concurrent_spends_take_each_leased_use_once() {
    use tokengate_store::{LeaseSpend, SharedUses};
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let uses = Arc::new(prefix.state().uses());
    let key = use_key(&TokenId::generate(), 0, 0);
    uses.grant(&key, 10, 0, Duration::from_secs(60))
        .await
        .unwrap();
    let spends: Vec<_> = (0..64)
        .map(|_| {
            let (uses, key) = (Arc::clone(&uses), key.clone());
            tokio::spawn(async move { uses.spend(&key, Duration::from_secs(60)).await.unwrap() })
        })
        .collect();
    let mut spent = 0;
    for spend in spends {
        if matches!(spend.await.unwrap(), LeaseSpend::Spent { .. }) {
            spent += 1;
        }
    }
    assert_eq!(spent, 10);
    prefix.clean().await;
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_within_the_timeout() {
    use tokengate_store::SharedUses;
    // Nothing listens on port 1.
    let uses = RedisRateState::new("redis://127.0.0.1:1")
        .unwrap()
        .timeout(Duration::from_millis(200))
        .uses();
    let started = std::time::Instant::now();
    assert!(
        uses.spend(&use_key(&TokenId::generate(), 0, 0), Duration::from_secs(1))
            .await
            .is_err()
    );
    assert!(
        uses.grant(
            &use_key(&TokenId::generate(), 0, 0),
            1,
            0,
            Duration::from_secs(1)
        )
        .await
        .is_err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_refiller_that_found_the_store_empty_waits_for_refills_in_flight() {
    use tokengate_store::{LeaseSpend, SharedUses};
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let uses = prefix.state().uses();
    let key = use_key(&TokenId::generate(), 0, 0);
    let keep = Duration::from_secs(60);
    // Two requests find the lease empty: two refillers.
    assert_eq!(uses.spend(&key, keep).await.unwrap(), LeaseSpend::Empty);
    assert_eq!(uses.spend(&key, keep).await.unwrap(), LeaseSpend::Empty);
    // The second found the store empty: the first is still refilling.
    assert_eq!(uses.settle(&key, true).await.unwrap(), LeaseSpend::Pending);
    assert_eq!(uses.settle(&key, false).await.unwrap(), LeaseSpend::Pending);
    // The first grants what it took: the second gets one of those.
    uses.grant(&key, 2, 0, keep).await.unwrap();
    assert_eq!(
        uses.settle(&key, false).await.unwrap(),
        LeaseSpend::Spent { left: 1 }
    );
    assert_eq!(
        uses.spend(&key, keep).await.unwrap(),
        LeaseSpend::Spent { left: 0 }
    );
    // Nothing in flight, nothing leased: none left anywhere.
    assert_eq!(uses.spend(&key, keep).await.unwrap(), LeaseSpend::Empty);
    assert_eq!(uses.settle(&key, true).await.unwrap(), LeaseSpend::Empty);
    prefix.clean().await;
}

#[tokio::test]
async fn a_dpop_proof_is_first_once_across_instances_and_its_key_expires() {
    let Some(connection) = redis().await else {
        return;
    };
    let prefix = Prefix::new(&connection);
    let (a, b) = (prefix.state().replay(), prefix.state().replay());
    let key = [7u8; 16];
    let keep = Duration::from_millis(300);
    assert!(
        a.first_use(key, keep).await.unwrap(),
        "first at one instance"
    );
    assert!(
        !b.first_use(key, keep).await.unwrap(),
        "a replay at another"
    );
    assert!(!a.first_use(key, keep).await.unwrap());
    assert!(b.first_use([8; 16], keep).await.unwrap(), "another proof");
    let keys = prefix.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains(":dpop:")), "{keys:?}");
    // Kept as long as asked, then gone.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(prefix.keys().await.is_empty());
    assert!(a.first_use(key, keep).await.unwrap());
    prefix.clean().await;
}

#[tokio::test]
async fn an_unreachable_replay_record_is_an_error() {
    let state = unreachable(Unavailable::Local);
    let answer = state
        .replay()
        .first_use([1; 16], Duration::from_secs(1))
        .await;
    assert!(answer.unwrap_err().to_string().contains("unavailable"));
}
