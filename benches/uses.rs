//! What a usage-limited token costs a Gate request on PostgreSQL: with
//! every use spent in the store (one `UPDATE ... RETURNING` round trip
//! per request), and with uses leased to Redis (`RedisRateState::uses`:
//! one script call per request, one store write per lease), beside an
//! unlimited token on the same Gate and store, in the same run. Needs
//! PostgreSQL and Redis (`TOKENGATE_POSTGRES_URL`, `TOKENGATE_REDIS_URL`);
//! without them it prints a line and measures nothing.
//!
//! Run: `cargo bench --bench uses`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::hint::black_box;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Response;
use tokengate::core::{KeyId, UseLimit};
use tokengate::postgres::PostgresStore;
use tokengate::redis::RedisRateState;
use tokengate::{CacheConfig, CachedStore, Pepper, TokenHasher};
use tokengate_postgres::testing::TestDatabase;

#[path = "support/gate.rs"]
mod gate;
use gate::{gate_over, issue, send};

fn told<B>(response: &Response<B>) -> Option<u64> {
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("token-uses-remaining")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn uses(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(url) = tokengate_tests::redis_url() else {
        eprintln!("uses bench skipped: no Redis");
        return;
    };
    let Some(database) = runtime.block_on(TestDatabase::create()) else {
        eprintln!("uses bench skipped: no PostgreSQL");
        return;
    };
    let prefix = format!("tg-bench-uses-{}", std::process::id());
    let state = RedisRateState::new(&url)
        .unwrap()
        .prefix(&prefix)
        .unwrap()
        .timeout(Duration::from_secs(1));
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let config = CacheConfig::default().ttl(Duration::from_secs(3600));
    let store = runtime
        .block_on(PostgresStore::connect(database.url()))
        .unwrap();
    let cache = CachedStore::new(store, config);
    let billion = Some(UseLimit::new(NonZeroU64::new(1_000_000_000).unwrap()));
    let (unlimited, in_store, leased) = runtime.block_on(async {
        (
            issue(&cache, &hasher, None).await,
            issue(&cache, &hasher, billion).await,
            issue(&cache, &hasher, billion).await,
        )
    });
    let plain = gate_over(cache.clone(), hasher.clone(), None);
    let with_leases = gate_over(cache, hasher, Some(Arc::new(state.uses().lease(64))));
    assert_eq!(told(&send(&runtime, &plain, &unlimited)), None);
    assert_eq!(told(&send(&runtime, &plain, &in_store)), Some(999_999_999));
    assert_eq!(
        told(&send(&runtime, &with_leases, &leased)),
        Some(999_999_999)
    );

    let mut group = c.benchmark_group("uses_postgres");
    group.bench_function("unlimited", |b| {
        b.iter(|| black_box(send(&runtime, &plain, &unlimited)));
    });
    group.bench_function("limited_spent_in_the_store", |b| {
        b.iter(|| black_box(send(&runtime, &plain, &in_store)));
    });
    group.bench_function("limited_leased_to_redis_64", |b| {
        b.iter(|| black_box(send(&runtime, &with_leases, &leased)));
    });
    group.finish();
    // Every measured request spent a use.
    assert!(told(&send(&runtime, &plain, &in_store)).unwrap() < 999_999_000);
    assert!(told(&send(&runtime, &with_leases, &leased)).unwrap() < 999_999_000);
    runtime.block_on(tokengate_tests::remove_redis_keys(&url, &prefix));
    drop(database);
}

criterion_group!(benches, uses);
criterion_main!(benches);
