//! A token record as JSON: one rendering, the same in the admin API, the
//! CLI's `--json` output and anywhere else a record is shown.
//!
//! Field names and units, once: times are RFC 3339 in UTC with
//! milliseconds; durations are whole seconds (`period_seconds`,
//! `every_seconds`); a quota is `{count, period_seconds, burst}` (`rate`
//! the first of a token's own, `rates` all of them); a usage
//! limit `{limit, remaining, refill: {amount, every_seconds} | null}`;
//! what a token does not have is `null` (an expiry, a quota, a usage
//! limit) or empty (networks, metadata). The secret is never in it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokengate_core::{Binding, TokenRecord};

/// Whole numbers as JSON Schema counts them: `12` and `12.0` alike (a
/// client's JSON library may write either), refused when fractional,
/// negative or out of range.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    pub(crate) fn number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let number = serde_json::Number::deserialize(d)?;
        let whole = number.as_u64().or_else(|| {
            number
                .as_f64()
                // Below 2^64 and without a fraction: exact as a u64.
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
                .map(|f| {
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "checked above: whole, not negative, below 2^64"
                    )]
                    let whole = f as u64;
                    whole
                })
        });
        whole
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
    }

    #[cfg(feature = "admin")]
    pub(crate) fn optional<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(deserialize_with = "number")] u64);
        match Option::<Wrapped>::deserialize(d)? {
            None => Ok(None),
            Some(Wrapped(n)) => T::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{n} is out of range"))),
        }
    }
}

/// A token's record, never its secret. Times are RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// The token id (`tok_...`).
    pub id: String,
    /// Its label.
    pub name: String,
    /// Its owner.
    pub subject: String,
    /// `active`, `expired`, `revoked` or `disabled`, now.
    #[cfg_attr(
        feature = "admin",
        schema(pattern = "^(active|expired|revoked|disabled)$")
    )]
    pub status: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Where it may be used.
    pub audiences: Vec<String>,
    /// When it was issued.
    pub created_at: String,
    /// When it expires, if it does.
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// Since when it is disabled, while it is.
    pub disabled_at: Option<String>,
    /// When it was last seen on a request (written behind).
    pub last_used_at: Option<String>,
    /// The networks it may be used from; empty means any.
    pub allowed_networks: Vec<String>,
    /// Its first quota of its own, if it has one (`rates` has them all).
    pub rate: Option<Quota>,
    /// Every quota of its own, all checked; empty for the limiter's default.
    #[serde(default)]
    pub rates: Vec<Quota>,
    /// The token it replaced by rotation, if any.
    pub rotated_from: Option<String>,
    /// Labels for applications.
    pub metadata: BTreeMap<String, String>,
    /// A usage-limited token's limit and count left; absent for unlimited uses.
    pub uses: Option<UsesView>,
    /// The DPoP key the token is bound to (its RFC 7638 thumbprint), if any.
    #[serde(default)]
    pub dpop_jkt: Option<String>,
    /// The client certificate the token is bound to (SHA-256 of its DER,
    /// hexadecimal), if any.
    #[serde(default)]
    pub cert_sha256: Option<String>,
}

/// A usage-limited token's limit and what is left of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsesView {
    /// The uses it was issued with (or last given).
    pub limit: u64,
    /// The count left now.
    pub remaining: u64,
    /// How the count comes back; absent when it never does.
    pub refill: Option<RefillSpec>,
}

/// A refill: every `every_seconds` the count is set to `amount` (not
/// added to), at each multiple of the interval since the Unix epoch (so
/// `86400` refills at 00:00 UTC on every server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefillSpec {
    /// The count after a refill.
    #[cfg_attr(
        feature = "admin",
        schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)
    )]
    #[serde(deserialize_with = "whole::number")]
    pub amount: u64,
    /// The interval, in seconds: 1 s to 366 days.
    #[cfg_attr(feature = "admin", schema(minimum = 1, maximum = 31_622_400))]
    #[serde(deserialize_with = "whole::number")]
    pub every_seconds: u64,
}

/// A rate quota: `count` requests per `period_seconds`, bursts of `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per period.
    #[cfg_attr(feature = "admin", schema(minimum = 1))]
    #[serde(deserialize_with = "whole::number")]
    pub count: u32,
    /// The period, in seconds (at most 366 days).
    #[cfg_attr(feature = "admin", schema(minimum = 1, maximum = 31_622_400))]
    #[serde(deserialize_with = "whole::number")]
    pub period_seconds: u64,
    /// The most requests back to back.
    #[cfg_attr(feature = "admin", schema(minimum = 1))]
    #[serde(deserialize_with = "whole::number")]
    pub burst: u32,
}

impl From<&tokengate_core::RateQuota> for Quota {
    fn from(q: &tokengate_core::RateQuota) -> Self {
        Self {
            count: q.count().get(),
            period_seconds: q.period().as_secs(),
            burst: q.burst().get(),
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<&TokenRecord> for TokenView {
    fn from(record: &TokenRecord) -> Self {
        let strings = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>();
        Self {
            id: record.id.to_string(),
            name: record.name.clone(),
            subject: record.subject.clone(),
            status: record.status(SystemTime::now()).as_str().to_owned(),
            scopes: strings(&mut record.scopes.iter().map(|s| s.as_str().to_owned())),
            audiences: strings(&mut record.audiences.iter().map(|a| a.as_str().to_owned())),
            created_at: rfc3339(record.created_at),
            expires_at: record.expires_at.map(rfc3339),
            revoked_at: record.revoked_at.map(rfc3339),
            disabled_at: record.disabled_at.map(rfc3339),
            last_used_at: record.last_used_at.map(rfc3339),
            allowed_networks: strings(&mut record.allowed_networks.iter().map(ToString::to_string)),
            rate: record.rate_quotas.first().map(Quota::from),
            rates: record.rate_quotas.iter().map(Quota::from).collect(),
            rotated_from: record.rotated_from.as_ref().map(ToString::to_string),
            metadata: record.metadata.clone(),
            uses: record.uses.map(|uses| UsesView {
                limit: uses.limit.uses(),
                remaining: uses.remaining_at(SystemTime::now()),
                refill: uses.limit.refill().map(|refill| RefillSpec {
                    amount: refill.amount(),
                    every_seconds: refill.every().as_secs(),
                }),
            }),
            dpop_jkt: match record.binding {
                Some(Binding::Dpop(jkt)) => Some(jkt.to_base64url()),
                _ => None,
            },
            cert_sha256: match record.binding {
                Some(Binding::Certificate(sha)) => Some(sha.to_hex()),
                _ => None,
            },
        }
    }
}

/// A token's usage by hour: `tokengate usage ID --json` and
/// `GET /admin/tokens/{id}/usage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageView {
    /// The token id (`tok_...`).
    pub token_id: String,
    /// Hours with at least one request, oldest first.
    pub buckets: Vec<UsageBucketView>,
}

/// One hour of a token's requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageBucketView {
    /// The start of the hour (RFC 3339, UTC).
    pub start: String,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused, by reason (`rate_limited`, `insufficient_scope`, ...).
    pub refused: BTreeMap<String, u64>,
    /// The address of the hour's last request, when it had one.
    pub last_client: Option<String>,
}

/// One token's requests over a time: a row of `tokengate usage --top`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageTotalView {
    /// The token id (`tok_...`).
    pub token_id: String,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused, every reason together.
    pub refused: u64,
}

impl UsageView {
    /// The buckets of `id`.
    pub fn new(id: &tokengate_core::TokenId, buckets: &[tokengate_store::UsageBucket]) -> Self {
        Self {
            token_id: id.to_string(),
            buckets: buckets
                .iter()
                .map(|b| UsageBucketView {
                    start: rfc3339(b.start),
                    admitted: b.admitted,
                    refused: b.refused.clone(),
                    last_client: b.last_client.map(|ip| ip.to_string()),
                })
                .collect(),
        }
    }
}

impl From<&tokengate_store::UsageTotal> for UsageTotalView {
    fn from(total: &tokengate_store::UsageTotal) -> Self {
        Self {
            token_id: total.token_id.to_string(),
            admitted: total.admitted,
            refused: total.refused,
        }
    }
}
