//! The store traits through the cache: lookups verified and cached,
//! changes written through and forgotten.

use super::*;

impl<S: TokenStore> TokenStore for CachedStore<S> {
    /// Reads through to the store, uncached (the request path uses
    /// [`CachedStore::verify`]).
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.shared.store.find_by_hash(hash).await
    }

    /// Moves the token in the store, then forgets both hashes here.
    async fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> Result<(), StoreError> {
        self.shared.store.rehash(id, from, to).await?;
        self.invalidate(from);
        self.invalidate(&to);
        Ok(())
    }

    /// Spends in the store, uncached: the store's count is the truth.
    async fn spend_use(&self, id: &TokenId, spend: UseSpend) -> Result<Option<u64>, StoreError> {
        self.shared.store.spend_use(id, spend).await
    }

    /// Takes in the store, uncached.
    async fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> Result<Taken, StoreError> {
        self.shared.store.take_uses(id, spend, want).await
    }
}

impl<S: TokenAdmin> TokenAdmin for CachedStore<S> {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        let hash = record.hash;
        self.shared.store.insert(record).await?;
        self.invalidate(&hash);
        Ok(())
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.shared.store.get(id).await
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.shared.store.list().await
    }

    async fn query(
        &self,
        query: &TokenQuery,
        now: SystemTime,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.shared.store.query(query, now).await
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        let record = self.shared.store.revoke(id, at).await?;
        self.invalidate(&record.hash);
        Ok(record)
    }

    async fn update(&self, record: TokenRecord, at: SystemTime) -> Result<TokenRecord, StoreError> {
        let record = self.shared.store.update(record, at).await?;
        self.invalidate(&record.hash);
        Ok(record)
    }

    /// Forgets the token: its principal carries the count's generation.
    async fn reset_uses(
        &self,
        id: &TokenId,
        remaining: u64,
        window: u64,
    ) -> Result<TokenRecord, StoreError> {
        let record = self.shared.store.reset_uses(id, remaining, window).await?;
        self.invalidate(&record.hash);
        Ok(record)
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        self.shared.store.record_usage(used).await
    }

    async fn add_usage(&self, batch: &tokengate_store::UsageBatch) -> Result<(), StoreError> {
        self.shared.store.add_usage(batch).await
    }

    async fn usage(
        &self,
        id: &TokenId,
        since: SystemTime,
    ) -> Result<Vec<tokengate_store::UsageBucket>, StoreError> {
        self.shared.store.usage(id, since).await
    }

    async fn top_usage(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> Result<Vec<tokengate_store::UsageTotal>, StoreError> {
        self.shared.store.top_usage(since, limit).await
    }

    async fn prune_usage(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.shared.store.prune_usage(before).await
    }

    async fn add_webhook(&self, webhook: &tokengate_store::Webhook) -> Result<(), StoreError> {
        self.shared.store.add_webhook(webhook).await
    }

    async fn webhooks(&self) -> Result<Vec<tokengate_store::Webhook>, StoreError> {
        self.shared.store.webhooks().await
    }

    async fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.shared.store.remove_webhook(id).await
    }

    async fn enqueue_event(
        &self,
        event: &tokengate_store::WebhookEvent,
    ) -> Result<usize, StoreError> {
        self.shared.store.enqueue_event(event).await
    }

    async fn claim_deliveries(
        &self,
        now: SystemTime,
        claimer: &str,
        limit: usize,
    ) -> Result<Vec<tokengate_store::Delivery>, StoreError> {
        self.shared
            .store
            .claim_deliveries(now, claimer, limit)
            .await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claimer: &str,
        attempt: &tokengate_store::Attempt,
    ) -> Result<bool, StoreError> {
        self.shared
            .store
            .finish_delivery(id, claimer, attempt)
            .await
    }

    async fn prune_deliveries(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.shared.store.prune_deliveries(before).await
    }

    async fn deliveries(
        &self,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<tokengate_store::Delivery>, StoreError> {
        self.shared.store.deliveries(failed_only, limit).await
    }

    async fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> Result<TokenRecord, StoreError> {
        let new_hash = replacement.hash;
        let record = self
            .shared
            .store
            .rotate(old, old_expires_at, replacement)
            .await?;
        self.invalidate(&record.hash);
        self.invalidate(&new_hash);
        Ok(record)
    }

    async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), StoreError> {
        self.shared.store.register_scopes(scopes).await
    }

    async fn scope_catalogue(&self) -> Result<ScopeSet, StoreError> {
        self.shared.store.scope_catalogue().await
    }
}
