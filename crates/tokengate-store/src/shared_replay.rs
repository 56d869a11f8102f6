//! A record of DPoP proofs seen, shared by every instance.

use std::time::Duration;

/// A [`SharedReplay`] answer, later: `true` when the key was not seen
/// before (and is now recorded), `false` when it was.
pub type ReplayFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, SharedReplayError>> + Send>>;

/// Proof ids (`jti`) seen by any instance, so that a DPoP proof replayed
/// at another instance is refused there too (the Redis rate state's
/// [`replay`](https://docs.rs/tokengate-redis)). Each instance also keeps
/// its own record in memory: a replay at the same instance is refused
/// without a round trip, and when the shared record cannot answer, the
/// local one still refuses what that instance saw.
pub trait SharedReplay: Send + Sync + 'static {
    /// Records `key` for `keep` (as long as a proof may be accepted):
    /// `Ok(true)` when nobody recorded it before, atomically.
    fn first_use(&self, key: [u8; 16], keep: Duration) -> ReplayFuture;
}

/// Why a shared record did not answer.
#[derive(Debug, thiserror::Error)]
#[error("shared replay record unavailable: {0}")]
pub struct SharedReplayError(pub Box<dyn std::error::Error + Send + Sync>);
