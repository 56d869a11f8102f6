use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use super::{StoreError, TokenAdmin, TokenStore};
use crate::usage_counts::{self, UsageBatch, UsageBucket, UsageTotal};
use crate::webhooks::{Attempt, Delivery, DeliveryState, LEASE, Webhook, WebhookEvent};
use tokengate_core::ScopeSet;
use tokengate_core::Taken;
use tokengate_core::TokenHash;
use tokengate_core::TokenId;
use tokengate_core::TokenRecord;
use tokengate_core::UseSpend;

/// An in-memory store for tests, examples and single-process demos.
///
/// Clones share the same records. Nothing survives a restart: use the
/// SQLite store for anything real.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<RwLock<State>>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<TokenId, TokenRecord>,
    by_hash: HashMap<TokenHash, TokenId>,
    catalogue: ScopeSet,
    /// Per-token usage by hour, and when each hour's last client was seen.
    usage: HashMap<TokenId, BTreeMap<u64, UsageBucket>>,
    client_seen: HashMap<(TokenId, u64), SystemTime>,
    webhooks: Vec<Webhook>,
    /// Deliveries, with the lease and claimer of each.
    outbox: Vec<(Delivery, SystemTime, String)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.read(|s| s.records.len())
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner))
    }
}

impl State {
    fn check_free(&self, record: &TokenRecord) -> Result<(), StoreError> {
        if self.records.contains_key(&record.id) {
            return Err(StoreError::Conflict("id"));
        }
        if self.by_hash.contains_key(&record.hash) {
            return Err(StoreError::Conflict("hash"));
        }
        Ok(())
    }

    fn add(&mut self, record: TokenRecord) {
        self.by_hash.insert(record.hash, record.id.clone());
        self.records.insert(record.id.clone(), record);
    }

    fn record_mut(&mut self, id: &TokenId) -> Result<&mut TokenRecord, StoreError> {
        self.records
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }
}

impl TokenStore for MemoryStore {
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.read(|s| {
            s.by_hash
                .get(hash)
                .and_then(|id| s.records.get(id))
                .cloned()
        }))
    }

    async fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> Result<(), StoreError> {
        self.write(|s| {
            if s.by_hash.get(from) != Some(id) || s.by_hash.contains_key(&to) {
                return;
            }
            s.by_hash.remove(from);
            s.by_hash.insert(to, id.clone());
            if let Some(record) = s.records.get_mut(id) {
                record.hash = to;
            }
        });
        Ok(())
    }

    async fn spend_use(&self, id: &TokenId, spend: UseSpend) -> Result<Option<u64>, StoreError> {
        Ok(self.write(|s| {
            let uses = s.records.get_mut(id)?.uses.as_mut()?;
            uses.spend(spend)
        }))
    }

    async fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> Result<Taken, StoreError> {
        Ok(self.write(|s| {
            let Some(uses) = s.records.get_mut(id).and_then(|r| r.uses.as_mut()) else {
                return Taken::default();
            };
            uses.take(spend, want)
        }))
    }
}

impl TokenAdmin for MemoryStore {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.write(|s| {
            s.check_free(&record)?;
            s.add(record);
            Ok(())
        })
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.read(|s| s.records.get(id).cloned()))
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut all: Vec<TokenRecord> = self.read(|s| s.records.values().cloned().collect());
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        self.write(|s| {
            let record = s.record_mut(id)?;
            record.revoked_at.get_or_insert(at);
            Ok(record.clone())
        })
    }

    async fn update(
        &self,
        record: TokenRecord,
        _at: SystemTime,
    ) -> Result<TokenRecord, StoreError> {
        self.write(|s| {
            let stored = s.record_mut(&record.id)?;
            if stored.version != record.version {
                return Err(StoreError::Stale(record.id));
            }
            stored.version += 1;
            stored.name = record.name;
            stored.scopes = record.scopes;
            stored.audiences = record.audiences;
            stored.expires_at = record.expires_at;
            stored.disabled_at = record.disabled_at;
            stored.allowed_networks = record.allowed_networks;
            stored.rate_quotas.clone_from(&record.rate_quotas);
            stored.binding = record.binding;
            stored.metadata = record.metadata;
            stored.uses = match (stored.uses, record.uses) {
                (Some(kept), Some(new)) => Some(kept.relimited(new.limit, new.window)),
                (_, new) => new,
            };
            Ok(stored.clone())
        })
    }

    async fn reset_uses(
        &self,
        id: &TokenId,
        remaining: u64,
        window: u64,
    ) -> Result<TokenRecord, StoreError> {
        self.write(|s| {
            let record = s.record_mut(id)?;
            if let Some(uses) = &mut record.uses {
                uses.remaining = remaining;
                uses.window = window;
                uses.generation += 1;
            }
            Ok(record.clone())
        })
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        self.write(|s| {
            for (id, at) in used {
                if let Some(record) = s.records.get_mut(id) {
                    record.last_used_at = record.last_used_at.max(Some(*at));
                }
            }
        });
        Ok(())
    }

    async fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> Result<TokenRecord, StoreError> {
        self.write(|s| {
            s.record_mut(old)?;
            s.check_free(&replacement)?;
            let mut replacement = replacement;
            let record = s.record_mut(old)?;
            record.expires_at = Some(old_expires_at);
            record.hand_uses_to(&mut replacement);
            let record = record.clone();
            s.add(replacement);
            Ok(record)
        })
    }

    async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), StoreError> {
        self.write(|s| {
            s.catalogue = s.catalogue.iter().chain(scopes.iter()).cloned().collect();
        });
        Ok(())
    }

    async fn scope_catalogue(&self) -> Result<ScopeSet, StoreError> {
        Ok(self.read(|s| s.catalogue.clone()))
    }

    async fn add_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.write(|s| {
            batch.add_to(&mut s.usage);
            for seen in &batch.clients {
                let key = (seen.token_id.clone(), seen.hour);
                if s.client_seen.get(&key).is_some_and(|at| *at > seen.at) {
                    continue;
                }
                s.client_seen.insert(key, seen.at);
                s.usage
                    .entry(seen.token_id.clone())
                    .or_default()
                    .entry(seen.hour)
                    .or_insert_with(|| UsageBucket::empty(seen.hour))
                    .last_client = Some(seen.client);
            }
        });
        Ok(())
    }

    async fn usage(&self, id: &TokenId, since: SystemTime) -> Result<Vec<UsageBucket>, StoreError> {
        Ok(self.read(|s| usage_counts::buckets_since(&s.usage, id, since)))
    }

    async fn top_usage(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        Ok(self.read(|s| usage_counts::top_since(&s.usage, since, limit)))
    }

    async fn add_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        self.write(|s| {
            if s.webhooks.iter().any(|w| w.id == webhook.id) {
                return Err(StoreError::Conflict("id"));
            }
            s.webhooks.push(webhook.clone());
            Ok(())
        })
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        Ok(self.read(|s| s.webhooks.clone()))
    }

    async fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.write(|s| {
            let before = s.webhooks.len();
            s.webhooks.retain(|w| w.id != id);
            for (delivery, _, _) in &mut s.outbox {
                if delivery.webhook_id == id && delivery.state == DeliveryState::Pending {
                    delivery.state = DeliveryState::Failed;
                    delivery.last_error = Some("webhook removed".to_owned());
                }
            }
            s.webhooks.len() < before
        }))
    }

    async fn enqueue_event(&self, event: &WebhookEvent) -> Result<usize, StoreError> {
        Ok(self.write(|s| {
            let wanting: Vec<String> = s
                .webhooks
                .iter()
                .filter(|w| w.wants(event.kind))
                .filter(|w| {
                    !s.outbox
                        .iter()
                        .any(|(d, _, _)| d.webhook_id == w.id && d.event_id == event.id)
                })
                .map(|w| w.id.clone())
                .collect();
            for webhook_id in &wanting {
                let id = i64::try_from(s.outbox.len()).unwrap_or(i64::MAX) + 1;
                s.outbox.push((
                    Delivery {
                        id,
                        webhook_id: webhook_id.clone(),
                        event_id: event.id.clone(),
                        kind: event.kind,
                        body: event.body.clone(),
                        created: event.created,
                        attempts: 0,
                        state: DeliveryState::Pending,
                        next_at: event.created,
                        last_status: None,
                        last_error: None,
                    },
                    std::time::UNIX_EPOCH,
                    String::new(),
                ));
            }
            wanting.len()
        }))
    }

    async fn claim_deliveries(
        &self,
        now: SystemTime,
        claimer: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(self.write(|s| {
            let mut due: Vec<&mut (Delivery, SystemTime, String)> = s
                .outbox
                .iter_mut()
                .filter(|(d, lease, _)| {
                    d.state == DeliveryState::Pending && d.next_at <= now && *lease <= now
                })
                .collect();
            due.sort_by_key(|(d, _, _)| (d.next_at, d.id));
            due.into_iter()
                .take(limit)
                .map(|(d, lease, by)| {
                    *lease = now + LEASE;
                    claimer.clone_into(by);
                    d.clone()
                })
                .collect()
        }))
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claimer: &str,
        attempt: &Attempt,
    ) -> Result<bool, StoreError> {
        Ok(self.write(|s| {
            let Some((d, lease, _)) = s
                .outbox
                .iter_mut()
                .find(|(d, _, by)| d.id == id && by == claimer)
            else {
                return false;
            };
            d.attempts += 1;
            d.state = attempt.state;
            d.next_at = attempt.next_at;
            d.last_status = attempt.status;
            d.last_error.clone_from(&attempt.error);
            *lease = std::time::UNIX_EPOCH;
            true
        }))
    }

    async fn prune_deliveries(&self, before: SystemTime) -> Result<u64, StoreError> {
        Ok(self.write(|s| {
            let kept = s.outbox.len();
            s.outbox
                .retain(|(d, _, _)| d.state == DeliveryState::Pending || d.next_at >= before);
            (kept - s.outbox.len()) as u64
        }))
    }

    async fn deliveries(
        &self,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(self.read(|s| {
            s.outbox
                .iter()
                .rev()
                .map(|(d, _, _)| d)
                .filter(|d| {
                    !failed_only || d.last_error.is_some() && d.state != DeliveryState::Delivered
                })
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn prune_usage(&self, before: SystemTime) -> Result<u64, StoreError> {
        let keep_from = usage_counts::hour_of(before);
        Ok(self.write(|s| {
            let mut gone = 0;
            for hours in s.usage.values_mut() {
                let kept = hours.split_off(&keep_from);
                gone += hours
                    .values()
                    .map(|b| u64::from(b.admitted > 0) + b.refused.len() as u64)
                    .sum::<u64>();
                *hours = kept;
            }
            s.usage.retain(|_, hours| !hours.is_empty());
            s.client_seen.retain(|(_, hour), _| *hour >= keep_from);
            gone
        }))
    }
}
