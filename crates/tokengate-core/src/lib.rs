//! The vocabulary every tokengate crate shares.
//!
//! tokengate puts API-token access control into any `tower` stack. This
//! crate holds the types its crates have in common, and nothing that does
//! input or output: no SQL, no files, no environment, no web framework.
//!
//! - [`Token`], [`TokenFormat`]: opaque bearer tokens, `<prefix>_<secret><checksum>`,
//!   generated from the OS CSPRNG and checked without touching a store.
//! - [`TokenHasher`], [`TokenHash`], [`Pepper`]: HMAC-SHA256 under a server-side
//!   pepper; stores keep only these hashes.
//! - [`TokenRecord`], [`TokenId`], [`Scope`], [`ScopeSet`], [`ScopeRules`],
//!   [`Audience`], [`RateQuota`], [`UseLimit`], [`Uses`]: what a token may do,
//!   where, how often and how many times.
//! - [`Principal`], [`RequestTrail`], [`ClientIp`]: the request extensions the
//!   layers add: the verified principal, and what the layers learned for
//!   the audit.
//! - [`Denial`]: why a request was refused, one variant per row of the
//!   rejection table.
//! - [`Clock`], [`SystemClock`], [`ManualClock`], [`SharedDeadline`]: injected time.
//! - [`SlotKey`], [`metric_names`], [`Echo`]: per-principal slots, the metric
//!   names, and request text quoted safely in errors and logs.
//!
//! The check runtime lives in `tokengate-check`, the store traits, the
//! token lifecycle and the memory store in `tokengate-store`.
//!
//! # Example
//!
//! ```
//! use tokengate_core::{KeyId, Pepper, TokenFormat, TokenHasher, TokenPrefix};
//!
//! let format = TokenFormat::new(TokenPrefix::new("tg")?);
//! let token = format.generate();
//! // A typo is caught by the checksum, before any store is asked.
//! let parsed = format.parse(token.expose_secret())?;
//! assert_eq!(parsed.expose_secret(), token.expose_secret());
//!
//! // Stores keep the keyed hash, never the token.
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! assert_eq!(hasher.hash(&parsed), hasher.hash(&token));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! Each is here for one reason: `hmac`/`sha2` (RustCrypto HMAC-SHA256),
//! `subtle` (constant-time comparison), `crc32fast` (the token checksum),
//! `rand` (the OS CSPRNG and uniform base62 sampling), `zeroize` (wiping
//! secrets on drop), `hex` (pepper and hash text), `arc-swap` (the
//! hasher's peppers, replaced for every clone at once), `quanta` (the TSC
//! clock for hot-path intervals), `ipnet` (token network allowlists),
//! `http` (the headers denials name), `humantime` (refill intervals such
//! as `100/1d`), `strsim` ("did you mean" for a mistyped scope),
//! `tracing` (one warning from the slot
//! registry) and `thiserror` (error types).

mod audience;
mod binding;
mod clock;
pub mod cost;
mod deadline;
pub mod denial;
mod echo;
mod hash;
mod id;
pub mod metric_names;
mod principal;
mod record;
mod scope;
mod slot;
mod token;
pub mod trail;
mod uses;

pub use audience::{Audience, AudienceError};
pub use binding::{Binding, Thumbprint, ThumbprintError};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use cost::{ChargeFuture, CostFn, LateCharge, Meter};
pub use deadline::SharedDeadline;
pub use denial::{
    Denial, InvalidReason, IpReason, MalformedReason, RateFallback, RateLimitPolicy,
    RateLimitPolicyError, RateLimited,
};
pub use echo::{Echo, escape_for_display, may_hold_secret, needs_unicode_escape};
pub use hash::{KeyId, Pepper, PepperError, Peppers, TokenHash, TokenHasher};
pub use id::{TokenId, TokenIdError};
pub use principal::{ClientIp, Grants, Principal, canonical_net};
pub use record::{QuotaError, RateQuota, TokenRecord, TokenStatus};
pub use scope::{Scope, ScopeError, ScopeRules, ScopeSet};
pub use slot::SlotKey;
pub use token::{
    CHECKSUM_LEN, PrefixError, SECRET_LEN, Token, TokenFormat, TokenFormatError, TokenPrefix,
    find_tokens,
};
pub use trail::{RequestTrail, TrailFacts};
pub use uses::{
    Refill, SPENT_FOR_GOOD, TOKEN_USES_REMAINING, Taken, UseLimit, UseLimitError, UseSpend, Uses,
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
        send_sync::<RequestTrail>();
    }
}
