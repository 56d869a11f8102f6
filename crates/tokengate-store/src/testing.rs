//! Test support: a store wrapper that counts lookups and injects faults.
//!
//! Enabled by the `testing` feature (and in this crate's own tests). Use it
//! in the tests of layers and applications to assert how many store
//! lookups a request made, and what happens when the store fails, hangs or
//! answers late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::Semaphore;

mod conformance;

pub use conformance::store_conformance;

use crate::{MemoryStore, StoreError, TokenAdmin, TokenStore};
use tokengate_core::ScopeSet;
use tokengate_core::Taken;
use tokengate_core::TokenHash;
use tokengate_core::TokenId;
use tokengate_core::TokenRecord;
use tokengate_core::UseSpend;

/// A [`MemoryStore`] behind probes: counts lookups, can fail them, hang
/// them, or hold one lookup after it has read the store (to stage races
/// with revocation). Clones share everything.
#[derive(Debug, Clone)]
pub struct ProbeStore {
    inner: MemoryStore,
    lookups: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    hanging: Arc<AtomicBool>,
    hold_next: Arc<AtomicBool>,
    release: Arc<Semaphore>,
    held: Arc<Semaphore>,
}

impl Default for ProbeStore {
    fn default() -> Self {
        Self::new(MemoryStore::new())
    }
}

impl ProbeStore {
    /// Probes around `inner`.
    pub fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            lookups: Arc::default(),
            failing: Arc::default(),
            hanging: Arc::default(),
            hold_next: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            held: Arc::new(Semaphore::new(0)),
        }
    }

    /// The store behind the probes (writes to it bypass any cache: "another
    /// process").
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    /// How many `find_by_hash` calls were made.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Makes lookups and `get` fail with [`StoreError::Timeout`] (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes lookups never answer (or answer again).
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }

    /// Holds the next lookup after it has read the store, until
    /// [`ProbeStore::release`].
    pub fn hold_next_lookup(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    /// Waits until a lookup is being held.
    pub async fn held(&self) {
        if let Ok(permit) = self.held.acquire().await {
            permit.forget();
        }
    }

    /// Lets the held lookup answer.
    pub fn release(&self) {
        self.release.add_permits(1);
    }

    fn fault(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Timeout)
        } else {
            Ok(())
        }
    }
}

impl TokenStore for ProbeStore {
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.fault()?;
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let found = self.inner.find_by_hash(hash).await;
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.held.add_permits(1);
            if let Ok(permit) = self.release.acquire().await {
                permit.forget();
            }
        }
        found
    }

    async fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> Result<(), StoreError> {
        self.inner.rehash(id, from, to).await
    }

    /// Failing and hanging as lookups do (not counted with them).
    async fn spend_use(&self, id: &TokenId, spend: UseSpend) -> Result<Option<u64>, StoreError> {
        self.fault()?;
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.spend_use(id, spend).await
    }

    /// Failing and hanging as lookups do (not counted with them).
    async fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> Result<Taken, StoreError> {
        self.fault()?;
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.take_uses(id, spend, want).await
    }
}

impl TokenAdmin for ProbeStore {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.fault()?;
        self.inner.get(id).await
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.list().await
    }

    async fn query(
        &self,
        query: &crate::TokenQuery,
        now: SystemTime,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.query(query, now).await
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        self.inner.revoke(id, at).await
    }

    async fn update(&self, record: TokenRecord, at: SystemTime) -> Result<TokenRecord, StoreError> {
        self.inner.update(record, at).await
    }

    async fn reset_uses(
        &self,
        id: &TokenId,
        remaining: u64,
        window: u64,
    ) -> Result<TokenRecord, StoreError> {
        self.inner.reset_uses(id, remaining, window).await
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        self.inner.record_usage(used).await
    }

    async fn add_usage(&self, batch: &crate::UsageBatch) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.add_usage(batch).await
    }

    async fn usage(
        &self,
        id: &TokenId,
        since: SystemTime,
    ) -> Result<Vec<crate::UsageBucket>, StoreError> {
        self.inner.usage(id, since).await
    }

    async fn top_usage(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> Result<Vec<crate::UsageTotal>, StoreError> {
        self.inner.top_usage(since, limit).await
    }

    async fn prune_usage(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.inner.prune_usage(before).await
    }

    async fn add_webhook(&self, webhook: &crate::Webhook) -> Result<(), StoreError> {
        self.inner.add_webhook(webhook).await
    }

    async fn webhooks(&self) -> Result<Vec<crate::Webhook>, StoreError> {
        self.inner.webhooks().await
    }

    async fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.remove_webhook(id).await
    }

    async fn enqueue_event(&self, event: &crate::WebhookEvent) -> Result<usize, StoreError> {
        self.inner.enqueue_event(event).await
    }

    async fn claim_deliveries(
        &self,
        now: SystemTime,
        claimer: &str,
        limit: usize,
    ) -> Result<Vec<crate::Delivery>, StoreError> {
        self.inner.claim_deliveries(now, claimer, limit).await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claimer: &str,
        attempt: &crate::Attempt,
    ) -> Result<bool, StoreError> {
        self.inner.finish_delivery(id, claimer, attempt).await
    }

    async fn prune_deliveries(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.inner.prune_deliveries(before).await
    }

    async fn deliveries(
        &self,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<crate::Delivery>, StoreError> {
        self.inner.deliveries(failed_only, limit).await
    }

    async fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> Result<TokenRecord, StoreError> {
        self.inner.rotate(old, old_expires_at, replacement).await
    }

    async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), StoreError> {
        self.inner.register_scopes(scopes).await
    }

    async fn scope_catalogue(&self) -> Result<ScopeSet, StoreError> {
        self.inner.scope_catalogue().await
    }
}

/// A valid record for `subject` with `scopes` (space-separated) and
/// audience `notes`, unexpiring, with a fresh id and a zero hash: for
/// tests that need a [`Principal`](tokengate_core::Principal) without a store.
///
/// # Panics
///
/// If `scopes` does not parse (a bug in the test).
#[allow(
    clippy::expect_used,
    reason = "test support: a bad literal is a bug in the test"
)]
pub fn record(subject: &str, scopes: &str) -> TokenRecord {
    TokenRecord {
        id: TokenId::generate(),
        hash: TokenHash::from_parts(tokengate_core::KeyId::new(0), [0; 32]),
        name: "test".into(),
        subject: subject.into(),
        scopes: scopes.parse().expect("test scopes must parse"),
        audiences: vec!["notes".parse().expect("a valid audience")],
        created_at: SystemTime::UNIX_EPOCH,
        expires_at: None,
        revoked_at: None,
        disabled_at: None,
        uses: None,
        version: 0,
        last_used_at: None,
        allowed_networks: Vec::new(),
        rate_quotas: Vec::new(),
        binding: None,
        rotated_from: None,
        metadata: std::collections::BTreeMap::new(),
    }
}

/// A TCP proxy on a port of its own that can be cut and restored, or
/// slowed: a service (Redis, PostgreSQL) going away and coming back, or
/// answering late, as its clients see it.
#[derive(Debug)]
pub struct Proxy {
    addr: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    target: String,
    /// Milliseconds each chunk waits before it is passed on.
    latency: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[allow(
    clippy::expect_used,
    reason = "test support: a port that cannot be bound ends the test"
)]
impl Proxy {
    /// Listens on a free local port and forwards every connection to
    /// `target` (`host:port`).
    ///
    /// # Panics
    ///
    /// If no local port can be bound.
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound port has an address");
        let mut proxy = Self {
            addr,
            task: None,
            target: target.to_owned(),
            latency: std::sync::Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// The port's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// From now on every chunk, each way, on every connection (open or
    /// new), is passed on `latency` after it arrived: a store answering
    /// late. `Duration::ZERO` passes chunks on at once again.
    pub fn set_latency(&self, latency: std::time::Duration) {
        let millis = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency
            .store(millis, std::sync::atomic::Ordering::Relaxed);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let latency = std::sync::Arc::clone(&self.latency);
        self.task = Some(tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let latency = std::sync::Arc::clone(&latency);
                links.spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(target).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::join!(
                            pass_on(client_in, server_out, &latency),
                            pass_on(server_in, client_out, &latency),
                        );
                    }
                });
            }
        }));
    }

    /// Closes the port and every connection through it.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    ///
    /// # Panics
    ///
    /// If the port was taken meanwhile.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the proxy's port, still free");
        self.serve(listener);
    }
}

/// Copies `from` to `to`, each chunk after the proxy's latency, until
/// either end closes.
async fn pass_on(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: &std::sync::atomic::AtomicU64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let millis = latency.load(std::sync::atomic::Ordering::Relaxed);
        if millis > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
