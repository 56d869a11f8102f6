//! What a store's change feed tells the processes that follow it.
//!
//! A store records every change that a cache in another process must
//! learn of (a revocation, a rotation, an update, a re-hash, a usage
//! reset, a pepper rotated or retired) and its feed hands each one to a
//! [`FeedConsumer`]. The verifying cache is one; the stores know only this
//! trait, so changes flow one way: from the store, to whoever follows it.

use tokengate_core::TokenHash;
use tokengate_core::TokenId;

/// One event of a store's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedEvent {
    /// The token `id`, known by `hash`, changed: revoked, rotated,
    /// updated, moved to another pepper, or its uses reset. A cache forgets
    /// whatever it holds for `hash`.
    Token {
        /// The token.
        id: TokenId,
        /// Its hash, as a cache keys it.
        hash: TokenHash,
    },
    /// A pepper was recorded (a rotation) or retired: a cache forgets
    /// everything, and the server loads its peppers again.
    Peppers,
}

/// What follows a store's change feed (the verifying cache implements it).
pub trait FeedConsumer: Send + Sync + 'static {
    /// Applies one event.
    fn apply(&self, event: &FeedEvent);

    /// The feed may have missed events (it (re)connected, or could not be
    /// read): forget everything learnt from the store.
    fn flush(&self);
}
