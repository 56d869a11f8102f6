//! One deadline for all of a request's calls to shared state.
//!
//! A request may ask a shared backend (Redis) more than once: the
//! per-address limit, the per-token limit, a usage-limited token's lease.
//! Each call has a timeout, but a backend that accepts connections and
//! never answers would otherwise hold the request for one timeout per
//! call. The first call starts the request's deadline from its timeout;
//! every later call of the same request gets only what is left of it, and
//! a call with nothing left goes straight to its fallback. So a request
//! waits for shared state at most one timeout in all.

use std::time::{Duration, Instant};

use http::Extensions;

/// When a request's calls to shared state must have answered, in its
/// extensions.
///
/// A request may ask a shared backend (Redis) more than once: the
/// per-address limit, the per-token limit, a usage-limited token's lease.
/// The first call starts the deadline from its timeout; every later call
/// of the same request gets only what is left, and one with nothing left
/// goes straight to its fallback. So a backend that accepts connections
/// and never answers holds a request one timeout in all, not one per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedDeadline(Instant);

impl SharedDeadline {
    /// The request's deadline: the one a call before this one started, or
    /// `budget` from now for the first.
    pub fn start(extensions: &mut Extensions, budget: Duration) -> Instant {
        if let Some(Self(at)) = extensions.get::<Self>() {
            return *at;
        }
        let at = Instant::now()
            .checked_add(budget)
            .unwrap_or_else(Instant::now);
        extensions.insert(Self(at));
        at
    }

    /// The sooner of `deadline` and `timeout` from now: what one call may
    /// wait.
    pub fn bound(deadline: Option<Instant>, timeout: Duration) -> Instant {
        let own = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(Instant::now);
        deadline.map_or(own, |deadline| deadline.min(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_starts_the_deadline_and_later_ones_share_it() {
        let mut extensions = Extensions::new();
        let first = SharedDeadline::start(&mut extensions, Duration::from_millis(100));
        let later = SharedDeadline::start(&mut extensions, Duration::from_secs(60));
        assert_eq!(first, later, "a later call does not extend it");
        assert!(first <= Instant::now() + Duration::from_millis(100));
        assert!(SharedDeadline::bound(Some(first), Duration::from_secs(60)) <= first);
        let alone = SharedDeadline::bound(None, Duration::from_millis(5));
        assert!(alone <= Instant::now() + Duration::from_millis(5));
    }
}
