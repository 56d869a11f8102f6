//! How long the shared rate state's round trips take at the tail, under
//! load: what `RedisRateState`'s default timeout is chosen from. 64
//! concurrent clients charge one key each through a real Redis for 10 s
//! on a multi-thread runtime, while two threads keep every core busy (the
//! machine is loaded as a busy server is); then the latencies' median,
//! 99th, 99.9th percentiles and maximum are printed, and how many calls
//! the default timeout would have sent to the fallback. Needs a Redis at
//! `TOKENGATE_REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! Run: `TAIL_SECONDS=10 cargo bench --bench redis_tail` (`TAIL_SECONDS=N` sets the run's length).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokengate::TokenId;
use tokengate::core::RateQuota;
use tokengate::rate::{RateKey, RateState};
use tokengate::redis::RedisRateState;
use tokengate_rate::Charge;
use tokengate_rate::gcra::Gcra;

fn main() {
    if std::env::args().any(|a| a == "--bench") && std::env::var_os("TAIL_SECONDS").is_none() {
        // `cargo bench` runs every bench: this one only on request.
        println!("redis_tail: run with TAIL_SECONDS=10 cargo bench --bench redis_tail");
        return;
    }
    let seconds: u64 = std::env::var("TAIL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let url =
        std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("tg-tail-{}", std::process::id());
    // Far longer than any round trip: every latency is measured, none cut.
    let state = RedisRateState::new(&url)
        .unwrap()
        .prefix(&prefix)
        .unwrap()
        .timeout(Duration::from_secs(5));
    let roomy = RateQuota::new(NonZeroU32::MAX, Duration::from_secs(1), NonZeroU32::MAX).unwrap();
    let gcra = Gcra::new(roomy);
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(seconds);
    let latencies = runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..64u32 {
            let state = state.clone();
            clients.spawn(async move {
                let charge = Charge {
                    key: (0, RateKey::Token(TokenId::generate())),
                    gcra,
                    cost: 1,
                };
                let mut seen = Vec::new();
                let mut now = u64::from(client);
                while Instant::now() < until {
                    now += 1_000;
                    let started = Instant::now();
                    let _ = state.acquire(std::slice::from_ref(&charge), now).await;
                    seen.push(started.elapsed());
                }
                seen
            });
        }
        let mut all: Vec<Duration> = clients.join_all().await.into_iter().flatten().collect();
        all.sort();
        all
    });
    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    runtime.block_on(tokengate_tests::remove_redis_keys(&url, &prefix));
    // The q-quantile's index, in per-mille (integer arithmetic).
    let at = |per_mille: usize| latencies[(latencies.len() - 1) * per_mille / 1000];
    let over = |limit: Duration| latencies.iter().filter(|l| **l > limit).count();
    println!(
        "redis_tail: {} calls in {seconds} s by 64 clients on a loaded machine: \
         median {:?}, p99 {:?}, p99.9 {:?}, max {:?}; over 25 ms: {}, over 50 ms: {}, over 100 ms: {}",
        latencies.len(),
        at(500),
        at(990),
        at(999),
        latencies[latencies.len() - 1],
        over(Duration::from_millis(25)),
        over(Duration::from_millis(50)),
        over(Duration::from_millis(100)),
    );
}
