//! Where tokengate's tokens live: the store traits, the token lifecycle,
//! the in-memory store and pepper sources.
//!
//! [`TokenStore`] is the request path: one lookup by
//! [`TokenHash`], where a failure of the store
//! ([`StoreError`]) is never confused with "no such token" (`Ok(None)`).
//! [`TokenAdmin`] is the management side the [`Lifecycle`] builds on
//! (issue under a policy, rotate with overlap, revoke, update, list).
//! Both are implemented by [`MemoryStore`] here, by the SQLite and
//! PostgreSQL stores, and by `tokengate-cache`'s `CachedStore` in front of
//! any store. A store that can tell other processes about changes
//! follows its feed into a [`FeedConsumer`] (the cache is one).
//!
//! [`PepperSource`] reads the server-side pepper from `TOKENGATE_PEPPER` or
//! a pepper file and checks it against what a database recorded;
//! [`SharedUses`] is the interface of a counter shared in front of the
//! store for usage-limited tokens.
//!
//! With the `testing` feature, `testing` holds a store that counts and
//! fails lookups on demand, and the conformance suite every store passes.
//!
//! # Example
//!
//! ```
//! use tokengate_core::{KeyId, Pepper, TokenHasher};
//! use tokengate_store::{Lifecycle, MemoryStore, TokenSpec, TokenStore};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let store = MemoryStore::new();
//! let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
//!
//! let issued = lifecycle
//!     .issue(
//!         TokenSpec::new("deploy-bot", "team-a")
//!             .scopes(["notes:read".parse()?])
//!             .audiences(["notes".parse()?]),
//!     )
//!     .await?;
//!
//! // Parse (no store work), hash under the pepper, look the hash up: the
//! // store keeps hashes only.
//! let token = lifecycle.format().parse(issued.token.expose_secret())?;
//! let record = store.find_by_hash(&hasher.hash(&token)).await?.expect("issued");
//! assert_eq!(record.subject, "team-a");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod feed;
mod lifecycle;
mod memory;
mod pepper_source;
mod redact;
mod shared_replay;
mod shared_uses;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod usage_counts;
mod webhooks;

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

pub use feed::{FeedConsumer, FeedEvent};
pub use lifecycle::{
    Expiry, IssuancePolicy, IssuedToken, LEAK_REPORTED_BY, LEAKED_AT, LeakAction, LeakActionError,
    LeakHandled, LeakOutcome, Lifecycle, LifecycleError, QueryParts, TokenPatch, TokenQuery,
    TokenSpec,
};
pub use memory::MemoryStore;
pub use pepper_source::{FIRST_KEY, PEPPER_ENV, PepperSource, PepperSourceError};
pub use redact::redact_url;
pub use shared_replay::{ReplayFuture, SharedReplay, SharedReplayError};
pub use shared_uses::{LeaseSpend, SharedUses, SharedUsesError, UseKey, UsesFuture};
pub use usage_counts::{
    ADMITTED, ClientSeen, UsageBatch, UsageBucket, UsageCount, UsageTally, UsageTotal, hour_of,
    rank,
};
pub use webhooks::{
    Attempt, Delivery, DeliveryState, EventType, EventTypeError, GIVE_UP, LEASE, Webhook,
    WebhookError, WebhookEvent, retry_at,
};

use tokengate_core::{ScopeSet, Taken, TokenHash, TokenId, TokenRecord, UseSpend};

/// Looks tokens up by their keyed hash: the request path.
pub trait TokenStore: Send + Sync + 'static {
    /// The record stored under `hash`: `Ok(None)` when there is none,
    /// `Err` when the store could not answer.
    fn find_by_hash(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Moves the token `id`, found under `from` (its hash under a pepper
    /// rotated out), to `to` (its hash under the current pepper): the lazy
    /// migration after a pepper rotation. Does nothing when the token is
    /// no longer stored under `from`. A store that cannot migrate keeps
    /// the old hash (this default), and its tokens keep verifying through
    /// the previous peppers.
    fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (id, from, to);
        std::future::ready(Ok(()))
    }

    /// Spends one use of the usage-limited token `id`, atomically (never
    /// more uses than the count, however many requests and processes ask
    /// at once): when the stored window is older than `spend.window`, the
    /// count first becomes `spend.refill`; then one is taken if any is
    /// left. Returns the count left after this use, or `None` when none was
    /// left (or the token has no usage limit, or does not exist).
    ///
    /// A store that cannot count (this default) answers
    /// [`StoreError::Unsupported`], and usage-limited tokens are refused
    /// with 503 there: never admitted uncounted.
    fn spend_use(
        &self,
        id: &TokenId,
        spend: UseSpend,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        let _ = (id, spend);
        std::future::ready(Err(StoreError::Unsupported("counting token uses")))
    }

    /// Takes up to `want` uses of the usage-limited token `id` at once, in
    /// the same atomic step as [`spend_use`](Self::spend_use) (a refill
    /// first, where `spend.window` is later): the lease of a shared
    /// counter ([`SharedUses`]). Takes none (`taken:
    /// 0`) when none is left. This default takes one, with `spend_use`.
    fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> impl Future<Output = Result<Taken, StoreError>> + Send {
        let _ = want;
        let spent = self.spend_use(id, spend);
        async move {
            Ok(match spent.await? {
                Some(left) => Taken { taken: 1, left },
                None => Taken::default(),
            })
        }
    }
}

/// The management side of a store.
///
/// Stores persist; policy (lifetimes, scope catalogue, grace periods) lives
/// in [`Lifecycle`], so every store enforces the same rules.
pub trait TokenAdmin: Send + Sync + 'static {
    /// Stores a new record. Fails with [`StoreError::Conflict`] if its id or
    /// hash is taken.
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record with `id`, if any.
    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Every record, ordered by creation time.
    fn list(&self) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// The records `query` selects at `now`, oldest first: what
    /// [`TokenQuery::apply`] selects from [`list`](Self::list), which is
    /// this default. The SQL stores select and page in SQL instead, so a
    /// page of a large store reads only that page.
    fn query(
        &self,
        query: &TokenQuery,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        let all = self.list();
        async move { Ok(query.apply(all.await?, now)) }
    }

    /// Marks the token revoked at `at` and returns the record. Revoking a
    /// revoked token keeps the first revocation time.
    fn revoke(
        &self,
        id: &TokenId,
        at: SystemTime,
    ) -> impl Future<Output = Result<TokenRecord, StoreError>> + Send;

    /// Writes what may change of a token over the stored record with
    /// `record`'s id: its name, scopes, audiences, expiry, disable time,
    /// networks, rate quota, metadata and usage limit (the count left
    /// stays as stored, or starts from `record`'s where the token had no
    /// limit, and the later of the two refill windows is kept; no limit
    /// clears it); its hash, subject, creation,
    /// revocation and last-use times and `rotated_from` stay as stored.
    /// Records the change at `at` in the store's change feed, so every
    /// instance's cache forgets the token; returns the stored record, its
    /// [`version`](TokenRecord::version) one more. Writes only over the
    /// stored version `record.version`: fails with [`StoreError::Stale`]
    /// when it is another (changed meanwhile), [`StoreError::NotFound`]
    /// when there is no such token.
    fn update(
        &self,
        record: TokenRecord,
        at: SystemTime,
    ) -> impl Future<Output = Result<TokenRecord, StoreError>> + Send;

    /// Sets the count of the usage-limited token `id` to `remaining` in
    /// refill window `window`, in a new generation ([`Uses::generation`](tokengate_core::Uses::generation):
    /// uses leased out before no longer count), records the change in the
    /// store's change feed (so every instance's cache learns the
    /// generation), and returns the record. Fails with
    /// [`StoreError::NotFound`] when there is no such token; a token
    /// without a usage limit is returned unchanged.
    fn reset_uses(
        &self,
        id: &TokenId,
        remaining: u64,
        window: u64,
    ) -> impl Future<Output = Result<TokenRecord, StoreError>> + Send;

    /// Records when tokens were last used. Called in batches by a
    /// write-behind tracker, never on a request's path; ids that no longer
    /// exist are skipped, and a time earlier than the stored one is ignored.
    fn record_usage(
        &self,
        used: &[(TokenId, SystemTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically stores `replacement` and moves the expiry of `old` to
    /// `old_expires_at`; returns the updated old record. Where both are
    /// usage-limited, the old token's count moves to the replacement in
    /// the same step ([`Uses::hand_over`](tokengate_core::Uses::hand_over)): the
    /// replacement gets what is left, the old token none, for good.
    fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> impl Future<Output = Result<TokenRecord, StoreError>> + Send;

    /// Adds `scopes` to the store's scope catalogue: the scopes the
    /// servers' policies ask for, registered when they start, so that
    /// issuance can refuse a scope no server knows (a typo that would
    /// only fail later, with 403).
    fn register_scopes(
        &self,
        scopes: &ScopeSet,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The scope catalogue: every scope registered so far (empty until a
    /// server has started on this store).
    fn scope_catalogue(&self) -> impl Future<Output = Result<ScopeSet, StoreError>> + Send;

    /// Adds a [`UsageTally`]'s counts to the per-token hourly buckets, in
    /// one step: counts add up (several instances' batches sum), and a
    /// bucket's last client is the latest seen by any of them. Called in
    /// batches every few seconds, never on a request's path. A store that
    /// keeps no usage (this default) answers [`StoreError::Unsupported`].
    fn add_usage(&self, batch: &UsageBatch) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = batch;
        std::future::ready(Err(StoreError::Unsupported("per-token usage")))
    }

    /// The hourly buckets of token `id` from the hour holding `since` on,
    /// oldest first (hours with no request are absent).
    fn usage(
        &self,
        id: &TokenId,
        since: SystemTime,
    ) -> impl Future<Output = Result<Vec<UsageBucket>, StoreError>> + Send {
        let _ = (id, since);
        std::future::ready(Err(StoreError::Unsupported("per-token usage")))
    }

    /// The `limit` tokens with the most requests (admitted and refused)
    /// from the hour holding `since` on, most first, ties by id.
    fn top_usage(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<UsageTotal>, StoreError>> + Send {
        let _ = (since, limit);
        std::future::ready(Err(StoreError::Unsupported("per-token usage")))
    }

    /// Adds a webhook. A store without webhooks (this default) answers
    /// [`StoreError::Unsupported`].
    fn add_webhook(
        &self,
        webhook: &Webhook,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = webhook;
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Every webhook, oldest first.
    fn webhooks(&self) -> impl Future<Output = Result<Vec<Webhook>, StoreError>> + Send {
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Removes the webhook `id` (its pending deliveries fail, named so in
    /// the log); whether there was one.
    fn remove_webhook(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = id;
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Writes `event` to the outbox: one pending delivery for every
    /// webhook that wants its type, in one step; returns how many. This
    /// default (a store without webhooks) writes none.
    fn enqueue_event(
        &self,
        event: &WebhookEvent,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = event;
        std::future::ready(Ok(0))
    }

    /// Claims up to `limit` deliveries due at `now` for `claimer` until
    /// `now` + [`LEASE`], oldest due first: no other claimer gets them
    /// meanwhile (across processes), so a delivery is posted once unless
    /// its claimer dies mid-post.
    fn claim_deliveries(
        &self,
        now: SystemTime,
        claimer: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send {
        let _ = (now, claimer, limit);
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Records an attempt of delivery `id` by `claimer` (ignored when the
    /// lease passed to another); whether it was recorded.
    fn finish_delivery(
        &self,
        id: i64,
        claimer: &str,
        attempt: &Attempt,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (id, claimer, attempt);
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// The latest `limit` deliveries, newest first; with `failed_only`
    /// those given up and those whose last attempt failed.
    fn deliveries(
        &self,
        failed_only: bool,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send {
        let _ = (failed_only, limit);
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Forgets deliveries no longer pending (delivered or given up) whose
    /// last attempt was before `before`: the outbox's log is kept that
    /// long. Returns how many went.
    fn prune_deliveries(
        &self,
        before: SystemTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = before;
        std::future::ready(Err(StoreError::Unsupported("webhooks")))
    }

    /// Forgets the buckets of hours that ended before `before` (the
    /// retention); returns how many counts (of a token, an hour and an
    /// outcome) went.
    fn prune_usage(
        &self,
        before: SystemTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = before;
        std::future::ready(Err(StoreError::Unsupported("per-token usage")))
    }
}

impl<S: TokenStore> TokenStore for Arc<S> {
    fn find_by_hash(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        (**self).find_by_hash(hash)
    }

    fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).rehash(id, from, to)
    }

    fn spend_use(
        &self,
        id: &TokenId,
        spend: UseSpend,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        (**self).spend_use(id, spend)
    }

    fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> impl Future<Output = Result<Taken, StoreError>> + Send {
        (**self).take_uses(id, spend, want)
    }
}

/// A store failure. Cloneable, so one failed lookup can answer every request
/// waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or failed.
    #[error("token store unavailable: {0}")]
    Unavailable(#[source] Arc<dyn StdError + Send + Sync>),
    /// The store did not answer in time.
    #[error("token store timed out")]
    Timeout,
    /// An admin operation named a token that does not exist.
    #[error("no token with id {0}")]
    NotFound(TokenId),
    /// An insert collided with an existing id or hash.
    #[error("a token with this {0} already exists")]
    Conflict(&'static str),
    /// An [`update`](TokenAdmin::update) found the record at another
    /// version than the one it was read at: changed meanwhile.
    #[error("token {0} was changed meanwhile")]
    Stale(TokenId),
    /// The store cannot do what was asked (it names what).
    #[error("this token store does not support {0}")]
    Unsupported(&'static str),
    /// The store refused a change that would break one of its rules (it
    /// says which), such as retiring the newest pepper.
    #[error("{0}")]
    Refused(Arc<str>),
}

impl StoreError {
    /// Wraps a backend error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl StdError + Send + Sync + 'static) -> Self {
        Self::Unavailable(Arc::new(error))
    }
}
