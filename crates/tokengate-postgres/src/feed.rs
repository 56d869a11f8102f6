//! The change feed: `NOTIFY` sent in the transaction that revokes or
//! rotates a token, `LISTEN` on a dedicated connection in every instance,
//! each notification applied to that instance's cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokengate_core::{KeyId, TokenHash, TokenRecord};
use tokengate_store::{FeedConsumer, FeedEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::PostgresStore;

/// The channel every change is announced on.
pub(crate) const CHANNEL: &str = "tokengate_changes";

/// The feed connection's `application_name`, as `pg_stat_activity` shows it.
pub const FEED_APPLICATION: &str = "tokengate-feed";

/// The first wait before reconnecting after a failed attempt, doubled per
/// failure up to [`MAX_BACKOFF`]. A connection that was up reconnects at once.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often an idle feed proves its connection alive: a connection lost
/// without a word (a network partition) is noticed within this plus the
/// store's timeout.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// One change, as its notification carries it: `<kind> <id> <key id> <hash
/// hex>` for a token, `pepper` for a pepper recorded or retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Token {
        kind: &'static str,
        event: FeedEvent,
    },
    Peppers,
}

impl Change {
    pub(crate) fn of(kind: &'static str, record: &TokenRecord) -> Self {
        Self::Token {
            kind,
            event: FeedEvent::Token {
                id: record.id.clone(),
                hash: record.hash,
            },
        }
    }

    pub(crate) fn payload(&self) -> String {
        match self {
            Self::Token {
                kind,
                event: FeedEvent::Token { id, hash },
            } => format!("{kind} {id} {} {}", hash.key_id().get(), hash.to_hex()),
            Self::Token { kind, .. } => (*kind).to_owned(),
            Self::Peppers => "pepper".to_owned(),
        }
    }

    /// The event a consumer applies.
    fn into_event(self) -> FeedEvent {
        match self {
            Self::Token { event, .. } => event,
            Self::Peppers => FeedEvent::Peppers,
        }
    }

    /// The change in `payload`, or `None` for one this build does not know.
    pub(crate) fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let kind = match parts.next()? {
            "revoked" => "revoked",
            "rotated" => "rotated",
            "updated" => "updated",
            "pepper" if parts.next().is_none() => return Some(Self::Peppers),
            _ => return None,
        };
        let id = parts.next()?.parse().ok()?;
        let key_id = KeyId::new(parts.next()?.parse().ok()?);
        let digest: [u8; 32] = hex_decode(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self::Token {
            kind,
            event: FeedEvent::Token {
                id,
                hash: TokenHash::from_parts(key_id, digest),
            },
        })
    }
}

fn hex_decode(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// What a feed has done so far; read with [`Feed::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStatus {
    /// Whether the feed is listening now. While it is not, changes made
    /// elsewhere do not reach this instance's cache until it reconnects
    /// (and flushes).
    pub connected: bool,
    /// Changes applied to the cache.
    pub events: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u64,
    /// Times the whole cache was emptied because changes may have been
    /// missed (each reconnect).
    pub flushes: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    events: AtomicU64,
    reconnects: AtomicU64,
    flushes: AtomicU64,
    metrics: FeedMetrics,
}

/// The feed's metric handles, registered once (see
/// `tokengate_core::metric_names`).
struct FeedMetrics {
    events: metrics::Counter,
    reconnects: metrics::Counter,
    flushes: metrics::Counter,
    connected: metrics::Gauge,
    last_event: metrics::Gauge,
}

impl Default for FeedMetrics {
    fn default() -> Self {
        use tokengate_core::metric_names::{
            FEED_CONNECTED, FEED_EVENTS, FEED_FLUSHES, FEED_LAST_EVENT, FEED_RECONNECTS,
        };
        Self {
            events: metrics::counter!(FEED_EVENTS),
            reconnects: metrics::counter!(FEED_RECONNECTS),
            flushes: metrics::counter!(FEED_FLUSHES),
            connected: metrics::gauge!(FEED_CONNECTED),
            last_event: metrics::gauge!(FEED_LAST_EVENT),
        }
    }
}

impl FeedMetrics {
    /// The feed heard from the store now.
    fn heard(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_event.set(now.as_secs_f64());
    }
}

/// A running feed (see [`PostgresStore::follow`]). Dropping it does not
/// stop it; [`Feed::stop`] does.
pub struct Feed {
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// What the feed has done so far.
    pub fn status(&self) -> FeedStatus {
        status(&self.counters)
    }

    /// Stops the feed.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// The feed's task, for callers that keep a list of handles to abort.
    pub fn into_task(self) -> JoinHandle<()> {
        self.task
    }

    /// A handle that reads the feed's status, for readiness checks; it
    /// outlives [`Feed::into_task`].
    pub fn watch(&self) -> FeedWatch {
        FeedWatch {
            counters: Arc::clone(&self.counters),
        }
    }
}

/// Reads a running feed's [`FeedStatus`] (see [`Feed::watch`]).
#[derive(Clone)]
pub struct FeedWatch {
    counters: Arc<Counters>,
}

impl FeedWatch {
    /// What the feed has done so far.
    pub fn status(&self) -> FeedStatus {
        status(&self.counters)
    }
}

impl fmt::Debug for FeedWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedWatch")
            .field("status", &self.status())
            .finish()
    }
}

fn status(c: &Counters) -> FeedStatus {
    FeedStatus {
        connected: c.connected.load(Ordering::Acquire),
        events: c.events.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        flushes: c.flushes.load(Ordering::Relaxed),
    }
}

impl PostgresStore {
    /// Follows the change feed: listens on a connection of its own and
    /// hands `consumer` (the verifying cache) every change, by any
    /// instance, as soon as its transaction commits.
    ///
    /// A lost connection is made again, at once and then with backoff
    /// (100 ms doubling to 5 s); notifications sent meanwhile are lost, so
    /// once it listens again the feed flushes `consumer` before the next
    /// change: a token revoked during the outage fails on its next use.
    /// An idle connection is checked every 5 s. Runs until [`Feed::stop`].
    pub fn follow(&self, consumer: impl FeedConsumer) -> Feed {
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(self.clone(), consumer, Arc::clone(&counters)));
        Feed { task, counters }
    }
}

async fn run(store: PostgresStore, consumer: impl FeedConsumer, counters: Arc<Counters>) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let error = listen(&store, &consumer, &counters, &mut first).await;
        let was_up = counters.connected.swap(false, Ordering::AcqRel);
        counters.metrics.connected.set(0.0);
        tracing::warn!(
            database = store.database(),
            %error,
            "token change feed lost; revocations from other instances wait until it reconnects"
        );
        if was_up {
            backoff = MIN_BACKOFF;
            continue;
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Between 3/4 and 5/4 of `wait`, so that many instances losing one
/// database do not reconnect in step.
fn jittered(wait: Duration) -> Duration {
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let quarter = wait / 4;
    let spread = u32::try_from(quarter.as_micros())
        .unwrap_or(u32::MAX)
        .max(1);
    wait - quarter + Duration::from_micros(u64::from(noise % (2 * spread)))
}

/// Listens until the connection fails; returns why.
async fn listen(
    store: &PostgresStore,
    consumer: &impl FeedConsumer,
    counters: &Counters,
    first: &mut bool,
) -> FeedError {
    let timeout = store.timeout();
    let mut config = store.config().clone();
    config.application_name(FEED_APPLICATION);
    let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await;
    let (client, mut connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => return FeedError::Postgres(error),
        Err(_) => return FeedError::Timeout,
    };
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            let item = match message {
                Ok(AsyncMessage::Notification(n)) => Ok(n.payload().to_owned()),
                Ok(_) => continue, // a notice
                Err(error) => Err(error),
            };
            let end = item.is_err();
            if sender.send(item).is_err() || end {
                break;
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    let listen = format!("LISTEN {CHANNEL}");
    let listening = tokio::time::timeout(timeout, client.batch_execute(&listen));
    match listening.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return FeedError::Postgres(error),
        Err(_) => return FeedError::Timeout,
    }
    // Listening from here on; whatever changed before may have been missed.
    if !std::mem::take(first) {
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        counters.metrics.reconnects.increment(1);
    }
    consumer.flush();
    counters.flushes.fetch_add(1, Ordering::Relaxed);
    counters.metrics.flushes.increment(1);
    counters.connected.store(true, Ordering::Release);
    counters.metrics.connected.set(1.0);
    counters.metrics.heard();
    tracing::info!(database = store.database(), "token change feed listening");
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    loop {
        tokio::select! {
            received = notifications.recv() => match received {
                Some(Ok(payload)) => match Change::parse(&payload) {
                    Some(change) => {
                        consumer.apply(&change.into_event());
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        counters.metrics.events.increment(1);
                        counters.metrics.heard();
                    }
                    None => {
                        // A change this build cannot read: forget everything
                        // rather than keep serving what it may have changed.
                        tracing::warn!(payload, "unknown token change; cache flushed");
                        consumer.flush();
                        counters.flushes.fetch_add(1, Ordering::Relaxed);
                        counters.metrics.flushes.increment(1);
                    }
                },
                Some(Err(error)) => return FeedError::Postgres(error),
                None => return FeedError::Closed,
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(timeout, client.simple_query("")).await {
                    Ok(Ok(_)) => counters.metrics.heard(),
                    Ok(Err(error)) => return FeedError::Postgres(error),
                    Err(_) => return FeedError::Timeout,
                }
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
    #[error("no answer within the store's timeout")]
    Timeout,
    #[error("connection closed")]
    Closed,
}
