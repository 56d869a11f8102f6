//! Bytes per cached token and per rate-limiter key at 1M entries: the
//! growth of the process's resident set (`VmRSS`, which includes allocator
//! overhead, as a deployment pays it) while each structure is filled,
//! divided by the entry count. Prints one line per structure: cached
//! tokens whose owners share grants (1,000 owners) and with a distinct grant
//! per token, and IPv4 limiter keys.
//!
//! Run: `cargo bench --bench memory`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokengate::core::{KeyId, RateQuota, TokenHash};
use tokengate::store::TokenAdmin;
use tokengate::{CacheConfig, CachedStore, MemoryStore, TokenRecord};
use tokengate_rate::gcra::Gcra;
use tokengate_rate::{Charge, MemoryRateState, RateKey};

const ENTRIES: u32 = 1_000_000;

#[path = "support/rss.rs"]
mod rss;
use rss::rss;

/// A cached-token record numbered `i`, owned by one of `owners` owners:
/// its hash is SHA-256 of `i`, so the bench can look it up without
/// issuing a token.
fn record(i: u64, owners: u64) -> TokenRecord {
    let mut record = tokengate_store::testing::record(
        &format!("owner-{}", i % owners),
        "notes:read notes:write",
    );
    record.hash = hash(i);
    record.expires_at = Some(SystemTime::now() + Duration::from_secs(86_400));
    record
}

fn hash(i: u64) -> TokenHash {
    TokenHash::from_parts(KeyId::new(1), Sha256::digest(i.to_le_bytes()).into())
}

/// Prints what each of `entries` entries added to the resident set, given
/// its size `before` they were made.
fn report(what: &str, before: u64, entries: u64) {
    let grown = rss().saturating_sub(before);
    println!(
        "{what}: {:.0} bytes each ({entries} entries, {} MiB)",
        grown as f64 / entries as f64,
        grown >> 20
    );
}

/// Fills a cache with `ENTRIES` tokens of `owners` owners (every owner's
/// tokens share their scopes); prints bytes per entry.
fn cached_token(owners: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // The store's own records are the baseline: they are not the cache's cost.
    let store = MemoryStore::new();
    runtime.block_on(async {
        for i in 0..u64::from(ENTRIES) {
            store.insert(record(i, owners)).await.unwrap();
        }
    });
    let hashes: Vec<TokenHash> = (0..u64::from(ENTRIES)).map(hash).collect();
    let cache = CachedStore::new(
        store,
        CacheConfig::default()
            .max_entries(u64::from(ENTRIES))
            .ttl(Duration::from_secs(3600)),
    );
    let before = rss();
    runtime.block_on(async {
        for hash in &hashes {
            cache.verify(hash).await.unwrap();
        }
    });
    report(
        &format!("cached token, {owners} owners"),
        before,
        cache.stats().entries,
    );
}

/// Fills a limiter with `ENTRIES` IPv4 keys; prints bytes per key.
fn limiter_key() {
    // Room for twice the keys: no shard fills (the keys hash unevenly over
    // the shards), so every key stays and the figure is per key held.
    let state = MemoryRateState::new(2 * ENTRIES as usize);
    let gcra = Gcra::new(
        RateQuota::new(
            std::num::NonZeroU32::MAX,
            Duration::from_secs(1),
            std::num::NonZeroU32::MAX,
        )
        .unwrap(),
    );
    let before = rss();
    for i in 0..ENTRIES {
        let key = RateKey::Ip(IpAddr::from(i.to_be_bytes()));
        state.decide(
            &[Charge {
                key: (0, key),
                gcra,
                cost: 1,
            }],
            1_000_000_000,
        );
    }
    report("rate-limiter key", before, state.len() as u64);
}

/// Each measurement runs in a fresh process (this executable, with
/// `MEMORY_PART` set), so memory freed by one is not reused by the next.
fn main() {
    // Criterion's harness flags (`--bench`) are accepted and ignored.
    match std::env::var("MEMORY_PART").as_deref() {
        Ok("shared") => cached_token(1_000),
        Ok("distinct") => cached_token(u64::from(ENTRIES)),
        Ok("limiter") => limiter_key(),
        _ => {
            let exe = std::env::current_exe().unwrap();
            for part in ["shared", "distinct", "limiter"] {
                let status = std::process::Command::new(&exe)
                    .env("MEMORY_PART", part)
                    .status()
                    .unwrap();
                assert!(status.success(), "{part}: {status}");
            }
        }
    }
}
