use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

/// A named quota as the IETF `RateLimit-Policy` header states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    name: Arc<str>,
    quota: u64,
    window: Duration,
}

impl RateLimitPolicy {
    /// A policy called `name` (1 to 32 lowercase letters, digits, `_` or
    /// `-`) allowing `quota` units per `window`.
    pub fn new(name: &str, quota: u64, window: Duration) -> Result<Self, RateLimitPolicyError> {
        let valid = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if !valid {
            return Err(RateLimitPolicyError {
                name: name.chars().take(40).collect(),
            });
        }
        Ok(Self {
            name: name.into(),
            quota,
            window,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Units per window.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// `RateLimit-Policy: "name";q=100;w=60` (window in whole seconds, at least 1).
    pub fn policy_header(&self) -> HeaderValue {
        let text = format!(
            "\"{}\";q={};w={}",
            self.name,
            self.quota,
            retry_after_seconds(self.window)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
    }

    /// `RateLimit: "name";r=remaining;t=reset` (reset in whole seconds, rounded up).
    ///
    /// This runs on every admitted response, and in the common case (a
    /// client below its limit, whose bucket refills between requests) the
    /// value repeats: each thread keeps the last one it rendered and hands
    /// out a clone of it while the name, remaining and reset are the same,
    /// so a repeat costs a comparison and a reference count, no formatting
    /// or allocation. Otherwise it is written into a stack buffer.
    pub fn state_header(&self, remaining: u64, reset: Duration) -> HeaderValue {
        let reset = ceil_seconds(reset);
        LAST_STATE.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(seen) = &*last
                && seen.remaining == remaining
                && seen.reset == reset
                && *seen.name == *self.name
            {
                return seen.value.clone();
            }
            let value = self.render_state(remaining, reset);
            *last = Some(LastState {
                name: Arc::clone(&self.name),
                remaining,
                reset,
                value: value.clone(),
            });
            value
        })
    }

    fn render_state(&self, remaining: u64, reset: u64) -> HeaderValue {
        let mut buf = [0u8; 96];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            let end = (len + bytes.len()).min(buf.len());
            buf[len..end].copy_from_slice(&bytes[..end - len]);
            len = end;
        };
        put(b"\"");
        put(self.name.as_bytes());
        put(b"\";r=");
        put(digits(remaining, &mut [0u8; 20]));
        put(b";t=");
        put(digits(reset, &mut [0u8; 20]));
        HeaderValue::from_bytes(&buf[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
    }
}

/// The last `RateLimit` value a thread rendered, and what it says.
struct LastState {
    name: Arc<str>,
    remaining: u64,
    reset: u64,
    value: HeaderValue,
}

thread_local! {
    static LAST_STATE: RefCell<Option<LastState>> = const { RefCell::new(None) };
}

/// A rate-limit policy name that cannot appear in a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit policy name {name:?} must be 1 to 32 lowercase letters, digits, '_' or '-'")]
pub struct RateLimitPolicyError {
    name: String,
}

/// A spent quota: when to retry, and which policy was spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until one more request would be admitted.
    pub retry_after: Duration,
    /// The policy that refused the request.
    pub policy: RateLimitPolicy,
    /// Set when a shared rate state could not be reached and its fallback
    /// decided instead: the audit record states it.
    pub fallback: Option<RateFallback>,
}

/// What answered for a shared rate state (Redis) that could not be
/// reached in time: the policy configured for that case, stated in the
/// audit record of every request it decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateFallback {
    /// The instance's own in-memory limits.
    Local,
    /// Refuse (503, gRPC 14).
    FailClosed,
    /// Admit without a limit.
    FailOpen,
}

impl RateFallback {
    /// `local`, `fail_closed` or `fail_open`, as the audit record writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::FailClosed => "fail_closed",
            Self::FailOpen => "fail_open",
        }
    }
}

impl RateLimited {
    /// `retry_after` in whole seconds, rounded up, at least 1, as
    /// `Retry-After` wants it.
    pub fn retry_after_seconds(&self) -> u64 {
        ceil_seconds(self.retry_after).max(1)
    }
}

fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A wait in whole seconds, rounded up, at least 1, as `Retry-After`
/// carries it.
pub fn retry_after_seconds(d: Duration) -> u64 {
    ceil_seconds(d).max(1)
}

/// The decimal digits of `n`, written at the end of `scratch`.
fn digits(mut n: u64, scratch: &mut [u8; 20]) -> &[u8] {
    let mut i = scratch.len();
    loop {
        i -= 1;
        scratch[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            return &scratch[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_header_reads_as_the_draft_says() {
        let policy = RateLimitPolicy::new("per-token", 100, Duration::from_secs(60)).unwrap();
        assert_eq!(
            policy.state_header(0, Duration::ZERO),
            r#""per-token";r=0;t=0"#
        );
        assert_eq!(
            policy.state_header(42, Duration::from_millis(1_001)),
            r#""per-token";r=42;t=2"#
        );
        assert_eq!(
            policy.state_header(u64::MAX, Duration::from_secs(u64::MAX)),
            format!("\"per-token\";r={};t={}", u64::MAX, u64::MAX).as_str()
        );
        assert_eq!(policy.policy_header(), r#""per-token";q=100;w=60"#);
    }

    #[test]
    fn a_repeated_state_is_reused_and_a_changed_one_rendered_afresh() {
        let token = RateLimitPolicy::new("per-token", 100, Duration::from_secs(60)).unwrap();
        let ip = RateLimitPolicy::new("per-ip", 100, Duration::from_secs(60)).unwrap();
        let second = Duration::from_secs(1);
        let first = token.state_header(42, second);
        let again = token.state_header(42, second);
        assert_eq!(again, r#""per-token";r=42;t=1"#);
        // The same bytes, not a copy: the repeat was handed out, not rendered.
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        assert_eq!(token.state_header(41, second), r#""per-token";r=41;t=1"#);
        assert_eq!(
            token.state_header(41, second * 2),
            r#""per-token";r=41;t=2"#
        );
        assert_eq!(ip.state_header(41, second * 2), r#""per-ip";r=41;t=2"#);
        assert_eq!(token.state_header(42, second), r#""per-token";r=42;t=1"#);
    }
}
