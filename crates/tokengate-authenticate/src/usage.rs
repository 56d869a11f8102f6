//! `last_used_at`, written behind: batched, never on a request's path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokengate_core::{Principal, SlotKey, TokenId};
use tokengate_store::TokenAdmin;
use tokio::task::JoinHandle;

/// The second (since the Unix epoch) of a token's last use noted.
static LAST_USE: SlotKey<AtomicU64> = SlotKey::new();

/// Notes a use of `principal`'s token at `at`: whether it is the first
/// noted in a later second than any before. Only those are recorded, so a
/// busy token costs the tracker one write a second (a relaxed load per
/// request otherwise).
pub(crate) fn note_use(principal: &Principal, at: SystemTime) -> bool {
    let second = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    principal.with_slot(
        &LAST_USE,
        |_| AtomicU64::new(0),
        |last| {
            let seen = last.load(Ordering::Relaxed);
            second > seen
                && last
                    .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        },
    )
}

/// Collects token uses in memory and writes them to the store in batches.
///
/// Recording a use is a short lock and a map insert, and the authenticate
/// layer records a token at most once a second (it keeps the second of
/// the last use noted with the principal), so
/// `last_used_at` is exact to the second and a busy token does not make
/// requests contend for the lock; a background task
/// swaps the map out every interval and writes the whole batch with one
/// [`TokenAdmin::record_usage`] call. At most `max_pending` distinct tokens
/// are kept between flushes; uses beyond that are dropped and counted (the
/// time is approximate by nature). A failed write is logged and dropped:
/// usage tracking never blocks or fails a request.
#[derive(Clone)]
pub struct UsageTracker {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    max_pending: usize,
}

#[derive(Default)]
struct Pending {
    uses: HashMap<TokenId, SystemTime>,
    dropped: u64,
}

impl fmt::Debug for UsageTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTracker")
            .field("max_pending", &self.shared.max_pending)
            .finish_non_exhaustive()
    }
}

impl UsageTracker {
    /// A tracker holding at most `max_pending` distinct tokens between
    /// flushes. Nothing is written until [`UsageTracker::spawn_flusher`] runs
    /// or [`UsageTracker::flush`] is called.
    pub fn new(max_pending: usize) -> Self {
        LAST_USE.register();
        Self {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                max_pending,
            }),
        }
    }

    /// Notes that `id` was used at `at`.
    pub fn record(&self, id: &TokenId, at: SystemTime) {
        let mut pending = self.lock();
        if let Some(last) = pending.uses.get_mut(id) {
            *last = (*last).max(at);
        } else if pending.uses.len() < self.shared.max_pending {
            pending.uses.insert(id.clone(), at);
        } else {
            pending.dropped += 1;
        }
    }

    /// Uses dropped because the batch was full, since the tracker was made.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Writes what is pending to `store` now; returns how many tokens were written.
    pub async fn flush<A: TokenAdmin>(&self, store: &A) -> usize {
        let batch: Vec<(TokenId, SystemTime)> =
            std::mem::take(&mut self.lock().uses).into_iter().collect();
        if batch.is_empty() {
            return 0;
        }
        if let Err(error) = store.record_usage(&batch).await {
            tracing::warn!(%error, tokens = batch.len(), "could not record token usage");
            return 0;
        }
        batch.len()
    }

    /// Spawns a task on the current tokio runtime that flushes every `every`.
    /// Abort the handle (or drop the runtime) to stop it; call
    /// [`UsageTracker::flush`] once more at shutdown to write the rest.
    pub fn spawn_flusher<A: TokenAdmin>(&self, store: A, every: Duration) -> JoinHandle<()> {
        let tracker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                tracker.flush(&store).await;
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokengate_core::{KeyId, Pepper, TokenHasher};
    use tokengate_store::{Expiry, Lifecycle, MemoryStore, TokenSpec};

    use super::*;

    async fn issued(lc: &Lifecycle<MemoryStore>) -> TokenId {
        lc.issue(
            TokenSpec::new("t", "s")
                .scopes(["a:read".parse().unwrap()])
                .audiences(["a".parse().unwrap()])
                .expiry(Expiry::After(Duration::from_secs(60))),
        )
        .await
        .unwrap()
        .record
        .id
    }

    #[tokio::test]
    async fn a_use_is_noted_once_a_second_by_every_clone() {
        let lc = Lifecycle::new(
            MemoryStore::new(),
            TokenHasher::new(Pepper::generate(KeyId::new(1))),
        );
        let id = issued(&lc).await;
        let record = lc.get(&id).await.unwrap().unwrap();
        let p = Principal::from_record(&record);
        let q = p.clone();
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_100);
        assert!(note_use(&p, t));
        assert!(!note_use(&q, t + Duration::from_millis(800)));
        assert!(!note_use(&p, t - Duration::from_secs(5)), "never backwards");
        assert!(note_use(&q, t + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn uses_are_batched_deduplicated_and_bounded() {
        let store = MemoryStore::new();
        let lc = Lifecycle::new(
            store.clone(),
            TokenHasher::new(Pepper::generate(KeyId::new(1))),
        );
        let (a, b, c) = (issued(&lc).await, issued(&lc).await, issued(&lc).await);
        let tracker = UsageTracker::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        tracker.record(&a, t0);
        tracker.record(&a, t0 + Duration::from_secs(5));
        tracker.record(&a, t0 + Duration::from_secs(1));
        tracker.record(&b, t0);
        tracker.record(&c, t0);
        assert_eq!(tracker.dropped(), 1);
        assert_eq!(tracker.flush(&store).await, 2);
        assert_eq!(tracker.flush(&store).await, 0, "the batch was taken");
        let last = |id| {
            let store = store.clone();
            async move { store.get(&id).await.unwrap().unwrap().last_used_at }
        };
        assert_eq!(last(a).await, Some(t0 + Duration::from_secs(5)));
        assert_eq!(last(b).await, Some(t0));
        assert_eq!(last(c).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_writes_in_the_background() {
        let store = MemoryStore::new();
        let lc = Lifecycle::new(
            store.clone(),
            TokenHasher::new(Pepper::generate(KeyId::new(1))),
        );
        let a = issued(&lc).await;
        let tracker = UsageTracker::new(10);
        let task = tracker.spawn_flusher(store.clone(), Duration::from_secs(1));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        tracker.record(&a, at);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(store.get(&a).await.unwrap().unwrap().last_used_at, Some(at));
        task.abort();
    }
}
