//! Changing a token without reissuing it: its grants, labels and expiry,
//! and a reversible disable.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ipnet::IpNet;

use super::{
    Expiry, IssuancePolicy, Lifecycle, LifecycleError, TokenSpec, add_quota, check_count,
    check_quotas, check_uses,
};
use crate::webhooks::EventType;
use crate::{StoreError, TokenAdmin};
use tokengate_core::Audience;
use tokengate_core::Binding;
use tokengate_core::TokenId;
use tokengate_core::{RateQuota, TokenRecord, TokenStatus};
use tokengate_core::{Scope, ScopeSet};
use tokengate_core::{UseLimit, Uses};

/// What to change of a token ([`Lifecycle::update`]); what is not set stays
/// as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenPatch {
    name: Option<String>,
    scopes: Option<ScopeSet>,
    add_scopes: Vec<Scope>,
    remove_scopes: Vec<Scope>,
    audiences: Option<Vec<Audience>>,
    expiry: Option<Expiry>,
    allowed_networks: Option<Vec<IpNet>>,
    rate_quotas: Option<Vec<RateQuota>>,
    set_metadata: BTreeMap<String, String>,
    remove_metadata: Vec<String>,
    uses: Option<Option<UseLimit>>,
    binding: Option<Option<Binding>>,
}

impl TokenPatch {
    /// No change yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A new name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces the scope set.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        self.scopes = Some(scopes.into_iter().collect());
        self
    }

    /// Adds a scope (after any replacement).
    pub fn add_scope(mut self, scope: Scope) -> Self {
        self.add_scopes.push(scope);
        self
    }

    /// Removes a scope (after any replacement and additions).
    pub fn remove_scope(mut self, scope: Scope) -> Self {
        self.remove_scopes.push(scope);
        self
    }

    /// Replaces the audiences.
    pub fn audiences(mut self, audiences: impl IntoIterator<Item = Audience>) -> Self {
        self.audiences = Some(audiences.into_iter().collect());
        self
    }

    /// A new expiry, from now, under the issuance policy (never past its
    /// maximum lifetime).
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = Some(expiry);
        self
    }

    /// Replaces the networks the token may be used from (empty: any).
    pub fn allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks = Some(networks.into_iter().collect());
        self
    }

    /// A rate quota of the token's own in place of its quotas, or `None`
    /// for the layer's default.
    pub fn rate_quota(self, quota: Option<RateQuota>) -> Self {
        self.rate_quotas(quota)
    }

    /// The token's rate quotas, all checked (empty: the layer's default;
    /// the same quota twice is kept once).
    pub fn rate_quotas(mut self, quotas: impl IntoIterator<Item = RateQuota>) -> Self {
        let mut kept = Vec::new();
        for quota in quotas {
            add_quota(&mut kept, quota);
        }
        self.rate_quotas = Some(kept);
        self
    }

    /// A new usage limit, or `None` for unlimited uses. The count left is
    /// kept where the token had one (set it with
    /// [`Lifecycle::reset_uses`]), but never above the new limit: lowering
    /// the limit caps the count; raising it keeps the count. A token
    /// limited for the first time starts with all of the limit's uses.
    pub fn uses(mut self, limit: Option<UseLimit>) -> Self {
        self.uses = Some(limit);
        self
    }

    /// Binds the token to a DPoP key or a client certificate, or makes it
    /// a bearer token again with `None` (an existing binding is replaced).
    pub fn binding(mut self, binding: Option<Binding>) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Sets a metadata label.
    pub fn set_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_metadata.insert(key.into(), value.into());
        self
    }

    /// Removes a metadata label.
    pub fn remove_metadata(mut self, key: impl Into<String>) -> Self {
        self.remove_metadata.push(key.into());
        self
    }

    /// `record` with the changes applied at `now` (the expiry aside).
    fn apply(&self, record: &mut TokenRecord, now: SystemTime) {
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        let mut scopes: Vec<Scope> = match &self.scopes {
            Some(scopes) => scopes.iter().cloned().collect(),
            None => record.scopes.iter().cloned().collect(),
        };
        scopes.extend(self.add_scopes.iter().cloned());
        scopes.retain(|scope| !self.remove_scopes.contains(scope));
        record.scopes = scopes.into_iter().collect();
        if let Some(audiences) = &self.audiences {
            record.audiences.clone_from(audiences);
        }
        if let Some(networks) = &self.allowed_networks {
            record.allowed_networks.clone_from(networks);
        }
        if let Some(quotas) = &self.rate_quotas {
            record.rate_quotas.clone_from(quotas);
        }
        if let Some(binding) = self.binding {
            record.binding = binding;
        }
        for (key, value) in &self.set_metadata {
            record.metadata.insert(key.clone(), value.clone());
        }
        for key in &self.remove_metadata {
            record.metadata.remove(key);
        }
        if let Some(limit) = self.uses {
            // A new refill starts counting from the current window: no
            // refill for the time before it.
            record.uses = limit.map(|limit| match record.uses {
                Some(uses) => uses.relimited(limit, limit.window(now)),
                None => Uses::fresh(limit, now),
            });
        }
    }
}

impl<S: TokenAdmin> Lifecycle<S> {
    /// Changes the token `id` without reissuing it. New scopes are checked
    /// against the catalogue and a new expiry against the policy, as at
    /// issuance; the token keeps its secret. Every instance's cache
    /// forgets the token through the store's change feed, so the change
    /// holds from the next request on (within the feed's bound). A revoked
    /// token cannot be changed.
    pub async fn update(
        &self,
        id: &TokenId,
        changes: &TokenPatch,
    ) -> Result<TokenRecord, LifecycleError> {
        if let Some(Some(limit)) = &changes.uses {
            check_uses(limit)?;
        }
        if let Some(quotas) = &changes.rate_quotas {
            check_quotas(quotas)?;
        }
        let record = self
            .changed(id, |record, now| {
                changes.apply(record, now);
                // The same checks as at issuance, but the expiry only when it
                // changes: an unchanged one was valid when the token was issued.
                let unchanged_expiry = IssuancePolicy {
                    allow_no_expiry: true,
                    ..self.policy.clone()
                };
                let mut spec = TokenSpec::new(record.name.clone(), record.subject.clone())
                    .scopes(record.scopes.iter().cloned())
                    .audiences(record.audiences.iter().cloned())
                    .expiry(Expiry::Never);
                spec.metadata.clone_from(&record.metadata);
                unchanged_expiry.validate(&spec, now)?;
                if let Some(expiry) = changes.expiry {
                    record.expires_at = self.policy.expiry_at(expiry, now)?;
                }
                Ok(())
            })
            .await?;
        self.announce(EventType::Updated, &record, &[]).await;
        Ok(record)
    }

    /// Disables the token: refused like a revoked one (401, the audit's
    /// reason `token_disabled`) until [`Lifecycle::enable`]. Disabling a
    /// disabled token keeps the first time.
    pub async fn disable(&self, id: &TokenId) -> Result<TokenRecord, LifecycleError> {
        let record = self
            .changed(id, |record, now| {
                record.disabled_at.get_or_insert(now);
                Ok(())
            })
            .await?;
        self.announce(EventType::Disabled, &record, &[]).await;
        Ok(record)
    }

    /// Enables a disabled token again.
    pub async fn enable(&self, id: &TokenId) -> Result<TokenRecord, LifecycleError> {
        let record = self
            .changed(id, |record, _| {
                record.disabled_at = None;
                Ok(())
            })
            .await?;
        self.announce(EventType::Enabled, &record, &[]).await;
        Ok(record)
    }

    /// Reads the token, changes it with `change` and writes it over the
    /// version read; when another process changed it meanwhile
    /// ([`StoreError::Stale`]), reads it again and changes that, so no
    /// change is lost (a few times, then [`LifecycleError::Contended`]).
    async fn changed(
        &self,
        id: &TokenId,
        change: impl Fn(&mut TokenRecord, SystemTime) -> Result<(), LifecycleError>,
    ) -> Result<TokenRecord, LifecycleError> {
        for _ in 0..8 {
            let now = self.clock.now();
            let mut record = self.changeable(id).await?;
            change(&mut record, now)?;
            match self.store.update(record, now).await {
                Err(StoreError::Stale(_)) => continue,
                written => return Ok(written?),
            }
        }
        Err(LifecycleError::Contended { id: id.clone() })
    }

    /// Sets the count a usage-limited token has left to `remaining` (by
    /// default the uses it was issued with, and never more), in the
    /// current refill window. Takes effect on the next request on every instance: the
    /// count is read from the store on every request.
    pub async fn reset_uses(
        &self,
        id: &TokenId,
        remaining: Option<u64>,
    ) -> Result<TokenRecord, LifecycleError> {
        let now = self.clock.now();
        let record = self.changeable(id).await?;
        let uses = record
            .uses
            .ok_or_else(|| LifecycleError::NotUsageLimited { id: id.clone() })?;
        let remaining = remaining.unwrap_or(uses.limit.uses());
        check_count("remaining", remaining)?;
        if remaining > uses.limit.most() {
            return Err(LifecycleError::RemainingOverLimit {
                remaining,
                limit: uses.limit.most(),
            });
        }
        Ok(self
            .store
            .reset_uses(id, remaining, uses.limit.window(now))
            .await?)
    }

    /// The stored record of `id`, unless it is revoked.
    async fn changeable(&self, id: &TokenId) -> Result<TokenRecord, LifecycleError> {
        let record = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        if record.revoked_at.is_some() {
            return Err(LifecycleError::NotChangeable {
                id: id.clone(),
                status: TokenStatus::Revoked,
            });
        }
        Ok(record)
    }
}
