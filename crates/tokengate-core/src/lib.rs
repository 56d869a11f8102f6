//! The vocabulary every tokengate layer shares.
//!
//! tokengate puts API-token access control into any `tower` stack. This
//! crate holds what the layers have in common and depends on no web
//! framework:
//!
//! - [`Token`], [`TokenFormat`]: opaque bearer tokens, `<prefix>_<secret><checksum>`,
//!   generated from the OS CSPRNG and checked without touching a store.
//! - [`TokenHasher`], [`TokenHash`], [`Pepper`]: HMAC-SHA256 under a server-side
//!   pepper; stores keep only these hashes.
//! - [`TokenRecord`], [`TokenId`], [`Scope`], [`ScopeSet`], [`ScopeRules`],
//!   [`Audience`], [`RateQuota`], [`UseLimit`]: what a token may do, where,
//!   how often and how many times.
//! - [`Principal`], [`RequestTrail`]: the two request extensions layers
//!   add: the verified principal, and what the layers learned (the
//!   [`ClientIp`], the principal and denial for the audit).
//! - [`TokenStore`], [`TokenAdmin`], [`MemoryStore`], [`Lifecycle`]: storage and
//!   the token lifecycle (issue under a policy, rotate with overlap, revoke).
//! - [`Check`], [`CheckService`], [`Chain`]: one request decision, the one
//!   service that runs any of them, and checks composed in order.
//! - [`Denial`], [`Renderer`], [`Refusal`], [`RequestTrail`]: how a check
//!   refuses a request, for HTTP and gRPC, and tells the audit layer.
//! - [`Clock`], [`SystemClock`], [`ManualClock`]: injected time.
//!
//! # Example
//!
//! ```
//! use tokengate_core::{KeyId, Lifecycle, MemoryStore, Pepper, TokenHasher, TokenSpec, TokenStore};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let store = MemoryStore::new();
//! let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
//!
//! let issued = lifecycle
//!     .issue(
//!         TokenSpec::new("deploy-bot", "team-a")
//!             .scopes(["notes:read".parse()?])
//!             .audiences(["notes".parse()?]),
//!     )
//!     .await?;
//!
//! // Parse (no store work), hash under the pepper, look the hash up: the
//! // store keeps hashes only. `tokengate-cache` puts a verifying cache in
//! // front of this lookup; `tokengate-authenticate` does it per request.
//! let token = lifecycle.format().parse(issued.token.expose_secret())?;
//! let record = store.find_by_hash(&hasher.hash(&token)).await?.expect("issued");
//! assert_eq!(record.subject, "team-a");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! Each is here for one reason: `hmac`/`sha2` (RustCrypto HMAC-SHA256),
//! `subtle` (constant-time comparison), `crc32fast` (the token checksum),
//! `rand` (the OS CSPRNG and uniform base62 sampling), `zeroize` (wiping
//! secrets on drop), `hex` (pepper and hash text), `quanta` (the TSC clock
//! for hot-path intervals), `ipnet` (token network allowlists),
//! `http`/`http-body`/`bytes`/`pin-project-lite`/`tower` (the `Check`
//! service, its future and body, and denials rendered as responses),
//! `serde_json` (problem+json bodies), `percent-encoding`
//! (`grpc-message`), `humantime` (refill intervals such as `100/1d`), `strsim` ("did you mean" for a mistyped scope at
//! issuance), `thiserror` (error types) and, with the `testing` feature
//! only, `tokio` (the probe store's gate).

mod audience;
pub mod check;
mod clock;
mod deadline;
pub mod denial;
mod echo;
mod hash;
mod id;
pub mod metric_names;
mod pepper_source;
mod principal;
mod record;
mod redact;
mod scope;
mod slot;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod token;
pub mod trail;
mod uses;

pub use audience::{Audience, AudienceError};
pub use check::{
    Admit, Chain, Check, CheckBody, CheckFuture, CheckLayer, CheckService, NoWait, ProblemJson,
    Realm, RealmError, Refusal, RenderDenial, Renderer, Shield, Verdict, is_grpc,
    refusal_closes_connection,
};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use deadline::SharedDeadline;
pub use denial::{
    Denial, InvalidReason, IpReason, MalformedReason, RateFallback, RateLimitPolicy,
    RateLimitPolicyError, RateLimited,
};
pub use echo::{Echo, escape_for_display, may_hold_secret, needs_unicode_escape};
pub use hash::{KeyId, Pepper, PepperError, Peppers, TokenHash, TokenHasher};
pub use id::{TokenId, TokenIdError};
pub use pepper_source::{FIRST_KEY, PEPPER_ENV, PepperSource, PepperSourceError};
pub use principal::{ClientIp, Grants, Principal, canonical_net};
pub use record::{QuotaError, RateQuota, TokenRecord, TokenStatus};
pub use redact::redact_url;
pub use scope::{Scope, ScopeError, ScopeRules, ScopeSet};
pub use slot::{SLOTS, SlotKey};
pub use store::{
    Expiry, FeedConsumer, FeedEvent, IssuancePolicy, IssuedToken, Lifecycle, LifecycleError,
    MemoryStore, SqlFilter, SqlValue, StoreError, TokenAdmin, TokenChanges, TokenQuery, TokenSpec,
    TokenStore,
};
pub use token::{
    CHECKSUM_LEN, PrefixError, SECRET_LEN, Token, TokenFormat, TokenFormatError, TokenPrefix,
};
pub use trail::{RequestTrail, TrailFacts};
pub use uses::{
    LeaseSpend, Refill, SPENT_FOR_GOOD, SharedUses, SharedUsesError, TOKEN_USES_REMAINING, Taken,
    UseColumns, UseKey, UseLimit, UseLimitError, UseSpend, Uses, UsesFuture,
};

#[cfg(test)]
mod traits {
    use super::*;

    fn send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        send_sync::<Token>();
        send_sync::<TokenHash>();
        send_sync::<TokenHasher>();
        send_sync::<Pepper>();
        send_sync::<Principal>();
        send_sync::<ClientIp>();
        send_sync::<Denial>();
        send_sync::<Renderer>();
        send_sync::<RequestTrail>();
        send_sync::<Lifecycle<MemoryStore>>();
        send_sync::<StoreError>();
        send_sync::<CheckBody<bytes::Bytes>>();
        send_sync::<Refusal>();
    }
}
