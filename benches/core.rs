//! Core costs on the request path, each beside its baseline in the same run:
//!
//! - token parse + checksum, HMAC-SHA256 of a token, beside a raw SHA-256;
//! - a cache-hit `verify` with 1k, 100k and 1M records cached, beside a
//!   `HashMap` lookup over the same number of entries;
//! - a cache hit on the request path (`verify_cached`, what the
//!   authenticate layer calls) in front of `AnyStore` (the deployment's
//!   store of either kind) beside the same cache in front of the SQLite
//!   store it holds: what a hit pays for the choice of store.
//!
//! Run: `cargo bench --bench core`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use tokengate_cache::{CacheConfig, CachedStore};
use tokengate_core::{KeyId, Pepper, TokenFormat, TokenHash, TokenHasher, TokenRecord};
use tokengate_store::{MemoryStore, TokenAdmin};
use tokengate_tests::ready_now;

fn tokens(c: &mut Criterion) {
    let format = TokenFormat::default();
    let token = format.generate();
    let text = token.expose_secret().to_owned();
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let mut group = c.benchmark_group("token");
    group.bench_function("baseline_sha256", |b| {
        b.iter(|| Sha256::digest(black_box(text.as_bytes())));
    });
    group.bench_function("parse_and_checksum", |b| {
        b.iter(|| format.parse(black_box(&text)).unwrap());
    });
    group.bench_function("hmac_sha256", |b| b.iter(|| hasher.hash(black_box(&token))));
    group.finish();
}

/// A cached-token record numbered `i`: its hash is SHA-256 of `i`, so the
/// benches can look it up without issuing a token.
fn record(i: u64) -> TokenRecord {
    let mut record =
        tokengate_store::testing::record(&format!("owner-{}", i % 1000), "notes:read notes:write");
    record.hash = TokenHash::from_parts(KeyId::new(1), Sha256::digest(i.to_le_bytes()).into());
    record.expires_at = Some(SystemTime::now() + Duration::from_secs(86_400));
    record
}

fn cache_hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("cache_hit");
    for n in [1_000u64, 100_000, 1_000_000] {
        let store = MemoryStore::new();
        let records: Vec<TokenRecord> = (0..n).map(record).collect();
        let hashes: Vec<TokenHash> = records.iter().map(|r| r.hash).collect();
        let map: HashMap<TokenHash, Arc<TokenRecord>> = records
            .iter()
            .map(|r| (r.hash, Arc::new(r.clone())))
            .collect();
        runtime.block_on(async {
            for r in records {
                store.insert(r).await.unwrap();
            }
        });
        let config = CacheConfig::default()
            .max_entries(n + 1)
            .ttl(Duration::from_secs(3600));
        let cache = CachedStore::new(store, config);
        runtime.block_on(async {
            for h in &hashes {
                cache.verify(h).await.unwrap();
            }
        });
        assert_eq!(cache.stats().entries, n, "every record must be cached");

        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("baseline_hashmap", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % hashes.len();
                black_box(map.get(&hashes[i]).unwrap());
            });
        });
        group.bench_with_input(BenchmarkId::new("verify", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % hashes.len();
                black_box(ready_now(cache.verify(&hashes[i])).unwrap());
            });
        });
    }
    group.finish();
}

fn any_store_hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tokengate_tests::process::temp_dir("bench-any-store");
    let store = tokengate::sqlite::SqliteStore::create(&dir.join("tokens.db")).unwrap();
    let n = 1_000u64;
    let hashes: Vec<TokenHash> = runtime.block_on(async {
        let mut hashes = Vec::new();
        for r in (0..n).map(record) {
            hashes.push(r.hash);
            store.insert(r).await.unwrap();
        }
        hashes
    });
    let config = CacheConfig::default()
        .max_entries(n + 1)
        .ttl(Duration::from_secs(3600));
    let sqlite = CachedStore::new(store.clone(), config.clone());
    let any = CachedStore::new(tokengate::deployment::AnyStore::Sqlite(store), config);
    runtime.block_on(async {
        for h in &hashes {
            sqlite.verify(h).await.unwrap();
            any.verify(h).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("any_store_hit");
    let mut i = 0usize;
    group.bench_function("baseline_sqlite_store", |b| {
        b.iter(|| {
            i = (i + 7919) % hashes.len();
            black_box(sqlite.verify_cached(&hashes[i]).unwrap().unwrap());
        });
    });
    group.bench_function("any_store", |b| {
        b.iter(|| {
            i = (i + 7919) % hashes.len();
            black_box(any.verify_cached(&hashes[i]).unwrap().unwrap());
        });
    });
    group.finish();
}

criterion_group!(benches, tokens, cache_hits, any_store_hits);
criterion_main!(benches);
