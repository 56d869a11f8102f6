//! Lifecycle webhooks, as the store keeps them: the subscriptions, and an
//! outbox of deliveries written when a token changes, claimed by one
//! server at a time (a lease), retried with backoff, and kept as a log.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, Distribution};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use tokengate_core::{TokenId, TokenRecord};

/// What happened to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventType {
    /// `token.issued`
    Issued,
    /// `token.updated`: its name, grants, limits, binding or metadata.
    Updated,
    /// `token.rotated`: a replacement issued, the old one in its grace.
    Rotated,
    /// `token.revoked`
    Revoked,
    /// `token.disabled`
    Disabled,
    /// `token.enabled`
    Enabled,
    /// `token.leaked`: reported by a secret scanner, or found by `scan`.
    Leaked,
    /// `token.expiring`: an active token expires within the servers'
    /// window (3 days by default); once per expiry.
    Expiring,
    /// `token.uses_threshold`: a usage-limited token has spent 80 % of its
    /// count; once per count (a refill or reset starts another).
    UsesThreshold,
    /// `token.uses_exhausted`: a usage-limited token has no use left;
    /// once per count.
    UsesExhausted,
}

impl EventType {
    /// Every type, in order.
    pub const ALL: [Self; 10] = [
        Self::Issued,
        Self::Updated,
        Self::Rotated,
        Self::Revoked,
        Self::Disabled,
        Self::Enabled,
        Self::Leaked,
        Self::Expiring,
        Self::UsesThreshold,
        Self::UsesExhausted,
    ];

    /// The type as deliveries name it (`token.revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "token.issued",
            Self::Updated => "token.updated",
            Self::Rotated => "token.rotated",
            Self::Revoked => "token.revoked",
            Self::Disabled => "token.disabled",
            Self::Enabled => "token.enabled",
            Self::Leaked => "token.leaked",
            Self::Expiring => "token.expiring",
            Self::UsesThreshold => "token.uses_threshold",
            Self::UsesExhausted => "token.uses_exhausted",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no event type; it lists the types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an event type: use {types}", types = EventType::ALL.map(EventType::as_str).join(", "))]
pub struct EventTypeError(String);

impl FromStr for EventType {
    type Err = EventTypeError;

    /// `token.revoked`, or `revoked` alone.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let name = text.strip_prefix("token.").unwrap_or(text);
        Self::ALL
            .into_iter()
            .find(|t| t.as_str()["token.".len()..] == *name)
            .ok_or_else(|| EventTypeError(text.to_owned()))
    }
}

/// A random id: `prefix` and 16 letters or digits.
fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    id.extend(
        Alphanumeric
            .sample_iter(&mut UnwrapErr(SysRng))
            .take(16)
            .map(char::from),
    );
    id
}

/// A receiver of events.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `wh_` and 16 letters or digits.
    pub id: String,
    /// Where events are posted (`http://` or `https://`).
    pub url: String,
    /// The types it receives, in order.
    pub events: Vec<EventType>,
    /// The signing secret (`whsec_` and 64 hex digits): the HMAC key of
    /// every delivery's `Tokengate-Signature`.
    pub secret: String,
    /// When it was added.
    pub created_at: SystemTime,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("webhook URL {0:?} must be http:// or https:// with a host")]
    Url(String),
    /// No event type was named.
    #[error("a webhook needs at least one event type")]
    NoEvents,
    /// The secret is shorter than 32 characters or holds a control
    /// character.
    #[error("a webhook secret must be 32 to 256 printable characters")]
    Secret,
}

impl Webhook {
    /// A webhook for `url` receiving `events`, signed with `secret` (one is
    /// generated when `None`: shown once by whoever adds it).
    pub fn new(
        url: &str,
        events: impl IntoIterator<Item = EventType>,
        secret: Option<String>,
    ) -> Result<Self, WebhookError> {
        let parsed = url::Url::parse(url).map_err(|_| WebhookError::Url(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(WebhookError::Url(url.to_owned()));
        }
        let mut events: Vec<EventType> = events.into_iter().collect();
        events.sort_unstable();
        events.dedup();
        if events.is_empty() {
            return Err(WebhookError::NoEvents);
        }
        let secret = match secret {
            Some(secret) => {
                let secret = secret.trim().to_owned();
                if !(32..=256).contains(&secret.len()) || secret.chars().any(char::is_control) {
                    return Err(WebhookError::Secret);
                }
                secret
            }
            None => {
                let mut bytes = [0u8; 32];
                rand::Rng::fill_bytes(&mut UnwrapErr(SysRng), &mut bytes);
                format!("whsec_{}", hex::encode(bytes))
            }
        };
        Ok(Self {
            id: random_id("wh_"),
            url: parsed.to_string(),
            events,
            secret,
            created_at: SystemTime::now(),
        })
    }

    /// Whether it receives events of `kind`.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.contains(&kind)
    }
}

/// One event, as written to the outbox: its body is what every receiver
/// gets, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `evt_` and 16 letters or digits: receivers deduplicate by it.
    pub id: String,
    /// What happened.
    pub kind: EventType,
    /// The token it happened to.
    pub token_id: TokenId,
    /// When.
    pub created: SystemTime,
    /// `{"id", "type", "created", "data": {"token_id", ...}}`: never a
    /// token, never a hash.
    pub body: String,
}

impl WebhookEvent {
    /// The event `kind` of `record` at `at`; `more` adds to its data
    /// (a rotation's `replacement_id`).
    pub fn of(
        kind: EventType,
        record: &TokenRecord,
        at: SystemTime,
        more: &[(&str, &str)],
    ) -> Self {
        Self::with_id(random_id("evt_"), kind, record, at, more)
    }

    /// The event `kind` of `record` that happens once per `key` (a
    /// token's expiry, its count's generation and window): its id is made
    /// of them, and the outbox takes an id once per webhook, so servers
    /// that each notice it write it once between them.
    pub fn once(
        kind: EventType,
        record: &TokenRecord,
        at: SystemTime,
        key: &str,
        more: &[(&str, &str)],
    ) -> Self {
        let name = &kind.as_str()["token.".len()..];
        let id = format!("evt_{name}_{}_{key}", &record.id.as_str()["tok_".len()..]);
        Self::with_id(id, kind, record, at, more)
    }

    fn with_id(
        id: String,
        kind: EventType,
        record: &TokenRecord,
        at: SystemTime,
        more: &[(&str, &str)],
    ) -> Self {
        let mut data = serde_json::json!({
            "token_id": record.id.as_str(),
            "name": record.name,
            "subject": record.subject,
            "status": record.status(at).as_str(),
        });
        for (key, value) in more {
            data[*key] = serde_json::Value::from(*value);
        }
        let created = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let body = serde_json::json!({
            "id": id,
            "type": kind.as_str(),
            "created": created,
            "data": data,
        })
        .to_string();
        Self {
            id,
            kind,
            token_id: record.id.clone(),
            created: at,
            body,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Not yet accepted by the receiver: due at `next_at`.
    Pending,
    /// Accepted (a 2xx answer).
    Delivered,
    /// Given up: the receiver did not accept it within the retry window,
    /// or the webhook was removed.
    Failed,
}

impl DeliveryState {
    /// `pending`, `delivered` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The state named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One event for one webhook: a row of the outbox and of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The row's number.
    pub id: i64,
    /// The webhook it goes to.
    pub webhook_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub kind: EventType,
    /// The body to post.
    pub body: String,
    /// When the event happened.
    pub created: SystemTime,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it is due (pending) or was last tried.
    pub next_at: SystemTime,
    /// The receiver's last status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// What came of one attempt, for [`TokenAdmin::finish_delivery`](crate::TokenAdmin::finish_delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The new state: delivered, pending again (retry at `next_at`), or failed.
    pub state: DeliveryState,
    /// When to try again (pending), or when this attempt ended.
    pub next_at: SystemTime,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// How long a server holds a delivery it claimed before another may take
/// it (the receiver's timeout is well under it).
pub const LEASE: Duration = Duration::from_secs(60);

/// When a delivery that failed its `attempts`th attempt at `now` is tried
/// again: 5 s after the first, then twice as long each time, at most an
/// hour apart; `None` once the event is three days old (retried for at
/// least 24 hours, as promised).
pub fn retry_at(created: SystemTime, attempts: u32, now: SystemTime) -> Option<SystemTime> {
    let doublings = attempts.saturating_sub(1).min(20);
    let wait = Duration::from_secs(5u64.saturating_mul(1u64 << doublings)).min(HOUR);
    let next = now + wait;
    (next.duration_since(created).unwrap_or_default() <= GIVE_UP).then_some(next)
}

const HOUR: Duration = Duration::from_secs(3600);

/// How long an event is retried.
pub const GIVE_UP: Duration = Duration::from_secs(3 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_parse_with_or_without_their_prefix_and_a_bad_one_lists_them() {
        assert_eq!("token.revoked".parse(), Ok(EventType::Revoked));
        assert_eq!("leaked".parse(), Ok(EventType::Leaked));
        let error = "token.deleted"
            .parse::<EventType>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("token.deleted") && error.contains("token.issued"),
            "{error}"
        );
    }

    #[test]
    fn a_webhook_checks_its_url_events_and_secret_and_makes_a_secret() {
        let hook = Webhook::new("http://127.0.0.1:9/hook", [EventType::Revoked], None).unwrap();
        assert!(hook.id.starts_with("wh_") && hook.id.len() == 19);
        assert!(hook.secret.starts_with("whsec_") && hook.secret.len() == 70);
        assert!(matches!(
            Webhook::new("ftp://x/", [EventType::Revoked], None),
            Err(WebhookError::Url(_))
        ));
        assert_eq!(
            Webhook::new("https://x.example/", [], None),
            Err(WebhookError::NoEvents)
        );
        assert_eq!(
            Webhook::new(
                "https://x.example/",
                [EventType::Issued],
                Some("short".into())
            ),
            Err(WebhookError::Secret)
        );
    }

    #[test]
    fn retries_back_off_to_an_hour_and_stop_after_three_days() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_at(t0, 1, t0), Some(t0 + Duration::from_secs(5)));
        assert_eq!(retry_at(t0, 2, t0), Some(t0 + Duration::from_secs(10)));
        assert_eq!(retry_at(t0, 30, t0), Some(t0 + HOUR));
        let late = t0 + GIVE_UP - Duration::from_secs(60);
        assert_eq!(retry_at(t0, 30, late), None);
        assert!(retry_at(t0, 30, t0 + Duration::from_secs(86_400)).is_some());
    }
}
