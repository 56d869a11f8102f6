use std::time::Duration;

/// Sizes and lifetimes of a [`CachedStore`](super::CachedStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub(super) ttl: Duration,
    pub(super) max_entries: u64,
    pub(super) negative_ttl: Duration,
    pub(super) max_negative_entries: u64,
}

impl Default for CacheConfig {
    /// 30 s per entry, 100,000 entries; 30 s and 100,000 entries for
    /// unknown hashes.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_entries: 100_000,
            negative_ttl: Duration::from_secs(30),
            max_negative_entries: 100_000,
        }
    }
}

impl CacheConfig {
    /// How long an entry may serve from its insertion: the bound on how
    /// late a revocation made elsewhere, without an event, takes effect.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most tokens kept.
    pub fn max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// How long "no such token" is remembered.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The most unknown hashes remembered.
    pub fn max_negative_entries(mut self, max: u64) -> Self {
        self.max_negative_entries = max;
        self
    }

    /// The configured entry lifetime.
    pub fn entry_ttl(&self) -> Duration {
        self.ttl
    }
}
