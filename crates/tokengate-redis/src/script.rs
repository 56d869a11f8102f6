//! The server-side GCRA: every limiter of a request in one script call.

use std::time::Duration;

use tokengate_rate::{Charge, Outcome, RateKey};

/// GCRA for all of a request's charges at once, on the Redis server's
/// clock (`TIME`), all-then-commit: look at every bucket first and refuse
/// with the longest wait if any refuses (nothing is charged); otherwise
/// charge every one and answer the tightest. The script runs atomically,
/// so no other request interleaves.
///
/// Times are microseconds: Lua numbers are doubles, exact to 2^53, and
/// microseconds since 1970 stay well below that. A bucket's key expires
/// when its burst is full again, so memory follows activity.
///
/// `KEYS[i]` is charge i's bucket; `ARGV` holds three numbers a charge:
/// its interval, its capacity (interval times burst) and its cost.
/// Answers `{0, charge, retry_us}` or `{1, tightest, remaining, reset_us}`.
pub(crate) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local refused, retry = -1, 0
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new = math.max(tat, now) + interval * cost
  local ahead = new - now
  if ahead > capacity then
    local wait = ahead - capacity
    if refused < 0 or wait > retry then
      refused = i - 1
      retry = wait
    end
  end
  tats[i] = new
end
if refused >= 0 then
  return {0, refused, retry}
end
local tight, remaining, reset = -1, 0, 0
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local ahead = tats[i] - now
  local ttl = math.max(1, math.ceil(ahead / 1000))
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  local left = math.floor((capacity - ahead) / interval)
  if tight < 0 or left < remaining then
    tight = i - 1
    remaining = left
    reset = ahead
  end
end
return {1, tight, remaining, reset}
";

/// The bucket key of `charge` under `prefix`. Every key carries the
/// prefix as its hash tag, so one request's keys (a token's, its owner's)
/// share one Redis Cluster slot, as a script's keys must.
pub(crate) fn key(prefix: &str, charge: &Charge) -> String {
    let (limiter, key) = &charge.key;
    let (kind, value) = match key {
        RateKey::Token(id) => ("t", id.as_str().to_owned()),
        RateKey::Owner(owner) => ("o", owner.to_string()),
        RateKey::Ip(ip) => ("i", ip.to_string()),
        RateKey::Custom(custom) => ("c", custom.to_string()),
        _ => ("x", format!("{key:?}")),
    };
    format!("{{{prefix}}}:{limiter}:{kind}:{value}")
}

/// The script's three numbers for `charge`: interval, capacity and cost,
/// the times in whole microseconds (at least 1).
pub(crate) fn args(charge: &Charge) -> [u64; 3] {
    let interval = charge.gcra.interval().div_ceil(1_000).max(1);
    let capacity = interval.saturating_mul(u64::from(charge.gcra.burst()));
    [interval, capacity, u64::from(charge.cost)]
}

/// The script's answer as an [`Outcome`]; `None` for an answer that is not
/// one of the two shapes.
pub(crate) fn outcome(answer: &[i64]) -> Option<Outcome> {
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let index = |v: i64| usize::try_from(v).ok();
    match *answer {
        [0, charge, retry] => Some(Outcome::Refused {
            fallback: None,
            charge: index(charge)?,
            retry_after: micros(retry),
        }),
        [1, tight, remaining, reset] => Some(Outcome::Admitted {
            tightest: index(tight).map(|tight| {
                let remaining = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
                (tight, remaining, micros(reset))
            }),
            fallback: None,
        }),
        _ => None,
    }
}
