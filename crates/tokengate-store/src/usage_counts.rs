//! Per-token usage: how many requests each token made per hour, admitted
//! or refused (by reason), and from which address last. Counted in memory
//! by a [`UsageTally`] and added to the store in batches
//! ([`TokenAdmin::add_usage`]), never one write per request.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokengate_core::TokenId;

use crate::{StoreError, TokenAdmin};

/// The outcome under which admitted requests are counted; a refusal is
/// counted under its reason (`rate_limited`, `insufficient_scope`, ...).
pub const ADMITTED: &str = "admitted";

/// The start of the hour holding `at`, in seconds since the Unix epoch.
pub fn hour_of(at: SystemTime) -> u64 {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs - secs % 3600
}

/// One hour of one token's requests, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    /// The start of the hour.
    pub start: SystemTime,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused, by reason.
    pub refused: BTreeMap<String, u64>,
    /// The address of the hour's last request, when it had one.
    pub last_client: Option<IpAddr>,
}

impl UsageBucket {
    /// An empty bucket for the hour starting `hour` seconds after the epoch.
    pub fn empty(hour: u64) -> Self {
        Self {
            start: UNIX_EPOCH + Duration::from_secs(hour),
            admitted: 0,
            refused: BTreeMap::new(),
            last_client: None,
        }
    }

    /// Adds `count` requests of `outcome` ([`ADMITTED`] or a reason).
    pub fn add(&mut self, outcome: &str, count: u64) {
        if outcome == ADMITTED {
            self.admitted = self.admitted.saturating_add(count);
        } else {
            let refused = self.refused.entry(outcome.to_owned()).or_default();
            *refused = refused.saturating_add(count);
        }
    }

    /// Requests refused, every reason together.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().fold(0, |a, b| a.saturating_add(*b))
    }
}

/// One token's requests over a time, every hour and reason together: a
/// row of [`TokenAdmin::top_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    /// The token.
    pub token_id: TokenId,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused, for any reason.
    pub refused: u64,
}

/// Counts to add to the store: what a [`UsageTally`] flushes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageBatch {
    /// `count` more requests of `token_id` in the hour `hour` (seconds
    /// since the epoch, a multiple of 3600) with `outcome`.
    pub counts: Vec<UsageCount>,
    /// The latest client address seen per token and hour.
    pub clients: Vec<ClientSeen>,
}

impl UsageBatch {
    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.clients.is_empty()
    }

    /// Adds `self`'s counts to buckets kept in memory, by token and hour.
    pub(crate) fn add_to(&self, buckets: &mut HashMap<TokenId, BTreeMap<u64, UsageBucket>>) {
        for count in &self.counts {
            buckets
                .entry(count.token_id.clone())
                .or_default()
                .entry(count.hour)
                .or_insert_with(|| UsageBucket::empty(count.hour))
                .add(count.outcome, count.count);
        }
    }
}

/// Requests of one token, hour and outcome: one row of a [`UsageBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    /// The token.
    pub token_id: TokenId,
    /// The hour's start, in seconds since the epoch.
    pub hour: u64,
    /// [`ADMITTED`], or the refusal's reason.
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// The latest client address of a token in an hour, and when it was seen
/// (across instances, the latest wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSeen {
    /// The token.
    pub token_id: TokenId,
    /// The hour's start, in seconds since the epoch.
    pub hour: u64,
    /// The address.
    pub client: IpAddr,
    /// When the request came.
    pub at: SystemTime,
}

/// Shards of the tally, one per thread (up to 16 threads; more share):
/// requests on different threads never wait on one another's lock, even
/// for the same token.
const SHARDS: usize = 16;

/// The next thread's shard.
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's shard.
    static MY_SHARD: usize =
        NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
}

/// Counts requests per token, hour and outcome in memory, for
/// [`UsageTally::flush`] to add to the store in one batch every few
/// seconds.
///
/// Counting a request is an uncontended lock of its thread's shard and
/// one map lookup (a hot token's requests on two threads never contend);
/// nothing is written to the store on a request's path. Between flushes
/// each shard holds at most a quarter of `max_tokens` distinct tokens;
/// requests of tokens beyond that are counted in [`UsageTally::dropped`]
/// instead. A flush merges the shards. A
/// flush that fails puts its batch back, so a store that is down for a
/// while loses nothing but what does not fit. Every instance adds its own
/// counts (the store sums them), so the totals are right across
/// instances.
#[derive(Debug)]
pub struct UsageTally {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

#[derive(Debug, Default)]
struct Shard {
    tokens: HashMap<TokenId, Counted, foldhash::quality::RandomState>,
    dropped: u64,
}

impl Shard {
    /// Adds `count` requests of `id` in `hour` with `outcome` (and its
    /// client), when the token is held or there is room for one more;
    /// else counts them dropped. The id is cloned only for a token new
    /// since the last flush.
    fn add(&mut self, id: &TokenId, room: usize, counts: (u64, &'static str, u64), last: Last) {
        let full = self.tokens.len() >= room;
        match self.tokens.get_mut(id) {
            Some(counted) => counted.add(counts, last),
            None if !full => {
                let mut counted = Counted::default();
                counted.add(counts, last);
                self.tokens.insert(id.clone(), counted);
            }
            None => self.dropped += counts.2,
        }
    }
}

/// A client address and when it was seen.
type Last = Option<(IpAddr, SystemTime)>;

impl Counted {
    fn add(&mut self, (hour, outcome, count): (u64, &'static str, u64), last: Last) {
        match self
            .counts
            .iter_mut()
            .find(|(h, o, _)| *h == hour && *o == outcome)
        {
            Some((_, _, n)) => *n += count,
            None => self.counts.push((hour, outcome, count)),
        }
        if let Some((client, at)) = last
            && self.last.is_none_or(|(_, seen)| seen <= at)
        {
            self.last = Some((client, at));
        }
    }
}

/// One token's requests since the last flush.
#[derive(Debug, Default)]
struct Counted {
    /// (hour, outcome, count): a handful between flushes.
    counts: Vec<(u64, &'static str, u64)>,
    /// The last client address, with its time.
    last: Option<(IpAddr, SystemTime)>,
}

impl Default for UsageTally {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl UsageTally {
    /// A tally holding at most `max_tokens` distinct tokens between flushes.
    pub fn new(max_tokens: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_tokens.div_ceil(4).max(1),
        }
    }

    /// Counts one request of `id` at `at`: admitted when `refused` is
    /// `None`, else refused for that reason; `client` is its address.
    pub fn count(
        &self,
        id: &TokenId,
        at: SystemTime,
        refused: Option<&'static str>,
        client: Option<IpAddr>,
    ) {
        let outcome = refused.unwrap_or(ADMITTED);
        let last = client.map(|client| (client, at));
        self.shard()
            .add(id, self.per_shard, (hour_of(at), outcome, 1), last);
    }

    /// Requests not counted because the tally was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).dropped).sum()
    }

    /// Takes everything counted so far, as a batch for the store.
    pub fn take(&self) -> UsageBatch {
        let mut batch = UsageBatch::default();
        // One token's counts may sit in several threads' shards: merged.
        let mut merged: HashMap<TokenId, Counted> = HashMap::new();
        for shard in self.shards.iter() {
            let tokens = std::mem::take(&mut lock(shard).tokens);
            for (id, counted) in tokens {
                match merged.get_mut(&id) {
                    Some(into) => {
                        for counts in counted.counts {
                            into.add(counts, counted.last);
                        }
                    }
                    None => {
                        merged.insert(id, counted);
                    }
                }
            }
        }
        {
            for (id, counted) in merged {
                for (hour, outcome, count) in counted.counts {
                    batch.counts.push(UsageCount {
                        token_id: id.clone(),
                        hour,
                        outcome,
                        count,
                    });
                }
                if let Some((client, at)) = counted.last {
                    batch.clients.push(ClientSeen {
                        hour: hour_of(at),
                        token_id: id,
                        client,
                        at,
                    });
                }
            }
        }
        batch
    }

    /// Puts a batch that could not be written back, to be written with
    /// the next (what does not fit is dropped and counted).
    pub fn put_back(&self, batch: UsageBatch) {
        for c in batch.counts {
            self.shard().add(
                &c.token_id,
                self.per_shard,
                (c.hour, c.outcome, c.count),
                None,
            );
        }
        for seen in batch.clients {
            let mut shard = self.shard();
            if let Some(counted) = shard.tokens.get_mut(&seen.token_id)
                && counted.last.is_none_or(|(_, at)| at < seen.at)
            {
                counted.last = Some((seen.client, seen.at));
            }
        }
    }

    /// Adds everything counted so far to `store` in one batch; returns how
    /// many counts were written. On failure the batch is put back for the
    /// next flush and the error returned.
    pub async fn flush<A: TokenAdmin>(&self, store: &A) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.add_usage(&batch).await {
            Ok(()) => Ok(batch.counts.len()),
            Err(error) => {
                self.put_back(batch);
                Err(error)
            }
        }
    }

    /// This thread's shard.
    fn shard(&self) -> MutexGuard<'_, Shard> {
        lock(&self.shards[MY_SHARD.with(|shard| *shard)])
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Buckets of `id` from `since` on, oldest first, from buckets kept in
/// memory by token and hour.
pub(crate) fn buckets_since(
    kept: &HashMap<TokenId, BTreeMap<u64, UsageBucket>>,
    id: &TokenId,
    since: SystemTime,
) -> Vec<UsageBucket> {
    kept.get(id).map_or_else(Vec::new, |hours| {
        hours
            .range(hour_of(since)..)
            .map(|(_, b)| b.clone())
            .collect()
    })
}

/// The `limit` tokens with the most requests from `since` on, most first
/// (ties by id), from buckets kept in memory.
pub(crate) fn top_since(
    kept: &HashMap<TokenId, BTreeMap<u64, UsageBucket>>,
    since: SystemTime,
    limit: usize,
) -> Vec<UsageTotal> {
    let mut totals: Vec<UsageTotal> = kept
        .iter()
        .map(|(id, hours)| {
            let (admitted, refused) =
                hours
                    .range(hour_of(since)..)
                    .fold((0u64, 0u64), |(a, r), (_, b)| {
                        (
                            a.saturating_add(b.admitted),
                            r.saturating_add(b.refused_total()),
                        )
                    });
            UsageTotal {
                token_id: id.clone(),
                admitted,
                refused,
            }
        })
        .filter(|t| t.admitted + t.refused > 0)
        .collect();
    rank(&mut totals);
    totals.truncate(limit);
    totals
}

/// Orders totals most requests first, ties by token id.
pub fn rank(totals: &mut [UsageTotal]) {
    totals.sort_by(|a, b| {
        (b.admitted.saturating_add(b.refused))
            .cmp(&a.admitted.saturating_add(a.refused))
            .then_with(|| a.token_id.cmp(&b.token_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn requests_are_counted_by_hour_and_outcome_and_the_last_client_kept() {
        let tally = UsageTally::new(100);
        let (a, b) = (TokenId::generate(), TokenId::generate());
        let one: IpAddr = "203.0.113.1".parse().unwrap();
        let two: IpAddr = "2001:db8::2".parse().unwrap();
        tally.count(&a, at(7_200), None, Some(one));
        tally.count(&a, at(7_300), None, Some(two));
        tally.count(&a, at(7_250), Some("rate_limited"), Some(one));
        tally.count(&a, at(10_900), None, None);
        tally.count(&b, at(7_201), Some("insufficient_scope"), None);
        let mut batch = tally.take();
        batch.counts.sort_by(|x, y| {
            (&x.token_id, x.hour, x.outcome).cmp(&(&y.token_id, y.hour, y.outcome))
        });
        let of = |id: &TokenId| -> Vec<(u64, &str, u64)> {
            batch
                .counts
                .iter()
                .filter(|c| &c.token_id == id)
                .map(|c| (c.hour, c.outcome, c.count))
                .collect()
        };
        assert_eq!(
            of(&a),
            [
                (7_200, "admitted", 2),
                (7_200, "rate_limited", 1),
                (10_800, "admitted", 1)
            ]
        );
        assert_eq!(of(&b), [(7_200, "insufficient_scope", 1)]);
        assert_eq!(batch.clients.len(), 1, "b came with no address");
        assert_eq!(batch.clients[0].client, two, "the latest request's address");
        assert_eq!(batch.clients[0].hour, 7_200);
        assert!(tally.take().is_empty(), "taken");
    }

    #[test]
    fn one_tokens_requests_on_several_threads_are_merged_at_the_flush() {
        let tally = std::sync::Arc::new(UsageTally::new(100));
        let id = TokenId::generate();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (tally, id) = (std::sync::Arc::clone(&tally), id.clone());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        tally.count(&id, at(7_200), None, None);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let batch = tally.take();
        assert_eq!(batch.counts.len(), 1, "{batch:?}");
        assert_eq!(batch.counts[0].count, 100);
    }

    #[test]
    fn a_full_tally_drops_and_counts_and_a_batch_put_back_is_kept() {
        let tally = UsageTally::new(1);
        let ids: Vec<TokenId> = (0..40).map(|_| TokenId::generate()).collect();
        for id in &ids {
            tally.count(id, at(0), None, None);
        }
        let batch = tally.take();
        let kept: u64 = batch.counts.iter().map(|c| c.count).sum();
        assert_eq!(kept + tally.dropped(), 40);
        assert!(kept <= 16, "one token per shard at most: {kept}");
        tally.put_back(batch.clone());
        let again = tally.take();
        assert_eq!(again.counts.len(), batch.counts.len());
    }

    #[tokio::test]
    async fn a_flush_adds_to_the_store_and_a_failed_one_keeps_its_counts() {
        let store = crate::MemoryStore::new();
        let tally = UsageTally::new(100);
        let id = TokenId::generate();
        tally.count(&id, at(3_600), None, None);
        tally.count(&id, at(3_601), Some("token_revoked"), None);
        assert_eq!(tally.flush(&store).await.unwrap(), 2);
        tally.count(&id, at(3_602), None, None);
        assert_eq!(tally.flush(&store).await.unwrap(), 1);
        let buckets = store.usage(&id, at(0)).await.unwrap();
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0].admitted, 2);
        assert_eq!(buckets[0].refused.get("token_revoked"), Some(&1));

        let probe = crate::testing::ProbeStore::new(store.clone());
        probe.set_failing(true);
        tally.count(&id, at(3_603), None, None);
        assert!(tally.flush(&probe).await.is_err());
        probe.set_failing(false);
        assert_eq!(
            tally.flush(&probe).await.unwrap(),
            1,
            "put back, then written"
        );
        assert_eq!(store.usage(&id, at(0)).await.unwrap()[0].admitted, 3);
    }
}
