//! Leases of usage-limited tokens' uses, shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokengate_store::{LeaseSpend, SharedUses, SharedUsesError, UseKey, UsesFuture};

use crate::state::{RedisRateState, Shared};

/// Spends one use of a lease (`KEYS[1]`, hash fields: `n` uses leased,
/// `b` the store's count when last granted): `{1, left}` (the lease's
/// count after it plus `b`), or, when it is empty, `{0, 0}` with the
/// caller counted as a refiller in `KEYS[2]` (refills in flight, kept
/// 10 s: a refiller that never ends is forgotten then).
const SPEND: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n > 0 then
  n = redis.call('HINCRBY', KEYS[1], 'n', -1)
  local behind = tonumber(redis.call('HGET', KEYS[1], 'b') or '0')
  return {1, n + behind}
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 10000)
return {0, 0}
";

/// A refiller's `ARGV[1]` uses added to the lease, the store's count
/// `ARGV[2]` noted (the lowest seen: it only falls within a generation
/// and window), the lease kept `ARGV[3]` ms, the refill ended.
const GRANT: &str = r"
redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
local behind = redis.call('HGET', KEYS[1], 'b')
if not behind or tonumber(ARGV[2]) < tonumber(behind) then
  redis.call('HSET', KEYS[1], 'b', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
return {1}
";

/// A refiller that found the store empty: ends its refill when `ARGV[1]`
/// is 1, then spends a use granted meanwhile (`{1, left}`), or answers
/// `{2, 0}` while other refills are in flight, `{0, 0}` when none is.
const SETTLE: &str = r"
if tonumber(ARGV[1]) == 1 and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n > 0 then
  n = redis.call('HINCRBY', KEYS[1], 'n', -1)
  local behind = tonumber(redis.call('HGET', KEYS[1], 'b') or '0')
  return {1, n + behind}
end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  return {2, 0}
end
return {0, 0}
";

/// Gives back what a spend did that nobody received the answer of (its
/// request timed out and spent in the store instead): `ARGV[1]` 1 returns
/// the use to the lease (if the lease is still there), 0 ends the refill
/// the spend counted its caller as.
const UNDO: &str = r"
if tonumber(ARGV[1]) == 1 then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'n', 1)
  end
elseif tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
return {1}
";

/// Notes the store's count `ARGV[1]` after a use spent there directly (the
/// lowest seen, as a grant notes it), so the lease's answers stay true.
const NOTE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local behind = redis.call('HGET', KEYS[1], 'b')
  if not behind or tonumber(ARGV[1]) < tonumber(behind) then
    redis.call('HSET', KEYS[1], 'b', ARGV[1])
  end
end
return {1}
";

/// How long a call whose answer nobody waits for any more (its request
/// gave up) is still followed, to undo it when it lands: a script queued
/// behind a paused server runs when the server wakes.
const FOLLOW_ABANDONED: Duration = Duration::from_secs(10);

/// Usage-limited tokens' leases in Redis, beside the rate state (same
/// server, prefix and timeout): see [`SharedUses`]. Every instance spends
/// from one lease per token, one use per script call (atomic), and takes
/// the next batch from the store when it is empty, so the store is
/// written once per batch instead of once per request, and a token still
/// never admits more than its count. A lease lives under
/// `{prefix}:uses:<token>:<generation>:<window>` until the token's next
/// refill (a week for a token that never refills), its refills in flight
/// under the same key and `:refilling` for 10 s; a reset or a rotation
/// starts a new generation, so uses leased before it no longer count.
#[derive(Clone)]
pub struct RedisUses {
    shared: Arc<Shared>,
    lease: u64,
    spend: Arc<redis::Script>,
    grant: Arc<redis::Script>,
    settle: Arc<redis::Script>,
    undo: Arc<redis::Script>,
    note: Arc<redis::Script>,
}

impl fmt::Debug for RedisUses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUses")
            .field("prefix", &self.shared.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisRateState {
    /// Leases of usage-limited tokens' uses on this state's server, under
    /// its prefix and timeout, 16 uses a lease.
    pub fn uses(&self) -> RedisUses {
        RedisUses {
            shared: Arc::clone(&self.shared),
            lease: 16,
            spend: Arc::new(redis::Script::new(SPEND)),
            grant: Arc::new(redis::Script::new(GRANT)),
            settle: Arc::new(redis::Script::new(SETTLE)),
            undo: Arc::new(redis::Script::new(UNDO)),
            note: Arc::new(redis::Script::new(NOTE)),
        }
    }
}

impl RedisUses {
    /// Takes `lease` uses from the store at once (at least 1). Larger
    /// leases write the store less often; what a lost lease (a Redis
    /// restart, an expiry) takes with it is at most one lease per token.
    pub fn lease(mut self, lease: u64) -> Self {
        self.lease = lease.max(1);
        self
    }

    fn key(&self, key: &UseKey) -> String {
        format!(
            "{{{}}}:uses:{}:{}:{}",
            self.shared.prefix, key.token, key.generation, key.window
        )
    }

    /// One script call within the state's timeout. The call runs in a
    /// task of its own; when its answer is not received (a timeout here,
    /// or the caller dropping the future at its request's deadline) and
    /// `undoable`, whatever the spend did when it lands is given back, so
    /// a request that fell back to the store never spends twice.
    fn call(
        &self,
        script: &Arc<redis::Script>,
        key: String,
        args: Vec<u64>,
        undoable: bool,
    ) -> UsesFuture<Vec<i64>> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let undo = undoable.then(|| Undo {
            shared: Arc::clone(&self.shared),
            script: Arc::clone(&self.undo),
            key: key.clone(),
        });
        let (shared, script) = (Arc::clone(&self.shared), Arc::clone(script));
        let abandoned = undo.clone();
        tokio::spawn(async move {
            let call = invoke(&shared, &script, &key, &args);
            let answer = match tokio::time::timeout(FOLLOW_ABANDONED, call).await {
                Ok(answer) => answer,
                Err(_) => Err("timed out".to_owned()),
            };
            if let Err(answer) = sender.send(answer)
                && let Some(undo) = abandoned
            {
                undo.run(answer).await;
            }
        });
        let answer = Answer {
            receiver,
            undo,
            done: false,
        };
        let timeout = self.shared.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(error)) => Err(SharedUsesError(error.into())),
                Err(_) => Err(SharedUsesError("timed out".into())),
            }
        })
    }
}

/// One script invocation on the lease `key` (and its refills in flight).
async fn invoke(
    shared: &Shared,
    script: &redis::Script,
    key: &str,
    args: &[u64],
) -> Result<Vec<i64>, String> {
    let mut connection = shared.connection().await.map_err(|e| e.to_string())?;
    let mut invocation = script.prepare_invoke();
    invocation.key(key);
    invocation.key(format!("{key}:refilling"));
    for arg in args {
        invocation.arg(*arg);
    }
    invocation
        .invoke_async::<Vec<i64>>(&mut connection)
        .await
        .map_err(|e| e.to_string())
}

/// What gives back a spend whose answer nobody received.
#[derive(Clone)]
struct Undo {
    shared: Arc<Shared>,
    script: Arc<redis::Script>,
    key: String,
}

impl Undo {
    /// Gives back what `answer` says the spend did: a use taken from the
    /// lease, or a refill it was counted as.
    async fn run(self, answer: Result<Vec<i64>, String>) {
        let took = match answer.as_deref() {
            Ok([1, _]) => 1,
            Ok([0, _]) => 0,
            _ => return,
        };
        let took = [took];
        let undone = invoke(&self.shared, &self.script, &self.key, &took);
        if let Ok(Err(error)) | Err(error) = tokio::time::timeout(FOLLOW_ABANDONED, undone)
            .await
            .map_err(|_| "timed out".to_owned())
        {
            tracing::warn!(%error, "cannot give back a use spent after its request gave up");
        }
    }
}

/// A call's answer, waited for. Dropped unanswered, it closes the channel
/// (the call's task then undoes the spend when it lands) or, when the
/// answer came just before, undoes it itself.
struct Answer {
    receiver: tokio::sync::oneshot::Receiver<Result<Vec<i64>, String>>,
    undo: Option<Undo>,
    done: bool,
}

impl std::future::Future for Answer {
    type Output = Result<Vec<i64>, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let answer = std::task::ready!(std::pin::Pin::new(&mut self.receiver).poll(cx));
        self.done = true;
        std::task::Poll::Ready(answer.unwrap_or_else(|_| Err("the call's task ended".to_owned())))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.receiver.close();
        if let (Ok(answer), Some(undo)) = (self.receiver.try_recv(), self.undo.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(undo.run(answer));
        }
    }
}

impl SharedUses for RedisUses {
    fn lease_size(&self) -> u64 {
        self.lease
    }

    fn wait_budget(&self) -> Duration {
        self.shared.timeout
    }

    fn spend(&self, key: &UseKey, keep: Duration) -> UsesFuture<LeaseSpend> {
        let answer = self.call(&self.spend, self.key(key), vec![millis(keep)], true);
        Box::pin(async move { lease_spend(&answer.await?) })
    }

    fn grant(&self, key: &UseKey, uses: u64, behind: u64, keep: Duration) -> UsesFuture<()> {
        let answer = self.call(
            &self.grant,
            self.key(key),
            vec![uses, behind, millis(keep)],
            false,
        );
        Box::pin(async move { answer.await.map(drop) })
    }

    fn settle(&self, key: &UseKey, ended: bool) -> UsesFuture<LeaseSpend> {
        let answer = self.call(&self.settle, self.key(key), vec![u64::from(ended)], false);
        Box::pin(async move { lease_spend(&answer.await?) })
    }

    fn note(&self, key: &UseKey, behind: u64) -> UsesFuture<()> {
        let answer = self.call(&self.note, self.key(key), vec![behind], false);
        Box::pin(async move { answer.await.map(drop) })
    }
}

/// A keep time in whole milliseconds, at least 1.
fn millis(keep: Duration) -> u64 {
    u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A script's `{kind, left}` answer.
fn lease_spend(answer: &[i64]) -> Result<LeaseSpend, SharedUsesError> {
    match answer {
        [1, left] => Ok(LeaseSpend::Spent {
            left: u64::try_from(*left).unwrap_or(0),
        }),
        [0, _] => Ok(LeaseSpend::Empty),
        [2, _] => Ok(LeaseSpend::Pending),
        other => Err(SharedUsesError(
            format!("unexpected answer {other:?}").into(),
        )),
    }
}
