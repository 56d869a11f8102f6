//! Time, injected: every time-based decision reads a [`Clock`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// Layers and stores take a [`SharedClock`], so tests drive expiry, cache
/// lifetimes and rate limits with a [`ManualClock`] instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time in nanoseconds since the Unix epoch, for hot paths
    /// that only need to measure intervals (rate limiting). [`SystemClock`]
    /// answers from the CPU's timestamp counter anchored to the wall clock
    /// once, so it never goes backwards and costs a few nanoseconds.
    fn now_nanos(&self) -> u64 {
        to_nanos(self.now())
    }
}

/// A clock shared by the parts of a deployment.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[inline]
    fn now_nanos(&self) -> u64 {
        let anchor = ANCHOR.get_or_init(Anchor::new);
        let elapsed = anchor.clock.now().duration_since(anchor.start);
        anchor
            .wall_nanos
            .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The wall time at which the monotonic counter was first read.
struct Anchor {
    clock: quanta::Clock,
    start: quanta::Instant,
    wall_nanos: u64,
}

impl Anchor {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.now();
        Self {
            clock,
            start,
            wall_nanos: to_nanos(SystemTime::now()),
        }
    }
}

static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();

/// A clock that moves only when told to, for deterministic tests.
///
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tokengate_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now().duration_since(start)?, Duration::from_secs(90));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos_since_epoch: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock set to 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::at(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// A manual clock set to `time` (clamped to the years 1970 to 2554).
    pub fn at(time: SystemTime) -> Self {
        Self {
            nanos_since_epoch: Arc::new(AtomicU64::new(to_nanos(time))),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos_since_epoch
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `time`, forwards or backwards.
    pub fn set(&self, time: SystemTime) {
        self.nanos_since_epoch
            .store(to_nanos(time), Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`] (sharing the same time).
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos_since_epoch.load(Ordering::SeqCst))
    }
}

pub(crate) fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time_and_can_go_back() {
        let clock = ManualClock::new();
        let shared = clock.shared();
        let t0 = shared.now();
        clock.advance(Duration::from_millis(1500));
        assert_eq!(shared.now(), t0 + Duration::from_millis(1500));
        clock.set(t0);
        assert_eq!(shared.now(), t0);
    }

    #[test]
    fn system_nanos_are_monotonic_and_near_the_wall_clock() {
        let a = SystemClock.now_nanos();
        let b = SystemClock.now_nanos();
        assert!(b >= a);
        let wall = to_nanos(SystemTime::now());
        assert!(wall.abs_diff(b) < 1_000_000_000, "{wall} vs {b}");
        let manual = ManualClock::new();
        assert_eq!(manual.now_nanos(), to_nanos(manual.now()));
    }

    #[test]
    fn system_clock_is_near_the_real_time() {
        let before = SystemTime::now();
        let now = SystemClock.now();
        assert!(now >= before);
    }
}
