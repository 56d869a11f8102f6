//! What a server runs on, opened in one call: the token store
//! ([`Database`]: a SQLite file, or PostgreSQL shared by every instance),
//! its pepper, a verifying cache that follows the store's change feed, the
//! lifecycle, a usage recorder and an audit file; readiness and the
//! metrics endpoint for an admin listener ([`ops_router`]).

mod database;
mod ops;
mod reload;

pub(crate) use database::FeedHealth;
pub use database::{AnyStore, Database, DatabaseError};
#[cfg(feature = "axum")]
pub use ops::ops_router;
pub use ops::{Component, Readiness, Report};

use std::error::Error;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use std::path::PathBuf;

use std::sync::Arc;

use tokengate_audit::{AuditKey, AuditLayer, CountUsage, JsonLinesSink, JsonLinesSinkBuilder};
use tokengate_authenticate::{AuthenticateLayer, UsageTracker};
use tokengate_cache::{CacheConfig, CachedStore};
use tokengate_core::{Audience, TokenHasher};
use tokengate_scope::{EnforceScopeLayer, ScopePolicy};
use tokengate_store::{IssuedToken, Lifecycle, TokenAdmin, TokenSpec, UsageTally};
use tokio::task::JoinHandle;

use crate::gate::Gate;

/// A boxed error for setup failures (each names what failed).
pub type SetupError = Box<dyn Error + Send + Sync>;

/// What a server runs on: the token store ([`Database`]: the embedded
/// SQLite file, or PostgreSQL shared by every instance) and its pepper, a
/// verifying cache that follows the store's change feed (revocations by
/// the CLI or another instance reach it within 250 ms on SQLite, as they
/// commit on PostgreSQL), the lifecycle over the
/// cache, a write-behind `last_used_at` tracker, and a JSON-lines audit
/// file chained under an audit key (`TOKENGATE_AUDIT_KEY`, or the 0600
/// file `<audit_log>.key` beside it, created on first use).
///
/// The peppers follow the database while the server runs: a `tokengate
/// pepper rotate` or `retire` by any process reaches it through the change
/// feed (as revocations do), and SIGHUP asks for the same. It then reads
/// the pepper file (or `TOKENGATE_PEPPER`) again, checks it against the
/// database, and hashes under the new set from the next request: tokens
/// issued under a new pepper verify, and a retired pepper verifies nothing.
/// [`Deployment::shutdown`] stops the background tasks and flushes.
pub struct Deployment {
    /// The token store.
    pub store: AnyStore,
    /// The verifying cache in front of it.
    pub cache: CachedStore<AnyStore>,
    /// The hasher under the database's pepper.
    pub hasher: TokenHasher,
    /// Issue, rotate and revoke through the cache.
    pub lifecycle: Lifecycle<CachedStore<AnyStore>>,
    /// `last_used_at`, written behind every 5 s.
    pub usage: UsageTracker,
    /// Per-token usage (requests by hour and outcome), counted by
    /// [`audit_sink`](Self::audit_sink) and added to the store every few
    /// seconds.
    pub usage_counts: Arc<UsageTally>,
    /// The audit file.
    pub audit: JsonLinesSink,
    tasks: Vec<JoinHandle<()>>,
    feed: FeedHealth,
    counting: bool,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("store", &self.store)
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`Deployment`]; made by [`Deployment::builder`].
#[derive(Debug, Clone)]
pub struct DeploymentBuilder {
    database: Database,
    pepper_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    audit_sink: JsonLinesSinkBuilder,
    upkeep: Upkeep,
}

/// The deployment's background work: per-token usage (flushed every
/// `flush`, kept `retention`) and webhook delivery.
#[derive(Debug, Clone, Copy)]
struct Upkeep {
    on: bool,
    flush: Duration,
    retention: Duration,
    /// How often the webhook outbox is polled; `None`: not delivered.
    webhook_poll: Option<Duration>,
    /// How long before its expiry a token's `token.expiring` is sent.
    expiring_within: Duration,
}

impl Default for Upkeep {
    fn default() -> Self {
        Self {
            on: true,
            flush: Duration::from_secs(5),
            retention: Duration::from_secs(90 * 86_400),
            webhook_poll: Some(Duration::from_secs(1)),
            expiring_within: Duration::from_secs(3 * 86_400),
        }
    }
}

impl DeploymentBuilder {
    /// Where the pepper is read from when `TOKENGATE_PEPPER` is not set
    /// (PostgreSQL; a SQLite database's pepper file is always beside it,
    /// see [`pepper_path`](crate::sqlite::pepper_path)).
    #[must_use]
    pub fn pepper_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pepper_file = Some(path.into());
        self
    }

    /// The audit file (JSON lines, hash-chained under a key kept in
    /// `<audit_log>.key`, or `TOKENGATE_AUDIT_KEY`). By default
    /// `audit.jsonl` beside a SQLite database, or in the working directory
    /// for PostgreSQL.
    #[must_use]
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_log = Some(path.into());
        self
    }

    /// How the audit file is written (queue, overflow, fsync; the key is
    /// the deployment's).
    #[must_use]
    pub fn audit_sink(mut self, sink: JsonLinesSinkBuilder) -> Self {
        self.audit_sink = sink;
        self
    }

    /// How often the per-token usage counted in memory is added to the
    /// store (5 s by default; at least 100 ms).
    #[must_use]
    pub fn usage_flush(mut self, every: Duration) -> Self {
        self.upkeep.flush = every.max(Duration::from_millis(100));
        self
    }

    /// How often the store's webhook outbox is polled for deliveries due
    /// (1 s by default, at least 100 ms); `None`: this deployment posts
    /// none (another server on the store does). Without the `webhooks`
    /// feature nothing is posted.
    #[must_use]
    pub fn webhook_poll(mut self, every: Option<Duration>) -> Self {
        self.upkeep.webhook_poll = every.map(|every| every.max(Duration::from_millis(100)));
        self
    }

    /// How long before its expiry a token's `token.expiring` webhook
    /// event is sent (3 days by default).
    #[must_use]
    pub fn webhook_expiring_within(mut self, window: Duration) -> Self {
        self.upkeep.expiring_within = window;
        self
    }

    /// Counts no per-token usage ([`Deployment::audit_sink`] then writes
    /// the audit file alone).
    #[must_use]
    pub fn no_usage_counts(mut self) -> Self {
        self.upkeep.on = false;
        self
    }

    /// How long per-token usage is kept (90 days by default; at least an
    /// hour): older hours are removed once an hour.
    #[must_use]
    pub fn usage_retention(mut self, retention: Duration) -> Self {
        self.upkeep.retention = retention.max(Duration::from_secs(3600));
        self
    }

    /// The audit settings of a policy file: its `[audit]` queue, overflow
    /// and fsync, and its file unless [`audit_log`](Self::audit_log) names
    /// one after this call.
    #[cfg(feature = "config")]
    #[must_use]
    pub fn config(mut self, config: &crate::config::GateConfig) -> Self {
        if let Some(file) = &config.audit().file {
            self.audit_log = Some(file.clone());
        }
        self.audit_sink(config.audit_sink())
    }

    /// Opens the database, creating a SQLite file with a new pepper on a
    /// first start (an existing database must come with its own pepper:
    /// see [`SqliteStore::pepper`](crate::sqlite::SqliteStore::pepper);
    /// for PostgreSQL the pepper comes from `TOKENGATE_PEPPER` or the
    /// pepper file), opens the audit file, and starts the change-feed
    /// follower, the usage flusher and the pepper reloader on the current
    /// tokio runtime.
    pub async fn open(self) -> Result<Deployment, SetupError> {
        let audit_log = match (&self.audit_log, &self.database) {
            (Some(path), _) => path.clone(),
            (None, Database::Sqlite(db)) => db.with_file_name("audit.jsonl"),
            #[cfg(feature = "postgres")]
            (None, Database::Postgres(_)) => PathBuf::from("audit.jsonl"),
        };
        Deployment::start(
            &self.database,
            self.pepper_file.as_deref(),
            &audit_log,
            self.audit_sink,
            self.upkeep,
        )
        .await
    }
}

impl Deployment {
    /// Opens the database `database` (a SQLite file's path, or a
    /// `postgres://` URL) with the defaults of [`Deployment::builder`].
    pub async fn open(database: &str) -> Result<Self, SetupError> {
        Self::builder(database.parse()?).open().await
    }

    /// Settings for a deployment on `database`.
    pub fn builder(database: Database) -> DeploymentBuilder {
        DeploymentBuilder {
            database,
            pepper_file: None,
            audit_log: None,
            audit_sink: JsonLinesSinkBuilder::default(),
            upkeep: Upkeep::default(),
        }
    }

    /// See [`DeploymentBuilder::open`].
    async fn start(
        db: &Database,
        pepper_file: Option<&Path>,
        audit_log: &Path,
        audit_sink: JsonLinesSinkBuilder,
        upkeep: Upkeep,
    ) -> Result<Self, SetupError> {
        let (store, peppers) = db.open(true, pepper_file).await?;
        // The current pepper, knowing those rotated out.
        let hasher = peppers.hasher();
        let cache = CachedStore::new(store.clone(), CacheConfig::default());
        let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
        let usage = UsageTracker::new(100_000);
        let usage_counts = Arc::new(UsageTally::default());
        let audit = audit_sink
            .key(AuditKey::load_or_create(audit_log)?)
            .open(audit_log)
            .map_err(|e| format!("cannot open audit log: {e}"))?;
        let (follower, feed) = store.follow_watched(cache.clone());
        let tasks = vec![
            follower,
            usage.spawn_flusher(store.clone(), Duration::from_secs(5)),
            tokio::spawn(keep_usage_counts(
                store.clone(),
                Arc::clone(&usage_counts),
                upkeep,
            )),
            tokio::spawn(reload::follow_peppers(
                store.clone(),
                pepper_file.map(Path::to_path_buf),
                hasher.clone(),
                cache.pepper_changes(),
            )),
        ];
        #[cfg(feature = "webhooks")]
        let tasks = {
            let mut tasks = tasks;
            if let Some(every) = upkeep.webhook_poll {
                let deliverer = crate::webhooks::Deliverer::new(store.clone())
                    .expiring_within(upkeep.expiring_within);
                tasks.push(deliverer.spawn(every));
            }
            tasks
        };
        Ok(Self {
            store,
            cache,
            hasher,
            lifecycle,
            usage,
            usage_counts,
            counting: upkeep.on,
            audit,
            tasks,
            feed,
        })
    }

    /// The audit sink of this deployment's Gates: the audit file, with
    /// every request counted for its token's usage on the way
    /// ([`usage_counts`](Self::usage_counts)).
    pub fn audit_sink(&self) -> CountUsage<JsonLinesSink> {
        if self.counting {
            CountUsage::new(self.audit.clone(), Arc::clone(&self.usage_counts))
        } else {
            CountUsage::off(self.audit.clone())
        }
    }

    /// What `/readyz` checks for this deployment: the store, its change
    /// feed and the audit file's writer (add the Redis rate state with
    /// [`Readiness::redis`](Readiness::redis)).
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.store.clone(), self.feed.clone()).audit(self.audit.clone())
    }

    /// An authenticate layer for `audience` over this store, recording
    /// usage. Under the `axum` feature it also redacts a query token (if
    /// one is accepted, see
    /// [`query_param`](AuthenticateLayer::query_param)) from axum's
    /// `OriginalUri`.
    pub fn authenticate(&self, audience: Audience) -> AuthenticateLayer<AnyStore> {
        let layer = AuthenticateLayer::new(self.cache.clone(), self.hasher.clone(), audience)
            .usage(self.usage.clone());
        #[cfg(feature = "axum")]
        let layer = layer.redact_uri_copy(crate::axum::original_uri);
        layer
    }

    /// Registers the scopes `policy` asks for in the store's scope
    /// catalogue, so that `tokengate issue` refuses a scope this server
    /// would never accept.
    pub async fn register_scopes(&self, policy: &ScopePolicy) -> Result<(), SetupError> {
        Ok(self.lifecycle.register_scopes(&policy.scopes()).await?)
    }

    /// Issues `spec` if the store holds no token at all (a first start);
    /// the token is in the result, to show once.
    pub async fn issue_if_empty(&self, spec: TokenSpec) -> Result<Option<IssuedToken>, SetupError> {
        if !self.lifecycle.list().await?.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.lifecycle.issue(spec).await?))
    }

    /// The [`Gate`] for the audience `audience` under `policy`, with this
    /// deployment's authentication (over the cache, recording usage) and
    /// audit file, and the defaults of [`Gate::new`] for the rest. What
    /// the policy declares public needs no token; its scopes are
    /// registered in the store's catalogue, so that `tokengate issue`
    /// refuses a scope this server would never accept.
    pub async fn gate(
        &self,
        audience: &str,
        policy: ScopePolicy,
    ) -> Result<Gate<AnyStore, ScopePolicy, CountUsage<JsonLinesSink>>, SetupError> {
        let audience: Audience = audience.parse()?;
        self.register_scopes(&policy).await?;
        Ok(
            Gate::new(self.authenticate(audience), EnforceScopeLayer::new(policy))
                .audit(AuditLayer::new(self.audit_sink())),
        )
    }

    /// The [`Gate`] a policy file describes (its audience, routes,
    /// networks, quotas, headers and credentials), with this deployment's
    /// authentication and audit file; its scopes are registered in the
    /// store's catalogue. A Rust service and `tokengate serve` on the same
    /// file answer alike.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tokengate::deployment::SetupError> {
    /// use tokengate::Deployment;
    /// use tokengate::config::GateConfig;
    ///
    /// let config = GateConfig::load("notes.toml")?;
    /// let deployment = Deployment::builder("tokengate.db".parse()?).config(&config).open().await?;
    /// let gate = deployment.gate_from_config(&config).await?;
    /// # let _ = gate; Ok(()) }
    /// ```
    #[cfg(feature = "config")]
    pub async fn gate_from_config(
        &self,
        config: &crate::config::GateConfig,
    ) -> Result<Gate<AnyStore, ScopePolicy, CountUsage<JsonLinesSink>>, SetupError> {
        self.register_scopes(config.policy()).await?;
        let authenticate = self.authenticate(config.audience().clone());
        Ok(config
            .configure(authenticate)
            .audit(AuditLayer::new(self.audit_sink())))
    }

    /// Stops the background tasks, writes pending usage and flushes the
    /// audit file.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.usage.flush(&self.store).await;
        if let Err(error) = self.usage_counts.flush(&self.store).await {
            tracing::warn!(%error, "could not write per-token usage at shutdown");
        }
        self.audit.shutdown();
    }
}

/// Adds the usage counted in memory to the store every `settings.flush`
/// (a failed write is kept for the next), and removes hours older than
/// the retention once an hour.
async fn keep_usage_counts(store: AnyStore, tally: Arc<UsageTally>, settings: Upkeep) {
    let mut tick = tokio::time::interval(settings.flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if let Err(error) = tally.flush(&store).await {
            tracing::warn!(%error, "could not write per-token usage; kept for the next flush");
        }
        if pruned.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            let before = std::time::SystemTime::now()
                .checked_sub(settings.retention)
                .unwrap_or(std::time::UNIX_EPOCH);
            match store.prune_usage(before).await {
                Ok(_) => pruned = Some(std::time::Instant::now()),
                Err(error) => tracing::warn!(%error, "could not remove old per-token usage"),
            }
        }
    }
}

/// Resolves when the process is asked to stop: SIGTERM (what docker,
/// systemd and Kubernetes send) or SIGINT (Ctrl-C). Pass it to your
/// server's graceful shutdown, then flush the audit sink, so that no
/// queued record is lost:
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn serve(app: axum::Router, deployment: tokengate::Deployment) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
///     .with_graceful_shutdown(tokengate::shutdown_signal())
///     .await?;
/// deployment.shutdown().await; // writes pending usage, flushes the audit file
/// # Ok(()) }
/// ```
///
/// If the SIGTERM handler cannot be installed, it waits for SIGINT alone.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
