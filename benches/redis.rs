//! The shared rate state's cost per request, beside its floor: a Redis
//! `PING` on the same kind of connection (one round trip), and beside the
//! in-memory state, in the same run. Needs a Redis at
//! `TOKENGATE_REDIS_URL` (default `redis://127.0.0.1:6379`); without one
//! it prints a line and measures nothing.
//!
//! Run: `cargo bench --bench redis`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::TokenId;
use tokengate::core::RateQuota;
use tokengate::rate::{MemoryRateState, RateKey, RateState};
use tokengate::redis::RedisRateState;
use tokengate_rate::Charge;
use tokengate_rate::gcra::Gcra;

fn redis(c: &mut Criterion) {
    let url =
        std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Ok(mut ping) = runtime.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        redis::aio::ConnectionManager::new(client).await
    }) else {
        eprintln!("redis bench skipped: no Redis at {url}");
        return;
    };
    let prefix = format!("tg-bench-{}", std::process::id());
    let shared = RedisRateState::new(&url)
        .unwrap()
        .prefix(&prefix)
        .unwrap()
        .timeout(Duration::from_secs(1));
    let memory = MemoryRateState::default();
    let roomy = RateQuota::new(NonZeroU32::MAX, Duration::from_secs(1), NonZeroU32::MAX).unwrap();
    let charges = [Charge {
        key: (0, RateKey::Token(TokenId::generate())),
        gcra: Gcra::new(roomy),
        cost: 1,
    }];

    let mut group = c.benchmark_group("redis_rate");
    group.bench_function("ping", |b| {
        b.iter(|| {
            let pong: String = runtime
                .block_on(redis::cmd("PING").query_async(&mut ping))
                .unwrap();
            black_box(pong)
        });
    });
    group.bench_function("redis_rate_state", |b| {
        b.iter(|| black_box(runtime.block_on(shared.acquire(&charges, 0)).unwrap()));
    });
    group.bench_function("memory_rate_state", |b| {
        b.iter(|| black_box(runtime.block_on(memory.acquire(&charges, 0)).unwrap()));
    });
    group.finish();
    assert_eq!(shared.fallbacks(), 0, "every call reached Redis");
    let keys: Vec<String> = runtime
        .block_on(
            redis::cmd("KEYS")
                .arg(format!("{{{prefix}}}:*"))
                .query_async(&mut ping),
        )
        .unwrap();
    if !keys.is_empty() {
        let _: () = runtime
            .block_on(redis::cmd("DEL").arg(keys).query_async(&mut ping))
            .unwrap();
    }
}

criterion_group!(benches, redis);
criterion_main!(benches);
