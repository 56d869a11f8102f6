//! Test support: the one world the layers' and the integration tests
//! share. A verifying cache in front of a store with probes
//! ([`ProbeStore`]: lookups counted, failed or held on demand), a
//! lifecycle issuing into it, all on one manual clock.

use std::time::Duration;

use tokengate_core::{KeyId, ManualClock, Pepper, Token, TokenHasher, TokenId};
use tokengate_store::testing::ProbeStore;
use tokengate_store::{Lifecycle, TokenSpec};

use crate::{CacheConfig, CachedStore};

/// A cache in front of a probed store, and a lifecycle, on a manual clock.
#[derive(Debug)]
pub struct World {
    /// The store, with its probes.
    pub probe: ProbeStore,
    /// The clock everything reads.
    pub clock: ManualClock,
    /// The verifying cache in front of the store.
    pub cache: CachedStore<ProbeStore>,
    /// Issues, rotates and revokes through the cache.
    pub lifecycle: Lifecycle<CachedStore<ProbeStore>>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// A world with the cache's default configuration.
    pub fn new() -> Self {
        Self::with_config(CacheConfig::default())
    }

    /// A world whose cache has `config`.
    ///
    /// # Panics
    ///
    /// Never: its pepper is a valid literal.
    #[allow(clippy::expect_used, reason = "test support: a fixed, valid pepper")]
    pub fn with_config(config: CacheConfig) -> Self {
        let clock = ManualClock::new();
        let probe = ProbeStore::default();
        let cache = CachedStore::with_clock(probe.clone(), config, clock.shared());
        let pepper = Pepper::new(KeyId::new(1), [7u8; 32]).expect("a 32-byte pepper");
        let lifecycle =
            Lifecycle::new(cache.clone(), TokenHasher::new(pepper)).with_clock(clock.shared());
        Self {
            probe,
            clock,
            cache,
            lifecycle,
        }
    }

    /// The hasher tokens are issued under.
    pub fn hasher(&self) -> &TokenHasher {
        self.lifecycle.hasher()
    }

    /// A token for `alice`, audience `notes`, with `scopes` (space-separated).
    ///
    /// # Panics
    ///
    /// If a scope does not parse (a bug in the test).
    #[allow(
        clippy::expect_used,
        reason = "test support: a bad literal is a bug in the test"
    )]
    pub fn spec(&self, scopes: &str) -> TokenSpec {
        TokenSpec::new("test", "alice")
            .scopes(
                scopes
                    .split_whitespace()
                    .map(|s| s.parse().expect("a valid scope")),
            )
            .audiences(["notes".parse().expect("a valid audience")])
    }

    /// Issues `spec`: the token and its id.
    ///
    /// # Panics
    ///
    /// If the lifecycle refuses it (a bug in the test).
    #[allow(
        clippy::expect_used,
        reason = "test support: a refused spec is a bug in the test"
    )]
    pub async fn issue_spec(&self, spec: TokenSpec) -> (Token, TokenId) {
        let issued = self.lifecycle.issue(spec).await.expect("issued");
        (issued.token, issued.record.id)
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}
