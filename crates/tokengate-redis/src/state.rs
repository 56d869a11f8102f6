//! `RedisRateState`: the rate state every instance shares.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokengate_core::RateFallback;
use tokengate_rate::{Charge, MemoryRateState, Outcome, RateState, RateStateError};
use tokio::sync::Notify;

use crate::batch::{Buffers, Decide, Queue, Waiting};
use crate::script::{ANSWER, GCRA, args, outcome, write_key};

/// What a request gets when Redis does not answer within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Unavailable {
    /// Decide with in-memory state instead: limits still hold, per
    /// instance, until Redis answers again. The default.
    #[default]
    Local,
    /// Refuse: 503 (gRPC 14), as a store outage is.
    FailClosed,
    /// Admit, unlimited, until Redis answers again.
    FailOpen,
}

/// A configuration that cannot work. Names the bad value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStateError {
    /// The URL is not a Redis URL.
    #[error("{url:?} is not a Redis URL: {source}")]
    Url {
        /// The URL given (its password, if any, replaced).
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// A prefix that cannot be a hash tag.
    #[error("rate key prefix {prefix:?} must be 1 to 64 characters without '{{', '}}' or spaces")]
    Prefix {
        /// The prefix given.
        prefix: String,
    },
}

/// Rate state in Redis, shared by every instance that uses the same
/// server and prefix: N replicas give a token its quota once, not N times.
///
/// A script ([`EVALSHA`, loaded again on `NOSCRIPT`](redis::Script))
/// decides every limiter of a request at once, all-then-commit, on the
/// Redis server's clock, so instances with skewed clocks agree; requests
/// that wait at the same time share one call (see the crate's docs).
/// Keys are `{prefix}:<limiter>:<kind>:<key>` and expire when their
/// bucket is full again.
///
/// Every call is bounded by a timeout (50 ms by default: `cargo bench
/// --bench redis_tail` saw round trips up to 30 ms on a loaded machine,
/// none past 50 ms), and all of one request's calls by one deadline
/// started from it ([`SharedDeadline`](tokengate_core::SharedDeadline));
/// past it, or
/// when Redis cannot be reached, [`Unavailable`] decides (by default the
/// instance's own in-memory state, counted in
/// [`fallbacks`](Self::fallbacks)). The connection is made on first use
/// and re-made when it drops, so an instance starts and serves while Redis
/// is down.
#[derive(Clone)]
pub struct RedisRateState {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    client: redis::Client,
    connection: Arc<Slot>,
    script: redis::Script,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    unavailable: Unavailable,
    local: MemoryRateState,
    fallbacks: AtomicU64,
    round_trips: AtomicU64,
    queue: Queue,
    metrics: StateMetrics,
}

impl fmt::Debug for RedisRateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RedisRateState")
            .field("prefix", &s.prefix)
            .field("timeout", &s.timeout)
            .field("unavailable", &s.unavailable)
            .field("fallbacks", &s.fallbacks.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisRateState {
    /// State at `url` (`redis://host:port/db`) under the prefix
    /// `tokengate`, a 50 ms timeout and the [`Unavailable::Local`] policy.
    /// Nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, RedisStateError> {
        let client = redis::Client::open(url).map_err(|source| RedisStateError::Url {
            url: redact(url),
            source,
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                connection: Arc::default(),
                script: redis::Script::new(GCRA),
                prefix: "tokengate".into(),
                timeout: Duration::from_millis(50),
                unavailable: Unavailable::Local,
                local: MemoryRateState::default(),
                fallbacks: AtomicU64::new(0),
                round_trips: AtomicU64::new(0),
                queue: Queue::default(),
                metrics: StateMetrics::new(),
            }),
        })
    }

    fn with(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|shared| Shared {
            client: shared.client.clone(),
            connection: Arc::default(),
            script: redis::Script::new(GCRA),
            prefix: shared.prefix.clone(),
            timeout: shared.timeout,
            unavailable: shared.unavailable,
            local: shared.local.clone(),
            fallbacks: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            queue: Queue::default(),
            metrics: StateMetrics::new(),
        });
        change(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Keys under `prefix` (its own per deployment, or per test). It is
    /// also the keys' hash tag.
    pub fn prefix(self, prefix: &str) -> Result<Self, RedisStateError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 64
            && !prefix.contains(['{', '}'])
            && !prefix.chars().any(char::is_whitespace);
        if !valid {
            return Err(RedisStateError::Prefix {
                prefix: prefix.to_owned(),
            });
        }
        let prefix = prefix.to_owned();
        Ok(self.with(|s| s.prefix = prefix))
    }

    /// Bounds every call to Redis by `timeout`.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.timeout = timeout)
    }

    /// What to do when Redis does not answer in time.
    pub fn unavailable(self, policy: Unavailable) -> Self {
        self.with(|s| s.unavailable = policy)
    }

    /// The policy in force when Redis does not answer.
    pub fn policy(&self) -> Unavailable {
        self.shared.unavailable
    }

    /// How many requests were decided by the [`Unavailable`] policy
    /// because Redis did not answer in time.
    pub fn fallbacks(&self) -> u64 {
        self.shared.fallbacks.load(Ordering::Relaxed)
    }

    /// How many script calls decided requests (each call decides every
    /// request that was waiting when it was sent): beside the requests
    /// served, how well concurrent requests share round trips.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Whether Redis answers a `PING` within the state's timeout (making
    /// the connection first if there is none yet): for readiness checks.
    pub async fn ping(&self) -> Result<(), RateStateError> {
        let shared = &*self.shared;
        let ping = async {
            let mut connection = shared.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        match tokio::time::timeout(shared.timeout.max(Duration::from_secs(1)), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(RateStateError(error.to_string().into())),
            Err(_) => Err(RateStateError("timed out".into())),
        }
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }
}

/// `url` with every credential hidden, for error messages.
fn redact(url: &str) -> String {
    tokengate_store::redact_url(url)
}

/// The connection, made by a task of its own on first use: a request's
/// future that is polled once and parked (as a check's first poll is) must
/// not hold up every other request waiting for the connection.
#[derive(Default)]
struct Slot {
    manager: std::sync::OnceLock<ConnectionManager>,
    connecting: std::sync::atomic::AtomicBool,
    ready: Notify,
}

impl Shared {
    /// The connection manager, once made; the first caller starts making
    /// it (again after a failed attempt).
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let slot = &self.connection;
        if let Some(manager) = slot.manager.get() {
            return Ok(manager.clone());
        }
        // Created before the attempt can finish: a notification is not missed.
        let ready = slot.ready.notified();
        if !slot.connecting.swap(true, Ordering::AcqRel) {
            let (slot, client) = (Arc::clone(slot), self.client.clone());
            tokio::spawn(async move {
                // No response timeout of the client's own: every call is
                // bounded here (the state's timeout, the request's
                // deadline), and a call abandoned by its request is still
                // followed until its answer lands, so that what it did can
                // be given back (a timeout is not a "no").
                let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
                match ConnectionManager::new_with_config(client, config).await {
                    Ok(manager) => drop(slot.manager.set(manager)),
                    Err(error) => tracing::debug!(%error, "cannot connect to redis"),
                }
                slot.connecting.store(false, Ordering::Release);
                slot.ready.notify_waiters();
            });
        }
        if let Some(manager) = slot.manager.get() {
            return Ok(manager.clone());
        }
        ready.await;
        slot.manager.get().cloned().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "cannot connect to redis"))
        })
    }
}

/// One script call deciding every request of a batch.
impl Decide for Shared {
    async fn decide(
        &self,
        batch: &[Waiting],
        until: std::time::Instant,
        buffers: &mut Buffers,
    ) -> Result<(), RateStateError> {
        let command = &mut buffers.command;
        command.clear();
        let keys: usize = batch.iter().map(|waiting| waiting.charges.len()).sum();
        command.arg("EVALSHA").arg(self.script.get_hash()).arg(keys);
        for charge in batch.iter().flat_map(|waiting| waiting.charges.iter()) {
            write_key(&mut buffers.key, &self.prefix, charge);
            command.arg(buffers.key.as_str());
        }
        command.arg(batch.len());
        for waiting in batch {
            command.arg(waiting.charges.len());
            for number in waiting.charges.iter().flat_map(args) {
                command.arg(number);
            }
        }
        let command = &*command;
        let call = async {
            let mut connection = self.connection().await?;
            match command.query_async::<Vec<i64>>(&mut connection).await {
                Err(error)
                    if error.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.script.load_async(&mut connection).await?;
                    command.query_async::<Vec<i64>>(&mut connection).await
                }
                answered => answered,
            }
        };
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout_at(until.into(), call).await;
        let elapsed = started.elapsed();
        self.metrics.round_trip.record(elapsed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "tokengate",
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            requests = batch.len(),
            ok = matches!(answered, Ok(Ok(_))),
            "shared rate state round trip"
        );
        let answer = match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(RateStateError(error.to_string().into())),
            Err(_) => return Err(RateStateError("timed out".into())),
        };
        buffers.answers.clear();
        if answer.len() == ANSWER * batch.len() {
            buffers
                .answers
                .extend(answer.chunks_exact(ANSWER).map_while(outcome));
        }
        if buffers.answers.len() == batch.len() {
            Ok(())
        } else {
            Err(RateStateError(
                format!("unexpected answer {answer:?}").into(),
            ))
        }
    }
}

impl Shared {
    /// The policy's answer for `charges` at `now` (local clock).
    fn fallback(
        &self,
        charges: &[Charge],
        now: u64,
        error: &RateStateError,
    ) -> Result<Outcome, RateStateError> {
        let count = self.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.unavailable {
            Unavailable::Local => &self.metrics.fallback_local,
            Unavailable::FailClosed => &self.metrics.fallback_closed,
            Unavailable::FailOpen => &self.metrics.fallback_open,
        }
        .increment(1);
        if count == 0 || count.is_power_of_two() {
            tracing::warn!(%error, policy = ?self.unavailable, fallbacks = count + 1, "redis rate state unavailable");
        }
        match self.unavailable {
            Unavailable::Local => Ok(match self.local.decide(charges, now) {
                Outcome::Refused {
                    charge,
                    retry_after,
                    ..
                } => Outcome::Refused {
                    charge,
                    retry_after,
                    fallback: Some(RateFallback::Local),
                },
                Outcome::Admitted { tightest, .. } => Outcome::Admitted {
                    tightest,
                    fallback: Some(RateFallback::Local),
                },
                other => other,
            }),
            Unavailable::FailClosed => Err(error.clone()),
            Unavailable::FailOpen => Ok(Outcome::Admitted {
                tightest: None,
                fallback: Some(RateFallback::FailOpen),
            }),
        }
    }
}

impl RateState for RedisRateState {
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, RateStateError>> + Send>>;

    fn acquire(&self, charges: &[Charge], now: u64) -> Self::Future {
        self.acquire_by(charges, now, None)
    }

    fn wait_budget(&self) -> Option<Duration> {
        Some(self.shared.timeout)
    }

    fn acquire_by(
        &self,
        charges: &[Charge],
        now: u64,
        deadline: Option<std::time::Instant>,
    ) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let charges: Arc<[Charge]> = Arc::from(charges);
        Box::pin(async move {
            let until = tokengate_core::SharedDeadline::bound(deadline, shared.timeout);
            let (answer, answered) = tokio::sync::oneshot::channel();
            let waiting = Waiting {
                charges: Arc::clone(&charges),
                until,
                answer,
            };
            shared.queue.push(&shared, waiting);
            let answered = match tokio::time::timeout_at(until.into(), answered).await {
                Ok(Ok(answered)) => answered,
                Ok(Err(_)) => Err(RateStateError("the redis batcher stopped".into())),
                Err(_) => Err(RateStateError("timed out".into())),
            };
            match answered {
                Ok(outcome) => Ok(outcome),
                Err(error) => shared.fallback(&charges, now, &error),
            }
        })
    }
}

/// The shared state's metric handles, registered once (see
/// `tokengate_core::metric_names`).
struct StateMetrics {
    round_trip: metrics::Histogram,
    fallback_local: metrics::Counter,
    fallback_open: metrics::Counter,
    fallback_closed: metrics::Counter,
}

impl StateMetrics {
    fn new() -> Self {
        use tokengate_core::metric_names::{RATE_STATE_DURATION, RATE_STATE_FALLBACKS};
        let fallbacks =
            |policy: &'static str| metrics::counter!(RATE_STATE_FALLBACKS, "policy" => policy);
        Self {
            round_trip: metrics::histogram!(RATE_STATE_DURATION),
            fallback_local: fallbacks("local"),
            fallback_open: fallbacks("fail_open"),
            fallback_closed: fallbacks("fail_closed"),
        }
    }
}
