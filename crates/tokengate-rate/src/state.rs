//! Where rate state lives: the backend trait and the in-memory backend.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::quality::RandomState;
use hashbrown::HashTable;
use std::time::Duration;

use tokengate_core::{RateFallback, TokenId};

use crate::gcra::{Gcra, GcraAnswer};

/// What a limiter counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateKey {
    /// One token.
    Token(TokenId),
    /// Every token of one owner.
    Owner(Arc<str>),
    /// One client address (before authentication).
    Ip(IpAddr),
    /// A key from a user function.
    Custom(Arc<str>),
}

/// One limiter's question about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The key (qualified by the limiter's index, so two limiters never share state).
    pub key: (u8, RateKey),
    /// The quota.
    pub gcra: Gcra,
    /// The request's cost.
    pub cost: u32,
}

/// The answer for all limiters of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every limiter admitted the request and it was charged to all of them.
    /// `tightest` is the charge with the fewest requests left (for headers).
    Admitted {
        /// Index into the charges, remaining requests, time to full burst.
        tightest: Option<(usize, u32, Duration)>,
        /// Set when a shared state could not be reached and its fallback
        /// admitted (the audit record states it).
        fallback: Option<RateFallback>,
    },
    /// A limiter refused; nothing was charged anywhere.
    Refused {
        /// Index into the charges of the limiter that refused.
        charge: usize,
        /// When the request would pass.
        retry_after: Duration,
        /// Set when a shared state could not be reached and its fallback
        /// decided (the audit record states it).
        fallback: Option<RateFallback>,
    },
}

/// A rate-state backend failure (a shared backend that cannot be reached).
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate state unavailable: {0}")]
pub struct RateStateError(pub Arc<str>);

/// Where rate state lives.
///
/// `acquire` looks at every limiter of a request and charges all of them or
/// none. The in-memory backend answers with a ready future (no allocation);
/// a shared backend (Redis) can return a boxed one. The layer polls the
/// future once when it checks a request and waits only if it is pending.
pub trait RateState: Send + Sync + 'static {
    /// The answer's future. Owned (`'static`), so a pending answer can wait
    /// inside the response future.
    type Future: Future<Output = Result<Outcome, RateStateError>> + Send + Unpin + 'static;

    /// Decides `charges` at `now` (nanoseconds on the layer's clock):
    /// all-then-commit.
    fn acquire(&self, charges: &[Charge], now: u64) -> Self::Future;

    /// How long a shared backend may be waited for ([`None`] for state in
    /// process memory): the rate check starts the request's
    /// [`SharedDeadline`](tokengate_core::SharedDeadline) from it.
    fn wait_budget(&self) -> Option<std::time::Duration> {
        None
    }

    /// [`acquire`](Self::acquire), answering by `deadline` at the latest
    /// (the request's one deadline for every call to shared state): a
    /// backend that has not answered by then gets the state's fallback.
    fn acquire_by(
        &self,
        charges: &[Charge],
        now: u64,
        deadline: Option<std::time::Instant>,
    ) -> Self::Future {
        let _ = deadline;
        self.acquire(charges, now)
    }
}

const SHARDS: usize = 16;

/// Rate state in process memory: one atomic TAT per key, updated with a
/// compare-and-swap, in sharded maps shared by every clone.
///
/// Bounded: at most `max_keys` keys, so a flood of distinct keys (spoofed
/// or botnet addresses) cannot grow memory. A key whose burst is full
/// again carries no information and is dropped when room is needed. When
/// the table is full of active keys, the keys closest to idle (the
/// smallest theoretical arrival times: the clients that have spent least)
/// are evicted to make room, a sixteenth of the shard at a time.
///
/// The trade: a client that has sent nothing is never refused because of
/// other clients, and the clients that spent most (those being limited)
/// keep their state longest; under a flood that fills the table, the
/// lightest clients may get a fresh burst earlier than their quota says.
///
/// Compact: each shard keeps one table per limiter and key kind, so an
/// entry is just the key and its TAT, 24 bytes (an address as 16 bytes,
/// IPv4 as its mapped IPv6 form; a token id or owner as the shared
/// `Arc<str>` the principal already holds).
#[derive(Clone)]
pub struct MemoryRateState {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Vec<Shard>,
    per_shard: usize,
    hasher: RandomState,
}

/// One key's state.
struct Entry<K> {
    key: K,
    tat: AtomicU64,
}

/// One limiter's keys in one shard, by kind.
#[derive(Default)]
struct Tables {
    ip: HashTable<Entry<[u64; 2]>>,
    token: HashTable<Entry<TokenId>>,
    owner: HashTable<Entry<Arc<str>>>,
    custom: HashTable<Entry<Arc<str>>>,
}

/// A shard's keys, by limiter index.
#[derive(Default)]
struct Keys {
    by_limiter: Vec<Tables>,
    len: usize,
}

struct Shard {
    keys: RwLock<Keys>,
    /// When the first active key of a full shard turns idle: sweeping
    /// before then finds nothing, so a flood of new keys against a full
    /// table costs O(1) per request instead of a scan each.
    next_sweep: AtomicU64,
}

/// A key as the tables store it, borrowed from a charge.
enum Packed<'a> {
    Ip([u64; 2]),
    Token(&'a TokenId),
    Owner(&'a Arc<str>),
    Custom(&'a Arc<str>),
}

impl<'a> Packed<'a> {
    fn of(key: &'a RateKey) -> Self {
        match key {
            RateKey::Token(id) => Self::Token(id),
            RateKey::Owner(owner) => Self::Owner(owner),
            RateKey::Custom(custom) => Self::Custom(custom),
            RateKey::Ip(ip) => {
                let octets = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                let (high, low) = octets.split_at(8);
                let word = |half: &[u8]| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(half);
                    u64::from_be_bytes(bytes)
                };
                Self::Ip([word(high), word(low)])
            }
        }
    }

    fn hash(&self, hasher: &RandomState) -> u64 {
        match self {
            Self::Ip(bits) => hasher.hash_one(bits),
            Self::Token(id) => hasher.hash_one(id.as_str()),
            Self::Owner(text) | Self::Custom(text) => hasher.hash_one(&***text),
        }
    }
}

/// Inserts a fresh text key (TAT 0) known to be absent.
fn insert_text<'t>(
    table: &'t mut HashTable<Entry<Arc<str>>>,
    text: &Arc<str>,
    hash: u64,
    hasher: &RandomState,
) -> &'t AtomicU64 {
    let entry = Entry {
        key: Arc::clone(text),
        tat: AtomicU64::new(0),
    };
    let rehash = |e: &Entry<Arc<str>>| hasher.hash_one(&*e.key);
    &table.insert_unique(hash, entry, rehash).into_mut().tat
}

impl Tables {
    fn find(&self, key: &Packed<'_>, hash: u64) -> Option<&AtomicU64> {
        match key {
            Packed::Ip(bits) => self.ip.find(hash, |e| e.key == *bits).map(|e| &e.tat),
            Packed::Token(id) => self.token.find(hash, |e| e.key == **id).map(|e| &e.tat),
            Packed::Owner(text) => self.owner.find(hash, |e| e.key == **text).map(|e| &e.tat),
            Packed::Custom(text) => self.custom.find(hash, |e| e.key == **text).map(|e| &e.tat),
        }
    }

    /// Inserts a fresh key (TAT 0) known to be absent.
    fn insert(&mut self, key: &Packed<'_>, hash: u64, hasher: &RandomState) -> &AtomicU64 {
        let tat = AtomicU64::new(0);
        match key {
            Packed::Ip(bits) => {
                let entry = Entry { key: *bits, tat };
                &self
                    .ip
                    .insert_unique(hash, entry, |e| hasher.hash_one(e.key))
                    .into_mut()
                    .tat
            }
            Packed::Token(id) => {
                let entry = Entry {
                    key: (*id).clone(),
                    tat,
                };
                let rehash = |e: &Entry<TokenId>| hasher.hash_one(e.key.as_str());
                &self.token.insert_unique(hash, entry, rehash).into_mut().tat
            }
            Packed::Owner(text) => insert_text(&mut self.owner, text, hash, hasher),
            Packed::Custom(text) => insert_text(&mut self.custom, text, hash, hasher),
        }
    }

    /// Drops keys idle at `now`; how many were dropped.
    fn retain_active(&mut self, now: u64) -> usize {
        fn retain<K>(table: &mut HashTable<Entry<K>>, now: u64) -> usize {
            let before = table.len();
            table.retain(|e| !Gcra::is_idle(e.tat.load(Ordering::Relaxed), now));
            before - table.len()
        }
        retain(&mut self.ip, now)
            + retain(&mut self.token, now)
            + retain(&mut self.owner, now)
            + retain(&mut self.custom, now)
    }

    /// Every TAT held, into `out`.
    fn collect_tats(&self, out: &mut Vec<u64>) {
        fn push<K>(table: &HashTable<Entry<K>>, out: &mut Vec<u64>) {
            out.extend(table.iter().map(|e| e.tat.load(Ordering::Relaxed)));
        }
        push(&self.ip, out);
        push(&self.token, out);
        push(&self.owner, out);
        push(&self.custom, out);
    }

    /// Drops keys whose TAT is under `threshold`, and keys whose TAT is
    /// `threshold` while `at_threshold` allows (counting it down); how
    /// many were dropped.
    fn evict_up_to(&mut self, threshold: u64, at_threshold: &mut usize) -> usize {
        fn retain<K>(table: &mut HashTable<Entry<K>>, threshold: u64, budget: &mut usize) -> usize {
            let before = table.len();
            table.retain(|e| {
                let tat = e.tat.load(Ordering::Relaxed);
                if tat == threshold && *budget > 0 {
                    *budget -= 1;
                    return false;
                }
                tat >= threshold
            });
            before - table.len()
        }
        retain(&mut self.ip, threshold, at_threshold)
            + retain(&mut self.token, threshold, at_threshold)
            + retain(&mut self.owner, threshold, at_threshold)
            + retain(&mut self.custom, threshold, at_threshold)
    }

    /// The earliest TAT held, if any.
    fn earliest(&self) -> Option<u64> {
        fn min<K>(table: &HashTable<Entry<K>>) -> Option<u64> {
            table.iter().map(|e| e.tat.load(Ordering::Relaxed)).min()
        }
        [
            min(&self.ip),
            min(&self.token),
            min(&self.owner),
            min(&self.custom),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl fmt::Debug for MemoryRateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateState")
            .field("keys", &self.len())
            .field("max_keys", &(self.shared.per_shard * SHARDS))
            .finish()
    }
}

impl Default for MemoryRateState {
    /// Room for 100,000 keys.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl MemoryRateState {
    /// State for at most `max_keys` keys (rounded up to a multiple of 16).
    pub fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Self {
            shared: Arc::new(Shared {
                shards: (0..SHARDS)
                    .map(|_| Shard {
                        keys: RwLock::new(Keys::default()),
                        next_sweep: AtomicU64::new(0),
                    })
                    .collect(),
                per_shard,
                hasher: RandomState::default(),
            }),
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|s| s.keys.read().unwrap_or_else(PoisonError::into_inner).len)
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the key's TAT cell, creating it (TAT 0: fresh) if
    /// needed, making room first when the shard is full.
    fn with_cell<R>(
        &self,
        (limiter, key): &(u8, RateKey),
        now: u64,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> R {
        let shared = &*self.shared;
        let limiter = usize::from(*limiter);
        let key = Packed::of(key);
        let hash = key.hash(&shared.hasher);
        // Middle bits pick the shard: the tables use the low bits for the
        // slot and the top bits for their control bytes.
        let shard = &shared.shards[usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0)];
        {
            let keys = shard.keys.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = keys
                .by_limiter
                .get(limiter)
                .and_then(|tables| tables.find(&key, hash))
            {
                return f(cell);
            }
        }
        let mut guard = shard.keys.write().unwrap_or_else(PoisonError::into_inner);
        let keys = &mut *guard;
        if let Some(cell) = keys
            .by_limiter
            .get(limiter)
            .and_then(|tables| tables.find(&key, hash))
        {
            return f(cell);
        }
        if keys.len >= shared.per_shard && !shard.sweep(keys, now, shared.per_shard) {
            shard.evict_closest_to_idle(keys, shared.per_shard);
        }
        if keys.by_limiter.len() <= limiter {
            keys.by_limiter.resize_with(limiter + 1, Tables::default);
        }
        keys.len += 1;
        f(keys.by_limiter[limiter].insert(&key, hash, &shared.hasher))
    }

    fn peek(&self, charge: &Charge, now: u64) -> u64 {
        self.with_cell(&charge.key, now, |cell| cell.load(Ordering::Acquire))
    }

    /// Charges one charge with a CAS loop; `Err` if it refuses now.
    fn commit(&self, charge: &Charge, now: u64) -> Result<(u32, Duration), Duration> {
        self.with_cell(&charge.key, now, |cell| {
            let mut current = cell.load(Ordering::Acquire);
            loop {
                match charge.gcra.decide(current, now, charge.cost) {
                    GcraAnswer::Refuse { retry_after } => return Err(retry_after),
                    GcraAnswer::Admit {
                        tat,
                        remaining,
                        reset,
                    } => {
                        match cell.compare_exchange_weak(
                            current,
                            tat,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => return Ok((remaining, reset)),
                            Err(actual) => current = actual,
                        }
                    }
                }
            }
        })
    }

    /// Gives back a charge made by `commit` (another limiter refused).
    fn refund(&self, charge: &Charge, now: u64) {
        let spent = charge
            .gcra
            .interval()
            .saturating_mul(u64::from(charge.cost));
        let _ = self.with_cell(&charge.key, now, |cell| {
            cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(spent))
            })
        });
    }

    /// All-then-commit, synchronously.
    pub fn decide(&self, charges: &[Charge], now: u64) -> Outcome {
        // One limiter: charging is deciding, no look-ahead needed.
        if let [charge] = charges {
            return match self.commit(charge, now) {
                Ok((remaining, reset)) => Outcome::Admitted {
                    tightest: Some((0, remaining, reset)),
                    fallback: None,
                },
                Err(retry_after) => Outcome::Refused {
                    charge: 0,
                    retry_after,
                    fallback: None,
                },
            };
        }
        // Look first: a request refused by one limiter must not spend another's budget.
        let mut refused: Option<(usize, Duration)> = None;
        for (i, charge) in charges.iter().enumerate() {
            let retry = match charge.gcra.decide(self.peek(charge, now), now, charge.cost) {
                GcraAnswer::Refuse { retry_after } => Some(retry_after),
                GcraAnswer::Admit { .. } => None,
            };
            if let Some(retry) = retry
                && refused.is_none_or(|(_, r)| retry > r)
            {
                refused = Some((i, retry));
            }
        }
        if let Some((charge, retry_after)) = refused {
            return Outcome::Refused {
                charge,
                retry_after,
                fallback: None,
            };
        }
        // Then charge each; if a racing request spent a budget in between,
        // give back what was charged and refuse.
        let mut tightest: Option<(usize, u32, Duration)> = None;
        for (i, charge) in charges.iter().enumerate() {
            match self.commit(charge, now) {
                Ok((remaining, reset)) => {
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((i, remaining, reset));
                    }
                }
                Err(retry_after) => {
                    for earlier in &charges[..i] {
                        self.refund(earlier, now);
                    }
                    return Outcome::Refused {
                        charge: i,
                        retry_after,
                        fallback: None,
                    };
                }
            }
        }
        Outcome::Admitted {
            tightest,
            fallback: None,
        }
    }
}

impl Shard {
    /// Evicts the keys closest to idle from a full shard of active keys:
    /// a sixteenth of the shard (at least one), so that a flood of new
    /// keys pays for one scan per sixteenth of the shard, not per key.
    /// Keys that share the threshold's TAT (keys made in one clock tick)
    /// are evicted only up to that count, never the whole shard.
    fn evict_closest_to_idle(&self, keys: &mut Keys, capacity: usize) {
        let mut tats = Vec::with_capacity(keys.len);
        for tables in &keys.by_limiter {
            tables.collect_tats(&mut tats);
        }
        if tats.is_empty() {
            return;
        }
        let count = (capacity / 16).clamp(1, tats.len());
        let (_, &mut threshold, _) = tats.select_nth_unstable(count - 1);
        // Every key under the threshold is among the `count` closest to
        // idle; the rest of the count goes to keys at the threshold.
        let below = tats[..count].iter().filter(|&&tat| tat < threshold).count();
        let mut at_threshold = count - below;
        let dropped: usize = keys
            .by_limiter
            .iter_mut()
            .map(|tables| tables.evict_up_to(threshold, &mut at_threshold))
            .sum();
        keys.len -= dropped;
    }

    /// Drops idle keys from a full shard, unless no key can be idle yet;
    /// whether there is room now.
    fn sweep(&self, keys: &mut Keys, now: u64, capacity: usize) -> bool {
        if now < self.next_sweep.load(Ordering::Relaxed) {
            return false;
        }
        let dropped: usize = keys
            .by_limiter
            .iter_mut()
            .map(|tables| tables.retain_active(now))
            .sum();
        keys.len -= dropped;
        let earliest = keys
            .by_limiter
            .iter()
            .filter_map(Tables::earliest)
            .min()
            .unwrap_or(0);
        self.next_sweep.store(earliest, Ordering::Relaxed);
        keys.len < capacity
    }
}

impl RateState for MemoryRateState {
    type Future = Ready<Result<Outcome, RateStateError>>;

    fn acquire(&self, charges: &[Charge], now: u64) -> Self::Future {
        ready(Ok(self.decide(charges, now)))
    }
}
