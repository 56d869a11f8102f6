//! A verifying cache in front of any token store.
//!
//! [`CachedStore::verify`] answers most requests from memory and goes to the
//! store only on a miss, with these guarantees:
//!
//! - **Expiry and revocation are checked on every hit**, against the
//!   injected [`Clock`](tokengate_core::Clock); correctness never depends on when
//!   anything is evicted.
//! - **An entry lives at most `ttl` from its insertion** (never refreshed by
//!   reads) and never past its token's expiry. `ttl` is the bound within
//!   which a revocation made elsewhere, with no event fed in, takes effect.
//! - **Single flight**: concurrent misses for one hash make one store call.
//! - **A refill racing a revocation loses**: an invalidation bumps an epoch
//!   under the same lock that guards inserts, so a lookup that started before
//!   the invalidation cannot put its stale answer into the cache, and a
//!   request arriving after it does not join the stale lookup.
//! - **Store errors are never cached**: the next request asks again.
//! - **Unknown hashes are cached negatively**, in a separately bounded cache,
//!   so a flood of random well-formed tokens costs one store lookup each and
//!   cannot grow memory beyond that bound.
//! - **Bounded**: at most `max_entries` known tokens (CLOCK eviction: tokens
//!   read since the last sweep are kept) and `max_negative_entries` unknown
//!   hashes (moka, whose frequency-based admission keeps a flood of random
//!   hashes from displacing the ones seen repeatedly).
//!
//! Known tokens live in a purpose-built table (see `table.rs`): a hit is
//! one shard read lock, one probe and an `Arc` clone, with no per-entry
//! allocation and no read bookkeeping beyond one bit.
//!
//! Revocations made through this cache (it implements
//! [`TokenAdmin`]) take effect on the very next request. Revocations made
//! by another process reach it through [`CachedStore::apply`], e.g. from the
//! SQLite store's change feed.
//!
//! # Example
//!
//! ```
//! use tokengate_cache::{CacheConfig, CachedStore, VerifyError};
//! use tokengate_core::{InvalidReason, KeyId, Pepper, TokenHasher};
//! use tokengate_store::{Lifecycle, MemoryStore, TokenSpec};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
//! let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
//! let spec = TokenSpec::new("deploy-bot", "team-a")
//!     .scopes(["notes:read".parse()?])
//!     .audiences(["notes".parse()?]);
//! let issued = lifecycle.issue(spec).await?;
//!
//! // The request path: parse (no store work), hash, verify through the cache.
//! let token = lifecycle.format().parse(issued.token.expose_secret())?;
//! let principal = cache.verify(&hasher.hash(&token)).await?;
//! assert_eq!(principal.subject(), "team-a");
//!
//! // Revocation through the cache takes effect on the next request.
//! lifecycle.revoke(principal.token_id()).await?;
//! let refused = cache.verify(&hasher.hash(&token)).await.unwrap_err();
//! assert!(matches!(refused, VerifyError::Invalid(InvalidReason::Revoked)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (stores, principals, denials), `hashbrown` (the raw
//! `HashTable` under the known-token table, indexed by the HMAC's own
//! bytes), `moka` (the bounded negative cache, for its frequency-based
//! admission), `tokio` (`sync` only: the single-flight cell) and
//! `thiserror` (error types).

mod config;
mod store;
mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Histogram, counter, histogram};
use moka::sync::Cache;
use tokengate_core::metric_names::{CACHE_LOOKUPS, STORE_ERRORS, STORE_LOOKUP_DURATION};
use tokio::sync::OnceCell;

pub use config::CacheConfig;

/// Nanoseconds since the Unix epoch (0 before it, saturating).
fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

use tokengate_core::Taken;
use tokengate_core::{
    Denial, Grants, InvalidReason, Principal, ScopeSet, SharedClock, SystemClock, TokenHash,
    TokenId, TokenRecord, UseSpend,
};
use tokengate_store::{FeedConsumer, FeedEvent, StoreError, TokenAdmin, TokenQuery, TokenStore};

use table::Table;

/// Why [`CachedStore::verify`] did not yield a principal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is unknown, expired or revoked.
    #[error("token invalid: {}", .0.as_str())]
    Invalid(InvalidReason),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VerifyError {
    /// The denial this error calls for: 401 for invalid tokens, 503 for
    /// store failures.
    pub fn to_denial(&self) -> Denial {
        match self {
            Self::Invalid(reason) => Denial::InvalidToken(*reason),
            Self::Store(_) => Denial::StoreUnavailable,
        }
    }
}

/// A store with a verifying cache in front. Clones share the cache.
pub struct CachedStore<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    store: S,
    clock: SharedClock,
    config: CacheConfig,
    positive: Table<Entry>,
    /// One copy of each distinct grant among cached principals.
    grants: Grants,
    /// Unknown hashes, with when they were found unknown (nanoseconds since
    /// the Unix epoch on the cache's clock).
    negative: Cache<TokenHash, u64>,
    /// Bumped by every invalidation, under `flights`' lock.
    epoch: AtomicU64,
    flights: Mutex<HashMap<TokenHash, Flight>>,
    metrics: CacheMetrics,
    /// Bumped whenever the store's feed says its peppers changed.
    peppers: tokio::sync::watch::Sender<u64>,
}

/// The cache's metric handles, registered once (see
/// `tokengate_core::metric_names`).
struct CacheMetrics {
    hit: Counter,
    negative_hit: Counter,
    miss: Counter,
    joined: Counter,
    lookup: Histogram,
    errors: Counter,
    _timeouts: Counter,
}

impl CacheMetrics {
    fn new() -> Self {
        let lookups = |result: &'static str| counter!(CACHE_LOOKUPS, "result" => result);
        Self {
            hit: lookups("hit"),
            negative_hit: lookups("negative_hit"),
            miss: lookups("miss"),
            joined: lookups("joined"),
            lookup: histogram!(STORE_LOOKUP_DURATION),
            errors: counter!(STORE_ERRORS, "kind" => "error"),
            // Registered here so the series exists (at 0) before the
            // first timeout; the authenticate layer counts them.
            _timeouts: counter!(STORE_ERRORS, "kind" => "timeout"),
        }
    }

    /// Counts an answer of the caches.
    #[inline]
    fn answered(&self, loaded: &Loaded) {
        match loaded {
            Loaded::Found(_) => self.hit.increment(1),
            Loaded::Missing => self.negative_hit.increment(1),
        }
    }
}

#[derive(Clone)]
struct Entry {
    principal: Principal,
    revoked: bool,
    disabled: bool,
}

#[derive(Clone)]
enum Loaded {
    Found(Entry),
    Missing,
}

type Cell = Arc<OnceCell<Result<Loaded, StoreError>>>;

struct Flight {
    epoch: u64,
    cell: Cell,
}

enum Join {
    Cached(Loaded),
    Flight(u64, Cell),
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Entry {
    fn judge(&self, now: SystemTime) -> Result<Principal, VerifyError> {
        if self.revoked {
            return Err(VerifyError::Invalid(InvalidReason::Revoked));
        }
        if self.disabled {
            return Err(VerifyError::Invalid(InvalidReason::Disabled));
        }
        if self.principal.expires_at().is_some_and(|at| at <= now) {
            return Err(VerifyError::Invalid(InvalidReason::Expired));
        }
        Ok(self.principal.clone())
    }
}

/// Whether something inserted at `at` is still within `ttl` at `now`
/// (both in nanoseconds since the Unix epoch). A clock that went backwards
/// past the insertion makes the entry stale.
fn fresh(at: u64, ttl: Duration, now: u64) -> bool {
    now.checked_sub(at)
        .is_some_and(|age| u128::from(age) < ttl.as_nanos())
}

impl<S: TokenStore> CachedStore<S> {
    /// A cache with `config` in front of `store`, on the system clock.
    pub fn new(store: S, config: CacheConfig) -> Self {
        Self::with_clock(store, config, SystemClock::shared())
    }

    /// A cache with `config` in front of `store`, reading time from `clock`.
    pub fn with_clock(store: S, config: CacheConfig, clock: SharedClock) -> Self {
        let positive = Table::new(config.max_entries);
        let negative = Cache::builder()
            .max_capacity(config.max_negative_entries)
            .time_to_live(config.negative_ttl)
            .build();
        Self {
            shared: Arc::new(Shared {
                store,
                clock,
                config,
                positive,
                grants: Grants::new(),
                negative,
                epoch: AtomicU64::new(0),
                flights: Mutex::new(HashMap::new()),
                metrics: CacheMetrics::new(),
                peppers: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The principal of the token with `hash`, if it is known, unexpired and
    /// unrevoked now.
    pub async fn verify(&self, hash: &TokenHash) -> Result<Principal, VerifyError> {
        let now = self.shared.clock.now();
        let loaded = match self.cached(hash, now) {
            Some(loaded) => {
                self.shared.metrics.answered(&loaded);
                loaded
            }
            None => self.load(hash, now).await?,
        };
        match loaded {
            Loaded::Found(entry) => entry.judge(self.shared.clock.now()),
            Loaded::Missing => Err(VerifyError::Invalid(InvalidReason::Unknown)),
        }
    }

    /// The cache's verdict on `hash` without awaiting: `Some` on a hit
    /// (valid, expired, revoked or known-unknown), `None` when only the store
    /// can tell and [`CachedStore::verify`] must be awaited. Lets a layer
    /// answer hits with no allocation and no future.
    pub fn verify_cached(&self, hash: &TokenHash) -> Option<Result<Principal, VerifyError>> {
        let now = self.shared.clock.now();
        let loaded = self.cached(hash, now)?;
        self.shared.metrics.answered(&loaded);
        Some(match loaded {
            Loaded::Found(entry) => entry.judge(now),
            Loaded::Missing => Err(VerifyError::Invalid(InvalidReason::Unknown)),
        })
    }

    /// What the caches know about `hash` at `now`, if anything fresh.
    fn cached(&self, hash: &TokenHash, now: SystemTime) -> Option<Loaded> {
        let shared = &*self.shared;
        let (ttl, now) = (shared.config.ttl, to_nanos(now));
        if let Some(found) = shared.positive.get(hash, |slot| {
            fresh(slot.inserted_at, ttl, now).then(|| slot.value.clone())
        }) {
            return found.map(Loaded::Found);
        }
        let at = shared.negative.get(hash)?;
        fresh(at, shared.config.negative_ttl, now).then_some(Loaded::Missing)
    }

    async fn load(&self, hash: &TokenHash, now: SystemTime) -> Result<Loaded, StoreError> {
        let (epoch, cell) = match self.join_flight(hash, now) {
            Join::Cached(loaded) => return Ok(loaded),
            Join::Flight(epoch, cell) => (epoch, cell),
        };
        let _landing = Landing {
            flights: &self.shared.flights,
            hash: *hash,
            cell: &cell,
        };
        cell.get_or_init(|| self.fetch(*hash, epoch)).await.clone()
    }

    /// Joins the lookup in flight for `hash`, or starts one. A lookup that
    /// began before the latest invalidation is never joined. The caches are
    /// checked again under the lock, since a lookup that just landed has
    /// filled them: without this, a request that missed just before the
    /// landing would start a second store call.
    fn join_flight(&self, hash: &TokenHash, now: SystemTime) -> Join {
        let mut flights = lock(&self.shared.flights);
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let metrics = &self.shared.metrics;
        if let Some(flight) = flights.get(hash).filter(|f| f.epoch == epoch) {
            metrics.joined.increment(1);
            return Join::Flight(epoch, Arc::clone(&flight.cell));
        }
        if let Some(loaded) = self.cached(hash, now) {
            metrics.answered(&loaded);
            return Join::Cached(loaded);
        }
        metrics.miss.increment(1);
        let cell = Cell::default();
        flights.insert(
            *hash,
            Flight {
                epoch,
                cell: Arc::clone(&cell),
            },
        );
        Join::Flight(epoch, cell)
    }

    /// Asks the store, then caches the answer unless an invalidation happened
    /// since the lookup began.
    async fn fetch(&self, hash: TokenHash, epoch: u64) -> Result<Loaded, StoreError> {
        let shared = &*self.shared;
        let started = Instant::now();
        let found = shared.store.find_by_hash(&hash).await;
        shared.metrics.lookup.record(started.elapsed());
        tracing::debug!(
            target: "tokengate",
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ok = found.is_ok(),
            "token store lookup on a cache miss"
        );
        let record = found.inspect_err(|_| shared.metrics.errors.increment(1))?;
        let now = shared.clock.now();
        let loaded = match record {
            Some(record) if record.hash == hash => Loaded::Found(Entry {
                principal: Principal::from_record_in(&record, &shared.grants),
                revoked: record.revoked_at.is_some(),
                disabled: record.disabled_at.is_some(),
            }),
            _ => Loaded::Missing,
        };
        let _flights = lock(&shared.flights);
        if shared.epoch.load(Ordering::SeqCst) == epoch {
            let (ttl, at) = (shared.config.ttl, to_nanos(now));
            match &loaded {
                // A full shard reuses spent slots first: past the TTL, or
                // their token has expired.
                Loaded::Found(entry) => shared.positive.insert(hash, entry.clone(), at, |slot| {
                    !fresh(slot.inserted_at, ttl, at)
                        || slot
                            .value
                            .principal
                            .expires_at()
                            .is_some_and(|exp| exp <= now)
                }),
                Loaded::Missing => shared.negative.insert(hash, at),
            }
        }
        Ok(loaded)
    }
}

impl<S> CachedStore<S> {
    /// Forgets `hash`: the next request with that token asks the store.
    pub fn invalidate(&self, hash: &TokenHash) {
        let shared = &*self.shared;
        let _flights = lock(&shared.flights);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.positive.remove(hash);
        shared.negative.invalidate(hash);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        let shared = &*self.shared;
        let _flights = lock(&shared.flights);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.positive.clear();
        shared.negative.invalidate_all();
    }

    /// The store's peppers changed (a rotation or a retirement, by any
    /// process; the change feed says so): forgets everything, since an
    /// answer may have come under a pepper that is now retired, and tells
    /// every [`pepper_changes`](Self::pepper_changes) receiver, so the
    /// server can load its peppers again.
    fn peppers_changed(&self) {
        self.invalidate_all();
        self.shared.peppers.send_modify(|seen| *seen += 1);
    }

    /// Changes each time the store's feed says its peppers changed (a
    /// rotation or a retirement, by any process).
    pub fn pepper_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.peppers.subscribe()
    }

    /// Entry counts, after the negative cache's pending maintenance has run
    /// (for metrics and tests; not for the request path).
    pub fn stats(&self) -> CacheStats {
        let shared = &*self.shared;
        shared.negative.run_pending_tasks();
        CacheStats {
            entries: u64::try_from(shared.positive.len()).unwrap_or(u64::MAX),
            negative_entries: shared.negative.entry_count(),
        }
    }
}

impl<S: TokenAdmin> CachedStore<S> {
    /// Forgets the token with `id`, looking its hash up in the store. If the
    /// store cannot answer, forgets everything rather than risk keeping a
    /// revoked token, and reports the error.
    pub async fn invalidate_id(&self, id: &TokenId) -> Result<(), StoreError> {
        match self.shared.store.get(id).await {
            Ok(Some(record)) => self.invalidate(&record.hash),
            Ok(None) => {}
            Err(error) => {
                self.invalidate_all();
                return Err(error);
            }
        }
        Ok(())
    }
}

/// How many entries a [`CachedStore`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Known tokens (valid, expired or revoked).
    pub entries: u64,
    /// Hashes known to be unknown.
    pub negative_entries: u64,
}

/// Removes a flight from the table when its lookup ends or is cancelled, so
/// abandoned lookups never accumulate.
struct Landing<'a> {
    flights: &'a Mutex<HashMap<TokenHash, Flight>>,
    hash: TokenHash,
    cell: &'a Cell,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        if flights
            .get(&self.hash)
            .is_some_and(|f| Arc::ptr_eq(&f.cell, self.cell))
        {
            flights.remove(&self.hash);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

/// The cache follows its store's change feed: a token's event forgets what
/// it holds for that hash; a pepper event, or a feed that may have missed
/// events, forgets everything.
impl<S: Send + Sync + 'static> FeedConsumer for CachedStore<S> {
    fn apply(&self, event: &FeedEvent) {
        match event {
            FeedEvent::Token { hash, .. } => self.invalidate(hash),
            FeedEvent::Peppers => self.peppers_changed(),
            // A kind of event this build does not know: forget everything
            // rather than keep serving what it may have changed.
            _ => self.invalidate_all(),
        }
    }

    fn flush(&self) {
        self.invalidate_all();
    }
}
