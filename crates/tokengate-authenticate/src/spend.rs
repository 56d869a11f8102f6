//! Usage-limited tokens: a request's cost in uses (one by default) spent
//! in the store per admitted request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Request, Response};
use tokengate_cache::CachedStore;
use tokengate_check::{Admit, Check, Verdict};
use tokengate_core::metric_names::STORE_ERRORS;
use tokengate_core::{
    ChargeFuture, Denial, LateCharge, Meter, Principal, SharedDeadline, TOKEN_USES_REMAINING,
    TokenId, UseLimit,
};
use tokengate_store::{LeaseSpend, SharedUses, SharedUsesError, StoreError, TokenStore, UseKey};

use crate::layer::{Config, UseLimitLayer};

/// The count left after an admitted request, as `token-uses-remaining`.
#[derive(Debug, Clone, Default)]
pub struct UsesLeft(Option<u64>);

impl Admit for UsesLeft {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some(left) = self.0 {
            response
                .headers_mut()
                .insert(TOKEN_USES_REMAINING, HeaderValue::from(left));
        }
    }
}

/// `answer`, or a timeout past `timeout`.
async fn bounded<T>(
    timeout: Duration,
    answer: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

/// A shared counter's `answer`, or an error once the request's `deadline`
/// for shared state has passed (the counter undoes a spend it answers
/// later: see [`SharedUses`]).
async fn within<T>(
    deadline: Instant,
    answer: impl Future<Output = Result<T, SharedUsesError>>,
) -> Result<T, SharedUsesError> {
    tokio::time::timeout_at(deadline.into(), answer)
        .await
        .unwrap_or_else(|_| Err(SharedUsesError("past the request's deadline".into())))
}

/// How long leased uses of a token that never refills are kept unspent.
const LEASE_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// One spend through a shared counter.
#[derive(Clone)]
struct Spend {
    id: TokenId,
    generation: u64,
    limit: UseLimit,
    at: SystemTime,
    timeout: Duration,
    /// The request's one deadline for shared state (every counter call).
    deadline: Instant,
}

/// How long a request whose token the store has no use left for waits
/// for refills in flight elsewhere (their store round trip) before it is
/// refused.
const SETTLE_WAIT: Duration = Duration::from_millis(500);

/// What a refill ended with.
enum Refilled {
    /// The request's answer.
    Done(Result<Option<u64>, StoreError>),
    /// The store had none, but other refills are in flight: ask again, by
    /// this deadline for the shared counter.
    Wait(Instant),
}

impl Spend {
    fn key(&self) -> UseKey {
        UseKey {
            token: self.id.clone(),
            generation: self.generation,
            window: self.limit.window(self.at),
        }
    }

    fn keep(&self) -> Duration {
        self.limit.next_refill(self.at).unwrap_or(LEASE_KEPT)
    }

    /// From the shared lease; when it is empty, a new lease from the store
    /// (this request's use among it); when the counter cannot answer, from
    /// the store alone (exact still: the store is the count).
    async fn leased<St: TokenStore>(
        self,
        shared: Arc<dyn SharedUses>,
        store: CachedStore<St>,
    ) -> Result<Option<u64>, StoreError> {
        let spend = self.limit.spend_at(self.at);
        let key = self.key();
        match within(self.deadline, shared.spend(&key, self.keep())).await {
            Ok(LeaseSpend::Spent { left }) => return Ok(Some(left)),
            Ok(LeaseSpend::Empty | LeaseSpend::Pending) => {}
            Err(error) => {
                let count = COUNTER_DOWN.fetch_add(1, Ordering::Relaxed);
                if count == 0 || count.is_power_of_two() {
                    tracing::warn!(%error, times = count + 1, "shared use counter unavailable; spending in the store");
                }
                let spent = bounded(self.timeout, store.spend_use(&self.id, spend)).await;
                // The lease's answers count from the store's count: tell it
                // what is left there now (queued behind a paused server, it
                // lands when the server wakes).
                if let Ok(Some(left)) = spent {
                    tokio::spawn(shared.note(&key, left));
                }
                return spent;
            }
        }
        // A refiller now. The refill runs to its end in a task of its own,
        // even if this request is dropped meanwhile (a client hanging up):
        // what it took from the store is leased, and the refill is ended
        // for the other requests waiting on it.
        let refill = tokio::spawn(self.clone().refill(Arc::clone(&shared), store));
        match refill.await.map_err(StoreError::unavailable)? {
            Refilled::Done(answer) => answer,
            Refilled::Wait(counter_deadline) => {
                let deadline = (Instant::now() + SETTLE_WAIT).min(counter_deadline);
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    match within(deadline, shared.settle(&key, false)).await {
                        Ok(LeaseSpend::Spent { left }) => return Ok(Some(left)),
                        Ok(LeaseSpend::Pending) if Instant::now() < deadline => {}
                        _ => return Ok(None),
                    }
                }
            }
        }
    }

    /// Takes a lease from the store, keeps one use, grants the rest; or,
    /// when the store has none, ends the refill and settles.
    async fn refill<St: TokenStore>(
        self,
        shared: Arc<dyn SharedUses>,
        store: CachedStore<St>,
    ) -> Refilled {
        let (key, keep) = (self.key(), self.keep());
        let want = shared.lease_size().max(1);
        let spend = self.limit.spend_at(self.at);
        // The deadline bounds waiting for the counter, not for the store:
        // what is left of it is kept across the store's round trip.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let taken = bounded(self.timeout, store.take_uses(&self.id, spend, want)).await;
        let deadline = Instant::now() + left;
        let taken = match taken {
            Ok(taken) => taken,
            Err(error) => {
                // End the refill; a use granted meanwhile still serves.
                return Refilled::Done(match within(deadline, shared.settle(&key, true)).await {
                    Ok(LeaseSpend::Spent { left }) => Ok(Some(left)),
                    _ => Err(error),
                });
            }
        };
        if let Some(lease) = taken.taken.checked_sub(1) {
            // Waited for (so the next request finds the lease filled, rather
            // than taking another batch from the store), but only until the
            // request's deadline: a grant that answers later still lands.
            if let Err(error) = within(deadline, shared.grant(&key, lease, taken.left, keep)).await
            {
                tracing::warn!(%error, lease, "the shared counter did not confirm a lease in time");
            }
            return Refilled::Done(Ok(Some(lease + taken.left)));
        }
        // The store had none: refuse only once no refill is in flight.
        match within(deadline, shared.settle(&key, true)).await {
            Ok(LeaseSpend::Spent { left }) => Refilled::Done(Ok(Some(left))),
            Ok(LeaseSpend::Pending) => Refilled::Wait(deadline),
            Ok(LeaseSpend::Empty) | Err(_) => Refilled::Done(Ok(None)),
        }
    }
}

/// How often the shared counter could not answer (warned at powers of two).
static COUNTER_DOWN: AtomicU64 = AtomicU64::new(0);

/// The store's answer to a spend, with what it is read against.
#[derive(Debug)]
pub struct Spent {
    answer: Result<Option<u64>, StoreError>,
    limit: UseLimit,
    at: SystemTime,
}

/// A spend the store has not answered yet. Boxed: only usage-limited
/// tokens make one.
pub struct SpendWait(Pin<Box<dyn Future<Output = Spent> + Send>>);

impl Future for SpendWait {
    type Output = Spent;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Spent> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for SpendWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendWait").finish_non_exhaustive()
    }
}

/// A layer configuration's spend, borrowed: what [`UseLimitLayer`] and
/// the authenticate layer run.
pub(crate) struct SpendUse<'a, St>(pub(crate) &'a Config<St>);

impl<B, St: TokenStore> Check<B> for UseLimitLayer<St> {
    type Admit = UsesLeft;
    type Wait = SpendWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<UsesLeft, SpendWait> {
        SpendUse(&self.config).check(request)
    }

    fn resume(&self, request: &mut Request<B>, spent: Spent) -> Verdict<UsesLeft, SpendWait> {
        SpendUse(&self.config).resume(request, spent)
    }
}

impl<B, St: TokenStore> Check<B> for SpendUse<'_, St> {
    type Admit = UsesLeft;
    type Wait = SpendWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<UsesLeft, SpendWait> {
        let Some(principal) = request.extensions().get::<Principal>() else {
            return Verdict::Admit(UsesLeft(None));
        };
        let Some(limit) = principal.use_limit() else {
            return Verdict::Admit(UsesLeft(None));
        };
        let config = self.0;
        let cost = config
            .cost
            .as_ref()
            .map_or(1, |cost| cost(request.method(), request.uri()));
        if cost == 0 {
            // A route of cost 0 may still be charged by its handler.
            if config.late_charges {
                self.meter(request);
            }
            return Verdict::Admit(UsesLeft(None));
        }
        let (limit, at) = (*limit, config.clock.now());
        let id = principal.token_id().clone();
        let generation = principal.uses_generation();
        let store = config.verifier.clone();
        let timeout = config.lookup_timeout;
        let shared = config.shared_uses.clone();
        let deadline = shared
            .as_ref()
            .map(|s| SharedDeadline::start(request.extensions_mut(), s.wait_budget()));
        Verdict::Wait(SpendWait(Box::pin(async move {
            let answer = match shared {
                Some(shared) if cost == 1 => {
                    let spend = Spend {
                        id,
                        generation,
                        limit,
                        at,
                        timeout,
                        deadline: deadline.unwrap_or_else(Instant::now),
                    };
                    spend.leased(shared, store).await
                }
                // Leases hold single uses: a costlier request (or any,
                // without a counter) spends in the store, and a counter
                // counts from what is left.
                shared => {
                    let direct = Direct {
                        store,
                        shared,
                        id,
                        generation,
                        limit,
                        timeout,
                    };
                    direct.spend(at, cost).await
                }
            };
            Spent { answer, limit, at }
        })))
    }

    fn resume(&self, request: &mut Request<B>, spent: Spent) -> Verdict<UsesLeft, SpendWait> {
        let denial = match spent.answer {
            Ok(Some(left)) => {
                if self.0.late_charges {
                    self.meter(request);
                }
                return Verdict::Admit(UsesLeft(Some(left)));
            }
            Ok(None) => Denial::UsageExhausted {
                retry_after: spent.limit.next_refill(spent.at),
            },
            Err(error) => {
                let kind = if matches!(error, StoreError::Timeout) {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!(STORE_ERRORS, "kind" => kind).increment(1);
                tracing::warn!(%error, "cannot spend a use of a usage-limited token; refused");
                Denial::StoreUnavailable
            }
        };
        Verdict::Refuse(self.0.renderer.refuse(request, denial))
    }
}

impl<St: TokenStore> SpendUse<'_, St> {
    /// Adds the uses' part to `request`'s meter.
    fn meter<B>(&self, request: &mut Request<B>) {
        let Some(principal) = request.extensions().get::<Principal>() else {
            return;
        };
        let Some(limit) = principal.use_limit() else {
            return;
        };
        let config = self.0;
        let part = LateUses {
            direct: Direct {
                store: config.verifier.clone(),
                shared: config.shared_uses.clone(),
                id: principal.token_id().clone(),
                generation: principal.uses_generation(),
                limit: *limit,
                timeout: config.lookup_timeout,
            },
            clock: Arc::clone(&config.clock),
        };
        Meter::add_to(request.extensions_mut(), Arc::new(part));
    }
}

/// A spend of several uses in the store itself (leases in a shared
/// counter hold single uses); the counter, if any, is told what is left.
struct Direct<St> {
    store: CachedStore<St>,
    shared: Option<Arc<dyn SharedUses>>,
    id: TokenId,
    generation: u64,
    limit: UseLimit,
    timeout: Duration,
}

impl<St: TokenStore> Direct<St> {
    async fn spend(&self, at: SystemTime, cost: u32) -> Result<Option<u64>, StoreError> {
        let spend = self.limit.spend_at(at).costing(cost.into());
        let spent = bounded(self.timeout, self.store.spend_use(&self.id, spend)).await;
        if let (Ok(Some(left)), Some(shared)) = (&spent, &self.shared) {
            let key = UseKey {
                token: self.id.clone(),
                generation: self.generation,
                window: self.limit.window(at),
            };
            tokio::spawn(shared.note(&key, *left));
        }
        spent
    }
}

/// The uses' part of a request's [`Meter`].
struct LateUses<St> {
    direct: Direct<St>,
    clock: tokengate_core::SharedClock,
}

impl<St: TokenStore> LateCharge for LateUses<St> {
    fn charge(&self, units: u32) -> ChargeFuture<'_> {
        Box::pin(async move {
            let at = self.clock.now();
            match self.direct.spend(at, units.max(1)).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(Denial::UsageExhausted {
                    retry_after: self.direct.limit.next_refill(at),
                }),
                Err(error) => {
                    tracing::warn!(%error, "cannot charge uses after the fact; refused");
                    Err(Denial::StoreUnavailable)
                }
            }
        })
    }
}
