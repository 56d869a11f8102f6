//! What to issue, and the policy every issuance is checked against.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokengate_core::{Audience, Binding, RateQuota, Scope, ScopeSet, UseLimit};

use super::{LifecycleError, add_quota, ceil_millis, check_quotas, check_text, check_uses};

pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

/// When a new token should expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Expiry {
    /// The policy's default lifetime.
    #[default]
    Default,
    /// This long after issuance.
    After(Duration),
    /// At this time.
    At(SystemTime),
    /// Never; refused unless the policy allows tokens without expiry.
    Never,
}

/// The rules every issued token obeys.
///
/// Defaults: at most 90 days of life, 90 days when none is asked for, at
/// least one second, no token without expiry, at least one audience, at
/// least one scope, any well-formed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuancePolicy {
    pub(crate) max_lifetime: Duration,
    pub(crate) default_lifetime: Duration,
    pub(crate) allow_no_expiry: bool,
    pub(crate) require_audience: bool,
    pub(crate) require_scope: bool,
    pub(crate) catalogue: Option<ScopeSet>,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            max_lifetime: 90 * DAY,
            default_lifetime: 90 * DAY,
            allow_no_expiry: false,
            require_audience: true,
            require_scope: true,
            catalogue: None,
        }
    }
}

impl IssuancePolicy {
    /// The shortest lifetime a token may be issued with. Stores keep times
    /// in milliseconds; a lifetime of a second or more can never round to
    /// a token that is born expired.
    pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

    /// Sets the longest lifetime a token may be issued with (the default
    /// lifetime is lowered to it if it was longer).
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self.default_lifetime = self.default_lifetime.min(max);
        self
    }

    /// Sets the lifetime of tokens issued with [`Expiry::Default`] (capped at
    /// the maximum).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime.min(self.max_lifetime);
        self
    }

    /// Allows [`Expiry::Never`]. Such tokens live until revoked: an explicit
    /// opt-out, for machine credentials that are rotated by other means.
    pub fn allow_no_expiry(mut self) -> Self {
        self.allow_no_expiry = true;
        self
    }

    /// Allows tokens that name no audience. They are refused by every layer
    /// that guards an audience, so this is rarely what you want.
    pub fn allow_no_audience(mut self) -> Self {
        self.require_audience = false;
        self
    }

    /// Allows tokens with no scope at all. Such a token opens only routes
    /// that ask for nothing but a valid token, which is rarely what an
    /// issuer meant.
    pub fn allow_no_scope(mut self) -> Self {
        self.require_scope = false;
        self
    }

    /// Only scopes from `catalogue` may be issued.
    pub fn scope_catalogue(mut self, catalogue: ScopeSet) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Validates `spec` against this policy as if it were issued at `now`,
    /// and answers when it would expire. [`Lifecycle::issue`](crate::Lifecycle::issue) runs the same
    /// checks; call this to refuse bad input before opening or creating
    /// anything.
    pub fn validate(
        &self,
        spec: &TokenSpec,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, LifecycleError> {
        check_text("name", &spec.name)?;
        check_text("subject", &spec.subject)?;
        for (key, value) in &spec.metadata {
            check_text("metadata key", key)?;
            check_text("metadata value", value)?;
        }
        if self.require_audience && spec.audiences.is_empty() {
            return Err(LifecycleError::NoAudience);
        }
        if self.require_scope && spec.scopes.is_empty() {
            return Err(LifecycleError::NoScope);
        }
        self.check_scopes(&spec.scopes)?;
        check_quotas(&spec.rate_quotas)?;
        if let Some(limit) = &spec.uses {
            check_uses(limit)?;
        }
        self.expiry_at(spec.expiry, now)
    }

    pub(crate) fn expiry_at(
        &self,
        expiry: Expiry,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, LifecycleError> {
        let at = match expiry {
            Expiry::Default => now + self.default_lifetime,
            Expiry::After(lifetime) => {
                now.checked_add(lifetime)
                    .ok_or(LifecycleError::LifetimeTooLong {
                        requested: lifetime,
                        max: self.max_lifetime,
                    })?
            }
            Expiry::At(at) => at,
            Expiry::Never if self.allow_no_expiry => return Ok(None),
            Expiry::Never => return Err(LifecycleError::NoExpiryNotAllowed),
        };
        let lifetime = at
            .duration_since(now)
            .map_err(|_| LifecycleError::ExpiryNotInFuture)?;
        if lifetime.is_zero() {
            return Err(LifecycleError::ExpiryNotInFuture);
        }
        if lifetime < Self::MIN_LIFETIME {
            return Err(LifecycleError::LifetimeTooShort {
                requested: lifetime,
            });
        }
        if lifetime > self.max_lifetime {
            return Err(LifecycleError::LifetimeTooLong {
                requested: lifetime,
                max: self.max_lifetime,
            });
        }
        // Whole milliseconds, rounded up, as every store keeps it: the
        // record handed back at issue is the one read back later.
        Ok(Some(ceil_millis(at)))
    }

    pub(crate) fn check_scopes(&self, scopes: &ScopeSet) -> Result<(), LifecycleError> {
        let Some(catalogue) = &self.catalogue else {
            return Ok(());
        };
        match scopes.iter().find(|s| !catalogue.contains(s)) {
            Some(unknown) => Err(LifecycleError::UnknownScope {
                scope: unknown.clone(),
                nearest: catalogue.nearest(unknown).cloned(),
            }),
            None => Ok(()),
        }
    }
}

/// What to issue: everything about a token but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub(crate) name: String,
    pub(crate) subject: String,
    pub(crate) scopes: ScopeSet,
    pub(crate) audiences: Vec<Audience>,
    pub(crate) expiry: Expiry,
    pub(crate) allowed_networks: Vec<IpNet>,
    pub(crate) rate_quotas: Vec<RateQuota>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) uses: Option<UseLimit>,
    pub(crate) binding: Option<Binding>,
}

impl TokenSpec {
    /// A token called `name` for `subject`, with no scopes yet.
    pub fn new(name: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            subject: subject.into(),
            scopes: ScopeSet::empty(),
            audiences: Vec::new(),
            expiry: Expiry::Default,
            allowed_networks: Vec::new(),
            rate_quotas: Vec::new(),
            metadata: BTreeMap::new(),
            uses: None,
            binding: None,
        }
    }

    /// Grants these scopes.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        self.scopes = self.scopes.iter().cloned().chain(scopes).collect();
        self
    }

    /// Allows the token at these services.
    pub fn audiences(mut self, audiences: impl IntoIterator<Item = Audience>) -> Self {
        self.audiences.extend(audiences);
        self.audiences.sort();
        self.audiences.dedup();
        self
    }

    /// Sets when the token expires.
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// Restricts the token to these networks (IPv4-mapped IPv6 networks
    /// are stored as the IPv4 networks they stand for).
    pub fn allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks
            .extend(networks.into_iter().map(tokengate_core::canonical_net));
        self
    }

    /// Binds the token to a DPoP key or a client certificate: it works only
    /// beside a proof that its client holds the key (see [`Binding`]).
    pub fn binding(mut self, binding: Binding) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Gives the token a rate quota of its own (in place of the
    /// per-token limiter's default); given again, another, all checked
    /// (`100/min` and `10000/d`, say; at most
    /// [`RateQuota::MAX_PER_TOKEN`]; the same quota twice is kept once).
    pub fn rate_quota(mut self, quota: RateQuota) -> Self {
        add_quota(&mut self.rate_quotas, quota);
        self
    }

    /// Limits the token to a number of requests ([`UseLimit`]): each
    /// admitted request spends one, in the store.
    pub fn uses(mut self, limit: UseLimit) -> Self {
        self.uses = Some(limit);
        self
    }

    /// Adds an application label.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}
