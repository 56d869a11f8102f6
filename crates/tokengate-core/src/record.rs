//! What a store keeps about a token.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::audience::Audience;
use crate::binding::Binding;
use crate::hash::TokenHash;
use crate::id::TokenId;
use crate::scope::ScopeSet;
use crate::uses::Uses;

/// Everything a store keeps about one token. Never the token itself: only
/// its keyed [`TokenHash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id.
    pub id: TokenId,
    /// Keyed hash of the token: what lookups go by.
    pub hash: TokenHash,
    /// A human label, e.g. `ci-deploy`.
    pub name: String,
    /// The owner: a user, service account or tenant id.
    pub subject: String,
    /// What the token may do.
    pub scopes: ScopeSet,
    /// The services the token may be used at.
    pub audiences: Vec<Audience>,
    /// When the token was issued.
    pub created_at: SystemTime,
    /// When the token stops working; `None` only where the issuance policy
    /// allowed a token without expiry.
    pub expires_at: Option<SystemTime>,
    /// When the token was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// When the token was disabled, while it is: refused like a revoked
    /// token, but reversibly (`Lifecycle::enable`).
    pub disabled_at: Option<SystemTime>,
    /// When the token was last seen on a request (written behind, approximate).
    pub last_used_at: Option<SystemTime>,
    /// Networks the token may be used from; empty means any.
    pub allowed_networks: Vec<IpNet>,
    /// The token's own rate quotas, overriding the per-token limiter's
    /// default: every one is checked, the tightest stated in the headers
    /// (`100/min` and `10000/d` together, say). At most
    /// [`RateQuota::MAX_PER_TOKEN`]; empty for the limiter's default.
    pub rate_quotas: Vec<RateQuota>,
    /// The key or certificate the token is bound to: requests must prove
    /// they hold it (`None`: a bearer token).
    pub binding: Option<Binding>,
    /// The token this one replaced by rotation, if any.
    pub rotated_from: Option<TokenId>,
    /// Free-form labels for applications (never secrets).
    pub metadata: BTreeMap<String, String>,
    /// A usage-limited token's limit and count (as read; every admitted
    /// request spends one in the store); `None` for a token of unlimited
    /// uses.
    pub uses: Option<Uses>,
    /// How many times the record was changed through
    /// `TokenAdmin::update`, which writes
    /// only over the version it was read at (a change made meanwhile by
    /// another process is never overwritten; the lifecycle reads again and
    /// reapplies).
    pub version: u64,
}

impl TokenRecord {
    /// Rotation's hand-over: where both this token and its `replacement`
    /// are usage-limited, the replacement gets the count left and this
    /// token none, for good ([`Uses::hand_over`]). Returns this token's
    /// count after it, for the store to write.
    pub fn hand_uses_to(&mut self, replacement: &mut TokenRecord) -> Option<Uses> {
        let (kept, new) = (self.uses.as_mut()?, replacement.uses.as_mut()?);
        *new = kept.hand_over();
        Some(*kept)
    }

    /// The state of the token at `now`. Revocation wins over a disable,
    /// which wins over expiry.
    pub fn status(&self, now: SystemTime) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.disabled_at.is_some() {
            TokenStatus::Disabled
        } else if self.expires_at.is_some_and(|at| at <= now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }
}

/// Whether a token works at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenStatus {
    /// Neither expired nor revoked.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
    /// Disabled, until enabled again.
    Disabled,
}

impl TokenStatus {
    /// A stable lowercase name: `active`, `expired`, `revoked`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
        }
    }
}

impl std::str::FromStr for TokenStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Active, Self::Expired, Self::Revoked, Self::Disabled]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}: expected active, expired, revoked or disabled")
            })
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rate quota: `count` requests per `period`, with bursts of up to `burst`.
///
/// The rate layer reads it as GCRA: one request is allowed every
/// `period / count`, and up to `burst` may arrive back to back after idling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateQuota {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl RateQuota {
    /// The most quotas one token may carry (each is a rate-state key
    /// checked on every request).
    pub const MAX_PER_TOKEN: usize = 5;

    /// `count` requests per `period`, bursts of up to `burst`. The period
    /// must be at least one millisecond and at most one year.
    pub fn new(count: NonZeroU32, period: Duration, burst: NonZeroU32) -> Result<Self, QuotaError> {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
        if period < Duration::from_millis(1) || period > YEAR {
            return Err(QuotaError::Period { period });
        }
        Ok(Self {
            count,
            period,
            burst,
        })
    }

    /// Requests per period.
    pub fn count(&self) -> NonZeroU32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The largest burst.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl fmt::Display for RateQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {:?}, burst {}",
            self.count, self.period, self.burst
        )
    }
}

/// A rate quota that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The period is shorter than 1 ms or longer than a year.
    #[error("rate period {period:?} must be between 1ms and 366 days")]
    Period {
        /// The refused period.
        period: Duration,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::KeyId;

    pub(crate) fn record() -> TokenRecord {
        TokenRecord {
            id: TokenId::generate(),
            hash: TokenHash::from_parts(KeyId::new(1), [0; 32]),
            name: "ci".into(),
            subject: "user-1".into(),
            scopes: "notes:read".parse().unwrap(),
            audiences: vec!["notes".parse().unwrap()],
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            revoked_at: None,
            disabled_at: None,
            uses: None,
            version: 0,
            last_used_at: None,
            allowed_networks: vec![],
            rate_quotas: Vec::new(),
            binding: None,
            rotated_from: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn status_follows_expiry_and_revocation() {
        let mut r = record();
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(r.status(t(99)), TokenStatus::Active);
        assert_eq!(r.status(t(100)), TokenStatus::Expired);
        r.disabled_at = Some(t(40));
        assert_eq!(r.status(t(10)), TokenStatus::Disabled);
        assert_eq!(r.status(t(200)), TokenStatus::Disabled);
        r.revoked_at = Some(t(50));
        assert_eq!(r.status(t(10)), TokenStatus::Revoked);
        assert_eq!(r.status(t(200)), TokenStatus::Revoked);
        r.revoked_at = None;
        r.disabled_at = None;
        r.expires_at = None;
        assert_eq!(r.status(t(u32::MAX.into())), TokenStatus::Active);
    }

    #[test]
    fn quota_rejects_degenerate_periods_and_computes_interval() {
        let n = |v| NonZeroU32::new(v).unwrap();
        assert!(RateQuota::new(n(1), Duration::ZERO, n(1)).is_err());
        let err = RateQuota::new(n(1), Duration::from_secs(400 * 86_400), n(1)).unwrap_err();
        assert!(err.to_string().contains("34560000s"), "{err}");
        let q = RateQuota::new(n(100), Duration::from_secs(60), n(10)).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_millis(600));
        assert_eq!(q.to_string(), "100 per 60s, burst 10");
    }
}
