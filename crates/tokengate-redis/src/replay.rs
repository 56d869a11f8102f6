//! DPoP proofs seen by any instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokengate_store::{ReplayFuture, SharedReplay, SharedReplayError};

use crate::state::{RedisRateState, Shared};

/// The proof ids (`jti`) every instance has seen, in Redis beside the rate
/// state (same server, prefix and timeout): see [`SharedReplay`]. A proof
/// is one `SET key 1 NX PX <keep>` under
/// `{prefix}:dpop:<32 hex digits of a hash of its key and jti>`, kept as
/// long as the proof could be accepted, so a proof replayed at any
/// instance is refused there. When Redis does not answer within the
/// timeout, the instance's own record in memory decides.
#[derive(Clone)]
pub struct RedisReplay {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplay")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisRateState {
    /// A record of DPoP proofs seen, on this state's server, under its
    /// prefix and timeout.
    pub fn replay(&self) -> RedisReplay {
        RedisReplay {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl SharedReplay for RedisReplay {
    fn first_use(&self, key: [u8; 16], keep: Duration) -> ReplayFuture {
        let shared = Arc::clone(&self.shared);
        let key = format!("{{{}}}:dpop:{}", shared.prefix, hex::encode(key));
        let millis = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let timeout = shared.timeout;
            let call = async {
                let mut connection = shared.connection().await?;
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(set)) => Ok(set.is_some()),
                Ok(Err(error)) => Err(SharedReplayError(error.into())),
                Err(_) => Err(SharedReplayError("timed out".into())),
            }
        })
    }
}
