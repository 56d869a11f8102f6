//! Lifecycle webhooks: the events the token lifecycle writes to the
//! store's outbox (issued, updated, rotated, revoked, disabled, enabled,
//! leaked), posted to each subscribed URL, signed, retried with backoff.
//!
//! Every change made through a [`Lifecycle`](crate::Lifecycle) (the CLI,
//! the admin API, a leak report) writes its event to the store's outbox,
//! one delivery per webhook that wants its type; servers deliver them
//! ([`Deliverer`]: every `Deployment` runs one). A delivery is claimed
//! under a lease in one statement, so of several servers on one store
//! exactly one posts it; a receiver that is down or answers other than
//! 2xx gets it again 5 s later, then twice as long each time up to an
//! hour apart, for three days. Only a server that dies between posting and
//! recording the answer makes a second post of the same event (receivers
//! deduplicate by the event's `id`).
//!
//! A delivery is `POST` with `Content-Type: application/json`, the body
//! `{"id", "type", "created", "data": {"token_id", "name", "subject",
//! "status", ...}}` (never a token), and
//! `Tokengate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! the scheme Stripe's webhooks use: [`verify`] checks one.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tokengate::webhooks::{sign, verify};
//!
//! let body = br#"{"id":"evt_1","type":"token.revoked"}"#;
//! let now = SystemTime::now();
//! let header = sign("whsec_0123456789abcdef0123456789abcdef", now, body);
//! assert!(verify("whsec_0123456789abcdef0123456789abcdef", &header, body, now, Duration::from_secs(300)).is_ok());
//! assert!(verify("whsec_another_secret_of_32_characters", &header, body, now, Duration::from_secs(300)).is_err());
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokengate_core::metric_names::WEBHOOK_DELIVERIES;
use tokengate_store::{
    Attempt, Delivery, DeliveryState, TokenAdmin, TokenQuery, Webhook, retry_at,
};
use tokio::task::JoinHandle;

pub use tokengate_store::{EventType, WebhookError, WebhookEvent};

/// The header a delivery is signed in.
pub const SIGNATURE_HEADER: &str = "tokengate-signature";

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: the
/// signature of `body` sent at `at`.
pub fn sign(secret: &str, at: SystemTime, body: &[u8]) -> String {
    let t = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: u64, body: &[u8]) -> [u8; 32] {
    #[allow(clippy::expect_used, reason = "HMAC takes a key of any length")]
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not `t=<seconds>,v1=<hex>`.
    #[error("the signature header is not t=<seconds>,v1=<hex>")]
    Malformed,
    /// Signed longer ago (or further ahead) than the tolerance.
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    /// No `v1` matches the body under the secret.
    #[error("no signature matches the body")]
    Mismatch,
}

/// Checks `header` (a `Tokengate-Signature`) over `body` under `secret`:
/// a `v1` that matches (compared in constant time; several may be sent
/// while a secret is replaced) and a timestamp within `tolerance` of
/// `now` (a replayed old delivery is refused).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => signatures.push(hex::decode(value).ok()),
            _ => {}
        }
    }
    let (Some(t), false) = (t, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let sent = UNIX_EPOCH + Duration::from_secs(t);
    let skew = now
        .duration_since(sent)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > tolerance {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, t, body);
    let matched = signatures.iter().flatten().any(|given| {
        given.len() == expected.len()
            && subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..]).into()
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Posts the outbox's due deliveries of a store, one claim at a time:
/// what a `Deployment` runs.
pub struct Deliverer<S> {
    store: S,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// This process's name in the store's claims.
    claimer: String,
    timeout: Duration,
    expiring_within: Duration,
}

impl<S> std::fmt::Debug for Deliverer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("claimer", &self.claimer)
            .finish_non_exhaustive()
    }
}

/// How many deliveries one claim takes.
const BATCH: usize = 32;

/// Every how many polls the tokens are scanned for the events no change
/// makes ([`Deliverer::scan`]): every 10 s at the default poll.
const SCAN_EVERY: u64 = 10;

impl<S: TokenAdmin + Clone> Deliverer<S> {
    /// A deliverer for `store`'s outbox, each post given 10 s.
    pub fn new(store: S) -> Self {
        Self {
            store,
            client: Client::builder(TokioExecutor::new()).build(crate::outbound::connector()),
            claimer: format!(
                "{}-{}",
                std::process::id(),
                tokengate_core::TokenId::generate().as_str()
            ),
            timeout: Duration::from_secs(10),
            expiring_within: Duration::from_secs(3 * 86_400),
        }
    }

    /// How long before its expiry a token's `token.expiring` is sent (3
    /// days by default).
    #[must_use]
    pub fn expiring_within(mut self, window: Duration) -> Self {
        self.expiring_within = window;
        self
    }

    /// Writes the events no change makes, for the tokens they are due
    /// for at `now`: `token.expiring` (active, expiring within the
    /// window), `token.uses_threshold` (80 % of a count spent) and
    /// `token.uses_exhausted` (none left). Each is written once per
    /// expiry or count, however many servers scan; tokens are read only
    /// when a webhook wants these types. Returns how many deliveries were
    /// written.
    pub async fn scan(&self, now: SystemTime) -> usize {
        let hooks = match self.store.webhooks().await {
            Ok(hooks) => hooks,
            Err(error) => {
                tracing::warn!(%error, "could not read the webhooks");
                return 0;
            }
        };
        let wanted = |kind| hooks.iter().any(|h| h.wants(kind));
        let mut events = Vec::new();
        if wanted(EventType::Expiring) {
            let query = TokenQuery::new().expiring_within(self.expiring_within);
            for record in self.tokens(&query, now).await {
                if let Some(at) = record.expires_at {
                    let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                    let expires_at = humantime::format_rfc3339_millis(at).to_string();
                    events.push(WebhookEvent::once(
                        EventType::Expiring,
                        &record,
                        now,
                        &ms.to_string(),
                        &[("expires_at", &expires_at)],
                    ));
                }
            }
        }
        if wanted(EventType::UsesThreshold) || wanted(EventType::UsesExhausted) {
            let query = TokenQuery::new()
                .status(tokengate_core::TokenStatus::Active)
                .usage_limited();
            for record in self.tokens(&query, now).await {
                let Some(uses) = record.uses else { continue };
                let left = uses.remaining_at(now);
                let key = format!("{}_{}", uses.generation, uses.limit.window(now));
                let kind = if left == 0 {
                    EventType::UsesExhausted
                } else if left.saturating_mul(5) <= uses.limit.most() {
                    EventType::UsesThreshold
                } else {
                    continue;
                };
                let left = left.to_string();
                events.push(WebhookEvent::once(
                    kind,
                    &record,
                    now,
                    &key,
                    &[("uses_remaining", &left)],
                ));
            }
        }
        // The log of what is done is kept a month.
        let month = Duration::from_secs(30 * 86_400);
        if let Some(before) = now.checked_sub(month)
            && let Err(error) = self.store.prune_deliveries(before).await
        {
            tracing::warn!(%error, "could not prune the webhook log");
        }
        let mut written = 0;
        for event in events {
            match self.store.enqueue_event(&event).await {
                Ok(n) => written += n,
                Err(error) => tracing::warn!(%error, "could not write a webhook event"),
            }
        }
        written
    }

    async fn tokens(
        &self,
        query: &TokenQuery,
        now: SystemTime,
    ) -> Vec<tokengate_core::TokenRecord> {
        self.store.query(query, now).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "could not read the tokens webhooks watch");
            Vec::new()
        })
    }

    /// Claims what is due now and posts it, every post at once; returns
    /// how many were posted (delivered or not).
    pub async fn run_once(&self) -> usize {
        let now = SystemTime::now();
        let claimed = match self.store.claim_deliveries(now, &self.claimer, BATCH).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "could not claim webhook deliveries");
                return 0;
            }
        };
        if claimed.is_empty() {
            return 0;
        }
        let hooks = match self.store.webhooks().await {
            Ok(hooks) => hooks,
            Err(error) => {
                tracing::warn!(%error, "could not read the webhooks");
                return 0;
            }
        };
        let posted = claimed.len();
        let posts = claimed.into_iter().map(|delivery| {
            let hook = hooks.iter().find(|h| h.id == delivery.webhook_id);
            self.deliver(delivery, hook)
        });
        futures_util::future::join_all(posts).await;
        posted
    }

    async fn deliver(&self, delivery: Delivery, hook: Option<&Webhook>) {
        let attempt = match hook {
            None => Attempt {
                state: DeliveryState::Failed,
                next_at: SystemTime::now(),
                status: None,
                error: Some("webhook removed".to_owned()),
            },
            Some(hook) => {
                let answer = self.post(hook, &delivery).await;
                let now = SystemTime::now();
                match answer {
                    Ok(status) if (200..300).contains(&status) => Attempt {
                        state: DeliveryState::Delivered,
                        next_at: now,
                        status: Some(status),
                        error: None,
                    },
                    failed => {
                        let (status, error) = match failed {
                            Ok(status) => (Some(status), format!("HTTP {status}")),
                            Err(error) => (None, error),
                        };
                        match retry_at(delivery.created, delivery.attempts + 1, now) {
                            Some(next_at) => Attempt {
                                state: DeliveryState::Pending,
                                next_at,
                                status,
                                error: Some(error),
                            },
                            None => Attempt {
                                state: DeliveryState::Failed,
                                next_at: now,
                                status,
                                error: Some(error),
                            },
                        }
                    }
                }
            }
        };
        let result = match attempt.state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retried",
            _ => "failed",
        };
        metrics::counter!(WEBHOOK_DELIVERIES, "result" => result).increment(1);
        if attempt.state != DeliveryState::Delivered {
            tracing::warn!(
                webhook = %delivery.webhook_id,
                event = %delivery.event_id,
                attempts = delivery.attempts + 1,
                error = attempt.error.as_deref().unwrap_or(""),
                result,
                "webhook delivery failed"
            );
        }
        if let Err(error) = self
            .store
            .finish_delivery(delivery.id, &self.claimer, &attempt)
            .await
        {
            tracing::warn!(%error, "could not record a webhook delivery");
        }
    }

    /// Posts `delivery` to `hook`: the status, or why there was none.
    async fn post(&self, hook: &Webhook, delivery: &Delivery) -> Result<u16, String> {
        let body = Bytes::from(delivery.body.clone());
        let request = http::Request::post(&hook.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "tokengate-webhooks")
            .header(
                SIGNATURE_HEADER,
                sign(&hook.secret, SystemTime::now(), &body),
            )
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(error)) => Err(format!("{error}")),
            Err(_) => Err(format!("no answer in {} s", self.timeout.as_secs())),
        }
    }

    /// Runs [`Deliverer::run_once`] every `every` (at once again while a
    /// claim comes back full), and [`Deliverer::scan`] every tenth time,
    /// on the current tokio runtime.
    pub fn spawn(self, every: Duration) -> JoinHandle<()>
    where
        S: 'static,
    {
        let deliverer = Arc::new(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for polled in 0u64.. {
                tick.tick().await;
                if polled % SCAN_EVERY == 0 {
                    deliverer.scan(SystemTime::now()).await;
                }
                while deliverer.run_once().await == BATCH {}
            }
        })
    }
}
