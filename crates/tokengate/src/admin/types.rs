//! What the admin API reads and writes, with schemas as strict as the
//! server: a body the document calls valid is refused only by a rule the
//! document cannot state (a scope no server knows, a network's host bits),
//! with 422.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::view::whole;
pub use crate::view::{Quota, RefillSpec, TokenView, UsageBucketView, UsageView, UsesView};

/// Declares a string schema for the document only (the API reads plain
/// strings and checks them itself): a unit type named in `value_type`.
macro_rules! text_schema {
    ($(#[doc = $doc:literal])* $name:ident { $(length: $min:literal..=$max:literal,)? pattern: $pattern:expr }) => {
        $(#[doc = $doc])*
        pub(crate) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let text = utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!($($doc),*).trim()))
                    $(.min_length(Some($min)).max_length(Some($max)))?
                    .pattern(Some($pattern));
                text.into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

text_schema! {
    /// A name, subject or metadata text: 1 to 256 characters, not blank,
    /// no control characters.
    Text {
        length: 1..=256,
        pattern: r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    }
}

text_schema! {
    /// A scope: `resource:action` (a resource of letters, digits, `_ . /
    /// -`; an action of letters, digits, `_ -`, or `*`), exact and
    /// case-sensitive.
    ScopeText { pattern: r"^[A-Za-z0-9_./-]{1,64}:(\*|[A-Za-z0-9_-]{1,32})$" }
}

text_schema! {
    /// An audience: 1 to 128 letters, digits, `. _ : / -`.
    AudienceText { pattern: r"^[A-Za-z0-9._:/-]{1,128}$" }
}

text_schema! {
    /// A token id: `tok_` and 16 letters or digits.
    TokenIdText { pattern: r"^tok_[A-Za-z0-9]{16}$" }
}

text_schema! {
    /// A DPoP key's JWK SHA-256 thumbprint (RFC 7638): 43 base64url
    /// characters, the `jkt` a DPoP library prints for its key.
    JktText { pattern: r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$" }
}

text_schema! {
    /// A client certificate's SHA-256 fingerprint: 64 hexadecimal digits.
    CertSha256Text { pattern: r"^[0-9A-Fa-f]{64}$" }
}

/// An IPv4 address as Rust parses one (no leading zeros).
macro_rules! ipv4 {
    () => {
        r"((25[0-5]|(2[0-4]|1[0-9]|[1-9]|)[0-9])\.){3}(25[0-5]|(2[0-4]|1[0-9]|[1-9]|)[0-9])"
    };
}

/// An IPv6 address: eight groups, or fewer around one `::`, or with an
/// IPv4 tail.
macro_rules! ipv6 {
    () => {
        concat!(
            r"(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:",
            r"|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
            r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}",
            r"|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
            r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}",
            r"|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
            r"|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}",
            r"|:((:[0-9a-fA-F]{1,4}){1,7}|:)",
            r"|::(ffff(:0{1,4})?:)?",
            ipv4!(),
            r"|([0-9a-fA-F]{1,4}:){1,4}:",
            ipv4!(),
            ")"
        )
    };
}

text_schema! {
    /// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).
    NetworkText {
        length: 2..=64,
        pattern: concat!(
            "^(", ipv4!(), r"/(3[0-2]|[12]?[0-9])|", ipv6!(), r"/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
        )
    }
}

/// A token just issued or rotated: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Issued {
    /// The secret. It is not stored and cannot be shown again.
    pub token: String,
    /// The token's record.
    pub record: TokenView,
}

/// A page of tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens, oldest first.
    pub tokens: Vec<TokenView>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<String>,
}

/// A usage limit: `uses` requests, and a `refill` if the count comes back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UseLimitSpec {
    /// How many requests.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    #[serde(deserialize_with = "whole::number")]
    pub uses: u64,
    /// How the count comes back, if it does.
    pub refill: Option<RefillSpec>,
}

/// What to issue.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    #[schema(value_type = Text)]
    pub(crate) name: String,
    #[schema(value_type = Text)]
    pub(crate) subject: String,
    /// At least one.
    #[schema(value_type = Vec<ScopeText>, min_items = 1)]
    pub(crate) scopes: Vec<String>,
    /// At least one.
    #[schema(value_type = Vec<AudienceText>, min_items = 1)]
    pub(crate) audiences: Vec<String>,
    /// The lifetime in seconds (default and most: 90 days).
    #[schema(minimum = 1, maximum = 7_776_000)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub(crate) ttl_seconds: Option<u64>,
    #[serde(default)]
    #[schema(value_type = Vec<NetworkText>)]
    pub(crate) allowed_networks: Vec<String>,
    /// A quota of its own: the first, before any in `rates`.
    pub(crate) rate: Option<Quota>,
    /// Quotas of its own, all checked (after `rate`, if given; at most 4
    /// here, 5 with `rate`; one given twice is kept once).
    #[schema(max_items = 4)]
    pub(crate) rates: Option<Vec<Quota>>,
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Text>)]
    pub(crate) metadata: BTreeMap<String, String>,
    /// A usage limit: the token admits this many requests.
    pub(crate) uses: Option<UseLimitSpec>,
    /// Binds the token to this DPoP key: it works only beside a proof
    /// signed by the key. Or send the client's own `DPoP` proof of this
    /// request in a `DPoP` header and the token is bound to its key.
    #[schema(value_type = Option<JktText>)]
    pub(crate) dpop_jkt: Option<String>,
    /// Binds the token to this client certificate (mutual TLS).
    #[schema(value_type = Option<CertSha256Text>)]
    pub(crate) cert_sha256: Option<String>,
}

/// What to change; what is absent stays. `rate: null` (or `rates: []`)
/// drops the token's own quotas, `uses: null` its usage limit (a new limit keeps the count
/// left, capped by the new limit; reset it with `uses/reset`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    #[schema(value_type = Option<Text>)]
    pub(crate) name: Option<String>,
    /// Replaces the scopes (at least one).
    #[schema(value_type = Option<Vec<ScopeText>>, min_items = 1)]
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Vec<ScopeText>)]
    pub(crate) add_scopes: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<ScopeText>)]
    pub(crate) remove_scopes: Vec<String>,
    /// Replaces the audiences (at least one).
    #[schema(value_type = Option<Vec<AudienceText>>, min_items = 1)]
    pub(crate) audiences: Option<Vec<String>>,
    /// A new lifetime from now, in seconds (at most 90 days).
    #[schema(minimum = 1, maximum = 7_776_000)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub(crate) ttl_seconds: Option<u64>,
    #[schema(value_type = Option<Vec<NetworkText>>)]
    pub(crate) allowed_networks: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Quota>)]
    pub(crate) rate: Option<Option<Quota>>,
    /// Replaces the token's quotas with these, after `rate` if that is
    /// given too (all checked; at most 4 here, 5 with `rate`; `[]` with
    /// `rate` absent or `null` drops them).
    #[schema(max_items = 4)]
    pub(crate) rates: Option<Vec<Quota>>,
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Text>)]
    pub(crate) set_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) remove_metadata: Vec<String>,
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<UseLimitSpec>)]
    pub(crate) uses: Option<Option<UseLimitSpec>>,
    /// Binds the token to this DPoP key (replacing any binding).
    #[schema(value_type = Option<JktText>)]
    pub(crate) dpop_jkt: Option<String>,
    /// Binds the token to this client certificate (replacing any binding).
    #[schema(value_type = Option<CertSha256Text>)]
    pub(crate) cert_sha256: Option<String>,
    /// Makes the token a bearer token again.
    #[serde(default)]
    pub(crate) unbind: bool,
}

/// A field present (a value or `null`) or absent.
fn some_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What count to leave a usage-limited token.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetUsesRequest {
    /// The count left (default and most: the limit, or the refill where
    /// larger).
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub(crate) remaining: Option<u64>,
}

/// How to rotate.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old token keeps working, in seconds (default 3600, at
    /// most 90 days).
    #[schema(minimum = 0, maximum = 7_776_000)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub(crate) grace_seconds: Option<u64>,
}

text_schema! {
    /// A lifecycle event type: `token.` and what happened.
    EventTypeText { pattern: r"^token\.(issued|updated|rotated|revoked|disabled|enabled|leaked|expiring|uses_threshold|uses_exhausted)$" }
}

text_schema! {
    /// A webhook URL: `http://` or `https://` and a host.
    WebhookUrlText { length: 1..=2048, pattern: r"^https?://[^\s/?#@]+(/[^\s]*)?$" }
}

text_schema! {
    /// A webhook's signing secret: 32 to 256 printable characters.
    WebhookSecretText { length: 32..=256, pattern: r"^[!-~]{32,256}$" }
}

/// A webhook to add.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where events are posted.
    #[schema(value_type = WebhookUrlText)]
    pub url: String,
    /// The event types it receives.
    #[schema(value_type = Vec<EventTypeText>, min_items = 1, max_items = 10)]
    pub events: Vec<String>,
    /// The signing secret; generated (and answered once) when absent.
    #[schema(value_type = Option<WebhookSecretText>)]
    #[serde(default)]
    pub secret: Option<String>,
}

/// A webhook, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// `wh_` and 16 letters or digits.
    pub id: String,
    /// Where events are posted.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// When it was added (RFC 3339).
    pub created_at: String,
}

/// A webhook just added, with its signing secret: shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookAdded {
    /// The webhook.
    pub webhook: WebhookView,
    /// The HMAC key of every delivery's `Tokengate-Signature`.
    pub secret: String,
}

/// Every webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    /// Oldest first.
    pub webhooks: Vec<WebhookView>,
}

/// One delivery of one event to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The event's id.
    pub event_id: String,
    /// The webhook it goes to.
    pub webhook_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(pattern = "^(pending|delivered|failed)$")]
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the event happened (RFC 3339).
    pub created: String,
    /// When it is next tried, or was last (RFC 3339).
    pub next_at: String,
}

/// The latest deliveries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

/// Which deliveries.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only those given up, or whose last attempt failed.
    pub(crate) failed: Option<bool>,
    /// At most this many (50 when absent).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
}

/// How far back a token's usage goes.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// The hours from this many seconds ago on (the hour holding that
    /// time included); 7 days when absent, at most ten years.
    #[param(minimum = 0, maximum = 315_576_000)]
    pub(crate) since_seconds: Option<u64>,
}

/// The list filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this subject's tokens.
    pub(crate) subject: Option<String>,
    /// `active`, `expired`, `revoked` or `disabled`.
    #[param(pattern = "^(active|expired|revoked|disabled)$")]
    pub(crate) status: Option<String>,
    /// Only active tokens expiring within this many seconds (at most ten
    /// years).
    #[param(minimum = 0, maximum = 315_576_000)]
    pub(crate) expiring_within_seconds: Option<u64>,
    /// At most this many tokens.
    #[param(minimum = 0, maximum = 100_000)]
    pub(crate) limit: Option<usize>,
    /// The page after this token id.
    #[param(value_type = Option<TokenIdText>)]
    pub(crate) after: Option<String>,
}
