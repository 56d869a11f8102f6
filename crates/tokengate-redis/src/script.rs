//! The server-side GCRA: every limiter of many requests in one script call.

use std::time::Duration;

use tokengate_rate::{Charge, Outcome, RateKey};

/// GCRA for many requests' charges in one call, on the Redis server's
/// clock (`TIME`), each request all-then-commit in the order given: look
/// at every bucket of the request first and refuse with the longest wait
/// if any refuses (nothing is charged); otherwise charge every one and
/// answer the tightest. The script runs atomically and the requests one
/// after another within it, so a batch decides exactly as the same
/// requests sent one call each would.
///
/// Every bucket is read once (one `MGET` for the call) and written once
/// (a `SET` per bucket charged, with the last request's value and
/// expiry): a hot key's many requests in one call cost one read and one
/// write, and the script's state in between is a Lua table.
///
/// Times are microseconds: Lua numbers are doubles, exact to 2^53, and
/// microseconds since 1970 stay well below that. A bucket's key expires
/// when its burst is full again, so memory follows activity.
///
/// `ARGV[1]` is the number of requests; then, per request, its number of
/// charges n and three numbers a charge (its interval, its capacity:
/// interval times burst, and its cost). `KEYS` holds every request's
/// buckets in that order (one request's are distinct: each carries its
/// limiter). Answers four numbers a request:
/// `0, charge, retry_us, 0` or `1, tightest, remaining, reset_us`.
pub(crate) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, tats, written = {}, {}, {}
if #KEYS > 0 then
  local stored = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do
    if tats[KEYS[i]] == nil then
      tats[KEYS[i]] = tonumber(stored[i] or '0') or 0
    end
  end
end
local k, a = 0, 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local new = {}
  local refused, retry = -1, 0
  for i = 1, n do
    local interval = tonumber(ARGV[a + 3 * i - 3])
    local capacity = tonumber(ARGV[a + 3 * i - 2])
    local cost = tonumber(ARGV[a + 3 * i - 1])
    new[i] = math.max(tats[KEYS[k + i]], now) + interval * cost
    local ahead = new[i] - now
    if ahead > capacity then
      local wait = ahead - capacity
      if refused < 0 or wait > retry then
        refused = i - 1
        retry = wait
      end
    end
  end
  local o = #out
  if refused >= 0 then
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, refused, retry, 0
  else
    local tight, remaining, reset = -1, 0, 0
    for i = 1, n do
      local key = KEYS[k + i]
      if not written[key] then
        written[key] = true
        written[#written + 1] = key
      end
      tats[key] = new[i]
      local interval = tonumber(ARGV[a + 3 * i - 3])
      local capacity = tonumber(ARGV[a + 3 * i - 2])
      local ahead = new[i] - now
      local left = math.floor((capacity - ahead) / interval)
      if tight < 0 or left < remaining then
        tight = i - 1
        remaining = left
        reset = ahead
      end
    end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 1, tight, remaining, reset
  end
  k = k + n
  a = a + 3 * n
end
for i = 1, #written do
  local key = written[i]
  local ttl = math.max(1, math.ceil((tats[key] - now) / 1000))
  redis.call('SET', key, string.format('%.0f', tats[key]), 'PX', ttl)
end
return out
";

/// Numbers the script answers a request.
pub(crate) const ANSWER: usize = 4;

/// Writes the bucket key of `charge` under `prefix` into `out` (cleared
/// first; a buffer reused from call to call, so no key allocates). Every
/// key carries the prefix as its hash tag, so all keys of a call share
/// one Redis Cluster slot, as a script's keys must.
pub(crate) fn write_key(out: &mut String, prefix: &str, charge: &Charge) {
    use std::fmt::Write as _;
    out.clear();
    let (limiter, key) = &charge.key;
    // Writing into a String cannot fail.
    let _ = write!(out, "{{{prefix}}}:{limiter}:");
    let _ = match key {
        RateKey::Token(id) => write!(out, "t:{}", id.as_str()),
        RateKey::Owner(owner) => write!(out, "o:{owner}"),
        RateKey::Ip(ip) => write!(out, "i:{ip}"),
        RateKey::Custom(custom) => write!(out, "c:{custom}"),
        _ => write!(out, "x:{key:?}"),
    };
}

/// The script's three numbers for `charge`: interval, capacity and cost,
/// the times in whole microseconds (at least 1).
pub(crate) fn args(charge: &Charge) -> [u64; 3] {
    let interval = charge.gcra.interval().div_ceil(1_000).max(1);
    let capacity = interval.saturating_mul(u64::from(charge.gcra.burst()));
    [interval, capacity, u64::from(charge.cost)]
}

/// One request's four numbers of the script's answer as an [`Outcome`];
/// `None` for numbers that are not one of the two shapes.
pub(crate) fn outcome(answer: &[i64]) -> Option<Outcome> {
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let index = |v: i64| usize::try_from(v).ok();
    match *answer {
        [0, charge, retry, _] => Some(Outcome::Refused {
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
