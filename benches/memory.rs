//! Bytes per cached token and per rate-limiter key at 1M entries: the
//! growth of the process's resident set (`VmRSS`, which includes allocator
//! overhead, as a deployment pays it) while each structure is filled,
//! divided by the entry count. Prints one line per structure.
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
use tokengate::{
    CacheConfig, CachedStore, KeyId, MemoryStore, RateQuota, TokenAdmin, TokenHash, TokenRecord,
};
use tokengate_rate::gcra::Gcra;
use tokengate_rate::{Check, MemoryRateState, RateKey};

const ENTRIES: u32 = 1_000_000;

/// Resident set size in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A cached-token record numbered `i`: its hash is SHA-256 of `i`, so the
/// benches can look it up without issuing a token.
fn record(i: u64) -> TokenRecord {
    let mut record =
        tokengate_core::testing::record(&format!("owner-{}", i % 1000), "notes:read notes:write");
    record.hash = TokenHash::from_parts(KeyId::new(1), Sha256::digest(i.to_le_bytes()).into());
    record.expires_at = Some(SystemTime::now() + Duration::from_secs(86_400));
    record
}

fn main() {
    // Criterion's harness flags (`--bench`) are accepted and ignored.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // The store's own records are the baseline: they are not the cache's cost.
    let store = MemoryStore::new();
    runtime.block_on(async {
        for i in 0..ENTRIES {
            store.insert(record(u64::from(i))).await.unwrap();
        }
    });
    let hashes: Vec<TokenHash> = (0..ENTRIES)
        .map(|i| {
            TokenHash::from_parts(
                KeyId::new(1),
                Sha256::digest(u64::from(i).to_le_bytes()).into(),
            )
        })
        .collect();
    let cache = CachedStore::new(
        store,
        CacheConfig::default()
            .max_entries(u64::from(ENTRIES) + 16)
            .ttl(Duration::from_secs(3600)),
    );
    let before = rss();
    runtime.block_on(async {
        for hash in &hashes {
            cache.verify(hash).await.unwrap();
        }
    });
    let entries = cache.stats().entries;
    let cached = rss().saturating_sub(before);
    println!(
        "cached token: {:.0} bytes each ({entries} entries, {} MiB)",
        cached as f64 / entries as f64,
        cached >> 20
    );

    let state = MemoryRateState::new(ENTRIES as usize + 16);
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
            &[Check {
                key: (0, key),
                gcra,
                cost: 1,
            }],
            1_000_000_000,
        );
    }
    let keys = state.len();
    let limiter = rss().saturating_sub(before);
    println!(
        "rate-limiter key: {:.0} bytes each ({keys} keys, {} MiB)",
        limiter as f64 / keys as f64,
        limiter >> 20
    );
    drop(cache);
}
