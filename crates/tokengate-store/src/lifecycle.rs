//! Issue, rotate and revoke tokens under one policy, on any store.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{StoreError, TokenAdmin};
use crate::webhooks::{EventType, WebhookEvent};
use tokengate_core::Echo;
use tokengate_core::TokenHasher;
use tokengate_core::TokenId;
use tokengate_core::{RateQuota, UseLimit, Uses};
use tokengate_core::{Scope, ScopeSet};
use tokengate_core::{SharedClock, SystemClock};
use tokengate_core::{Token, TokenFormat};
use tokengate_core::{TokenRecord, TokenStatus};

/// A token just issued: the secret, shown once, and its record.
#[derive(Debug)]
pub struct IssuedToken {
    /// The token to hand to its owner. It is not stored anywhere.
    pub token: Token,
    /// What the store now holds.
    pub record: TokenRecord,
}

/// Why a lifecycle operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Longer than the policy's maximum lifetime.
    #[error("lifetime {requested:?} exceeds the maximum of {max:?}")]
    LifetimeTooLong {
        /// What was asked for.
        requested: Duration,
        /// The policy's maximum.
        max: Duration,
    },
    /// [`Expiry::Never`] under a policy that does not allow it.
    #[error("tokens without expiry are not allowed by the issuance policy")]
    NoExpiryNotAllowed,
    /// An expiry at or before the time of issue.
    #[error("expiry must be in the future")]
    ExpiryNotInFuture,
    /// The policy requires at least one audience.
    #[error("a token needs at least one audience")]
    NoAudience,
    /// A scope outside the declared catalogue.
    #[error("scope {scope} is not in the scope catalogue{}", nearest.as_ref().map(|n| format!(" (did you mean {n}?)")).unwrap_or_default())]
    UnknownScope {
        /// The scope that was asked for.
        scope: Scope,
        /// The closest scope the catalogue holds, if any is close.
        nearest: Option<Scope>,
    },
    /// The policy requires at least one scope.
    #[error("a token needs at least one scope")]
    NoScope,
    /// Shorter than [`IssuancePolicy::MIN_LIFETIME`].
    #[error("lifetime {requested:?} is shorter than the minimum of one second")]
    LifetimeTooShort {
        /// What was asked for.
        requested: Duration,
    },
    /// An empty, overlong (over 256 bytes) or control-character name, subject or label.
    #[error("{field} {value} must be 1 to 256 characters without control characters")]
    InvalidText {
        /// Which field.
        field: &'static str,
        /// The refused value (cut to 300 characters; withheld if token-shaped).
        value: Echo,
    },
    /// Rotation of a token that is revoked or expired.
    #[error("token {id} is {status} and cannot be rotated")]
    NotRotatable {
        /// The token.
        id: TokenId,
        /// Its state.
        status: TokenStatus,
    },
    /// A change to a revoked token.
    #[error("token {id} is {status} and cannot be changed")]
    NotChangeable {
        /// The token.
        id: TokenId,
        /// Its state.
        status: TokenStatus,
    },
    /// A usage reset of a token without a usage limit.
    #[error("token {id} has no usage limit (set one with update --uses)")]
    NotUsageLimited {
        /// The token.
        id: TokenId,
    },
    /// The token kept changing under this change (other processes
    /// changing it at the same time, more times than it was retried).
    #[error("token {id} was changed by others meanwhile; try again")]
    Contended {
        /// The token.
        id: TokenId,
    },
    /// A use count or refill amount larger than a store keeps
    /// ([`UseLimit::MAX`]).
    #[error(
        "{field} {value} is more than the most a token can have ({})",
        UseLimit::MAX
    )]
    UsesOutOfRange {
        /// Which number: `uses`, `refill` or `remaining`.
        field: &'static str,
        /// The refused number.
        value: u64,
    },
    /// A usage reset to more than the token's limit: the count left never
    /// exceeds it (raise the limit first).
    #[error("remaining {remaining} is more than the limit of {limit} uses (raise the limit first)")]
    RemainingOverLimit {
        /// The refused count.
        remaining: u64,
        /// The token's limit.
        limit: u64,
    },
    /// More rate quotas than a token may carry.
    #[error(
        "a token carries at most {} different rate quotas; {reason}",
        RateQuota::MAX_PER_TOKEN
    )]
    RateQuotas {
        /// What is wrong with them.
        reason: String,
    },
    /// A rotation's grace period past what the clock can represent or
    /// longer than the policy's maximum lifetime.
    #[error("grace period {requested:?} exceeds the maximum of {max:?}")]
    GraceTooLong {
        /// What was asked for.
        requested: Duration,
        /// The policy's maximum lifetime.
        max: Duration,
    },
    /// The store failed or the token does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses a limit whose numbers a store cannot keep: they are refused,
/// never stored as something else.
pub(crate) fn check_uses(limit: &UseLimit) -> Result<(), LifecycleError> {
    check_count("uses", limit.uses())?;
    if let Some(refill) = limit.refill() {
        check_count("refill", refill.amount())?;
    }
    Ok(())
}

/// Refuses more quotas than a token may carry.
pub(crate) fn check_quotas(quotas: &[RateQuota]) -> Result<(), LifecycleError> {
    if quotas.len() > RateQuota::MAX_PER_TOKEN {
        return Err(LifecycleError::RateQuotas {
            reason: format!("{} given", quotas.len()),
        });
    }
    Ok(())
}

/// `quota` added to `quotas` unless it is there (the same limit twice is
/// the same limit).
pub(crate) fn add_quota(quotas: &mut Vec<RateQuota>, quota: RateQuota) {
    if !quotas.contains(&quota) {
        quotas.push(quota);
    }
}

pub(crate) fn check_count(field: &'static str, value: u64) -> Result<(), LifecycleError> {
    if value > UseLimit::MAX {
        return Err(LifecycleError::UsesOutOfRange { field, value });
    }
    Ok(())
}

/// `at` in whole milliseconds since the epoch, rounded down.
fn floor_millis(at: SystemTime) -> SystemTime {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::time::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// `at` in whole milliseconds since the epoch, rounded up (an expiry never
/// comes earlier than asked).
fn ceil_millis(at: SystemTime) -> SystemTime {
    let floor = floor_millis(at);
    if floor < at {
        floor + Duration::from_millis(1)
    } else {
        floor
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), LifecycleError> {
    if value.trim().is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(LifecycleError::InvalidText {
            field,
            value: Echo::new(value, 300),
        });
    }
    Ok(())
}

/// Issues, rotates and revokes tokens under an [`IssuancePolicy`], on any
/// [`TokenAdmin`] store.
///
/// ```
/// use std::time::Duration;
/// use tokengate_core::{KeyId, Pepper, TokenHasher};
/// use tokengate_store::{Expiry, Lifecycle, MemoryStore, TokenSpec, TokenStore};
///
/// # tokio_test_block_on(async {
/// let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
/// let lifecycle = Lifecycle::new(MemoryStore::new(), hasher.clone());
/// let issued = lifecycle
///     .issue(
///         TokenSpec::new("ci", "team-a")
///             .scopes(["notes:read".parse()?])
///             .audiences(["notes".parse()?])
///             .expiry(Expiry::After(Duration::from_secs(3600))),
///     )
///     .await?;
/// let found = lifecycle.store().find_by_hash(&hasher.hash(&issued.token)).await?;
/// assert_eq!(found.map(|r| r.id), Some(issued.record.id));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Lifecycle<S> {
    store: S,
    hasher: TokenHasher,
    format: TokenFormat,
    policy: IssuancePolicy,
    clock: SharedClock,
}

impl<S: Clone> Clone for Lifecycle<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            hasher: self.hasher.clone(),
            format: self.format.clone(),
            policy: self.policy.clone(),
            clock: std::sync::Arc::clone(&self.clock),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Lifecycle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("store", &self.store)
            .field("format", &self.format)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: TokenAdmin> Lifecycle<S> {
    /// A lifecycle over `store`, hashing with `hasher`, issuing `tg_` tokens
    /// under the default policy and the system clock.
    pub fn new(store: S, hasher: TokenHasher) -> Self {
        Self {
            store,
            hasher,
            format: TokenFormat::default(),
            policy: IssuancePolicy::default(),
            clock: SystemClock::shared(),
        }
    }

    /// Issues tokens of `format`.
    pub fn with_format(mut self, format: TokenFormat) -> Self {
        self.format = format;
        self
    }

    /// Issues under `policy`.
    pub fn with_policy(mut self, policy: IssuancePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reads time from `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The hasher.
    pub fn hasher(&self) -> &TokenHasher {
        &self.hasher
    }

    /// The token format.
    pub fn format(&self) -> &TokenFormat {
        &self.format
    }

    /// Issues a token for `spec`. The returned token is the only copy.
    pub async fn issue(&self, spec: TokenSpec) -> Result<IssuedToken, LifecycleError> {
        let now = self.clock.now();
        let (issued, record) = self.build(&self.policy, spec, now, None)?;
        self.store.insert(record.clone()).await?;
        self.announce(EventType::Issued, &record, &[]).await;
        Ok(IssuedToken {
            token: issued,
            record,
        })
    }

    /// Revokes the token: it fails from the next request on.
    pub async fn revoke(&self, id: &TokenId) -> Result<TokenRecord, LifecycleError> {
        let record = self.store.revoke(id, self.clock.now()).await?;
        self.announce(EventType::Revoked, &record, &[]).await;
        Ok(record)
    }

    /// Writes the event `kind` of `record` to the store's webhook outbox
    /// (a store without webhooks takes none). The change it tells of has
    /// happened: an outbox that cannot take the event is logged, not
    /// turned into the change's failure.
    pub(crate) async fn announce(
        &self,
        kind: EventType,
        record: &TokenRecord,
        more: &[(&str, &str)],
    ) {
        let event = WebhookEvent::of(kind, record, self.clock.now(), more);
        if let Err(error) = self.store.enqueue_event(&event).await {
            tracing::error!(%error, event = kind.as_str(), token_id = %record.id,
                "the webhook outbox could not take an event");
        }
    }

    /// Replaces the token with a new one of the same grants and lifetime;
    /// the old one keeps working for `grace` (or until its own expiry, if
    /// sooner), so clients can switch without an outage. A token without
    /// expiry is replaced by one without expiry.
    ///
    /// A usage-limited token hands its count to the replacement, in the
    /// store's rotation step: the replacement has the uses left (and the
    /// same limit and refills), the old token none from then on (it is
    /// refused with `usage-exhausted` during its grace period), so
    /// rotating never adds uses.
    pub async fn rotate(
        &self,
        id: &TokenId,
        grace: Duration,
    ) -> Result<IssuedToken, LifecycleError> {
        self.rotate_with_expiry(id, grace, None).await
    }

    /// Like [`Lifecycle::rotate`], with the replacement's expiry given
    /// (`None` keeps the old token's rule). A given expiry obeys the policy.
    pub async fn rotate_with_expiry(
        &self,
        id: &TokenId,
        grace: Duration,
        expiry: Option<Expiry>,
    ) -> Result<IssuedToken, LifecycleError> {
        let now = self.clock.now();
        let old = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let status = old.status(now);
        if status != TokenStatus::Active {
            return Err(LifecycleError::NotRotatable {
                id: id.clone(),
                status,
            });
        }
        // The grants were checked when the old token was issued; rotation
        // carries them over as they are, and keeps a lifetime rule that the
        // policy allowed then.
        let mut policy = IssuancePolicy {
            require_audience: false,
            require_scope: false,
            catalogue: None,
            ..self.policy.clone()
        };
        let expiry = match (expiry, old.expires_at) {
            (Some(expiry), _) => expiry,
            (None, Some(at)) => Expiry::After(
                at.duration_since(old.created_at)
                    .unwrap_or(self.policy.default_lifetime)
                    .clamp(IssuancePolicy::MIN_LIFETIME, self.policy.max_lifetime),
            ),
            (None, None) => {
                policy.allow_no_expiry = true;
                Expiry::Never
            }
        };
        let spec = TokenSpec {
            name: old.name.clone(),
            subject: old.subject.clone(),
            scopes: old.scopes.clone(),
            audiences: old.audiences.clone(),
            expiry,
            allowed_networks: old.allowed_networks.clone(),
            rate_quotas: old.rate_quotas.clone(),
            metadata: old.metadata.clone(),
            uses: old.uses.map(|uses| uses.limit),
            // The replacement is bound to the same key: a rotation never
            // turns a bound token into a bearer one.
            binding: old.binding,
        };
        // Refused before anything is written: a grace the clock cannot
        // represent must never end the old token early instead.
        let grace_end = now
            .checked_add(grace)
            .filter(|_| grace <= self.policy.max_lifetime)
            .ok_or(LifecycleError::GraceTooLong {
                requested: grace,
                max: self.policy.max_lifetime,
            })?;
        let (token, record) = self.build(&policy, spec, now, Some(old.id.clone()))?;
        let old_expires_at = old.expires_at.map_or(grace_end, |at| at.min(grace_end));
        let old = self
            .store
            .rotate(id, old_expires_at, record.clone())
            .await?;
        self.announce(
            EventType::Rotated,
            &old,
            &[("replacement_id", record.id.as_str())],
        )
        .await;
        Ok(IssuedToken { token, record })
    }

    /// The record with `id`.
    pub async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, LifecycleError> {
        Ok(self.store.get(id).await?)
    }

    /// Adds `scopes` to the store's catalogue (see [`TokenAdmin::register_scopes`]).
    pub async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), LifecycleError> {
        Ok(self.store.register_scopes(scopes).await?)
    }

    /// The store's scope catalogue.
    pub async fn scope_catalogue(&self) -> Result<ScopeSet, LifecycleError> {
        Ok(self.store.scope_catalogue().await?)
    }

    /// Every record, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, LifecycleError> {
        Ok(self.store.list().await?)
    }

    fn build(
        &self,
        policy: &IssuancePolicy,
        spec: TokenSpec,
        now: SystemTime,
        rotated_from: Option<TokenId>,
    ) -> Result<(Token, TokenRecord), LifecycleError> {
        let expires_at = policy.validate(&spec, now)?;
        let token = self.format.generate();
        let record = TokenRecord {
            id: TokenId::generate(),
            hash: self.hasher.hash(&token),
            name: spec.name,
            subject: spec.subject,
            scopes: spec.scopes,
            audiences: spec.audiences,
            created_at: floor_millis(now),
            expires_at,
            revoked_at: None,
            disabled_at: None,
            last_used_at: None,
            allowed_networks: spec.allowed_networks,
            rate_quotas: spec.rate_quotas.clone(),
            binding: spec.binding,
            rotated_from,
            metadata: spec.metadata,
            uses: spec.uses.map(|limit| Uses::fresh(limit, now)),
            version: 0,
        };
        Ok((token, record))
    }
}

mod leak;
mod query;
mod spec;
mod update;

pub use leak::{
    LEAK_REPORTED_BY, LEAKED_AT, LeakAction, LeakActionError, LeakHandled, LeakOutcome,
};
pub use query::{QueryParts, TokenQuery};
pub use spec::{Expiry, IssuancePolicy, TokenSpec};
pub use update::TokenPatch;

#[cfg(test)]
mod tests;
