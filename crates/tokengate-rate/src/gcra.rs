//! The generic cell rate algorithm, as pure arithmetic on nanoseconds.
//!
//! A quota of `count` requests per `period` with bursts of `burst` becomes
//! an emission interval `T = period / count` and a capacity of `burst × T`.
//! Each key keeps one number, its theoretical arrival time (TAT). A request
//! of cost `c` at time `now` is admitted when
//!
//! ```text
//! max(TAT, now) + c·T − now ≤ burst·T
//! ```
//!
//! and then TAT becomes `max(TAT, now) + c·T`. So, from a fresh or long-idle
//! key, exactly `burst` requests pass back to back; after that one request
//! passes every `T`; idling refills the burst, never beyond `burst`. A
//! refused request changes nothing: hammering while limited does not push
//! the next admission further out, and the refusal says exactly when the
//! next request will pass: `max(TAT, now) + c·T − burst·T`.

use std::time::Duration;

use tokengate_core::RateQuota;

/// A quota in the units the algorithm works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    /// Nanoseconds between two requests at the sustained rate (at least 1).
    interval: u64,
    /// `burst × interval`: how far ahead of `now` the TAT may run.
    capacity: u64,
    burst: u32,
}

/// What the algorithm decided for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraAnswer {
    /// Admitted: store `tat`. `remaining` more requests of cost 1 would pass
    /// now; the bucket is full again after `reset`.
    Admit {
        /// The new theoretical arrival time.
        tat: u64,
        /// Requests of cost 1 that would still pass now.
        remaining: u32,
        /// Time until the full burst is available again.
        reset: Duration,
    },
    /// Refused; retry after this long.
    Refuse {
        /// When the same request would pass.
        retry_after: Duration,
    },
}

impl Gcra {
    /// The algorithm's form of `quota`.
    pub fn new(quota: RateQuota) -> Self {
        let period = u64::try_from(quota.period().as_nanos()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(quota.count().get())).max(1);
        let burst = quota.burst().get();
        Self {
            interval,
            capacity: interval.saturating_mul(u64::from(burst)),
            burst,
        }
    }

    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// The largest burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Decides a request of `cost` at `now` for a key whose stored TAT is
    /// `tat` (0 for a key never seen).
    pub fn decide(&self, tat: u64, now: u64, cost: u32) -> GcraAnswer {
        let start = tat.max(now);
        let new_tat = start.saturating_add(self.interval.saturating_mul(u64::from(cost)));
        let ahead = new_tat - now;
        if ahead <= self.capacity {
            let free = self.capacity - ahead;
            GcraAnswer::Admit {
                tat: new_tat,
                remaining: u32::try_from(free / self.interval).unwrap_or(u32::MAX),
                reset: Duration::from_nanos(ahead),
            }
        } else {
            GcraAnswer::Refuse {
                retry_after: Duration::from_nanos(ahead - self.capacity),
            }
        }
    }

    /// Whether a key whose TAT is `tat` holds no information at `now` (its
    /// burst is full again), so its state can be dropped.
    pub fn is_idle(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn gcra(count: u32, period_secs: u64, burst: u32) -> Gcra {
        Gcra::new(
            RateQuota::new(
                NonZeroU32::new(count).unwrap(),
                Duration::from_secs(period_secs),
                NonZeroU32::new(burst).unwrap(),
            )
            .unwrap(),
        )
    }

    /// Runs requests at the given times; returns the admitted count and the
    /// final TAT.
    fn admit_all(g: &Gcra, times: &[u64]) -> (usize, u64) {
        let mut tat = 0;
        let mut admitted = 0;
        for &now in times {
            if let GcraAnswer::Admit { tat: t, .. } = g.decide(tat, now, 1) {
                tat = t;
                admitted += 1;
            }
        }
        (admitted, tat)
    }

    #[test]
    fn exactly_burst_pass_at_once_then_one_per_interval() {
        let g = gcra(10, 10, 5); // one per second, bursts of 5
        let start = 1_000 * SEC;
        let (admitted, tat) = admit_all(&g, &[start; 8]);
        assert_eq!(admitted, 5);
        match g.decide(tat, start, 1) {
            GcraAnswer::Refuse { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            g.decide(tat, start + SEC - 1, 1),
            GcraAnswer::Refuse { .. }
        ));
        assert!(matches!(
            g.decide(tat, start + SEC, 1),
            GcraAnswer::Admit { .. }
        ));
    }

    #[test]
    fn remaining_and_reset_count_down_through_a_burst() {
        let g = gcra(60, 60, 3);
        let now = 50 * SEC;
        let GcraAnswer::Admit {
            tat,
            remaining,
            reset,
        } = g.decide(0, now, 1)
        else {
            panic!()
        };
        assert_eq!((remaining, reset), (2, Duration::from_secs(1)));
        let GcraAnswer::Admit {
            remaining, reset, ..
        } = g.decide(tat, now, 1)
        else {
            panic!()
        };
        assert_eq!((remaining, reset), (1, Duration::from_secs(2)));
    }

    #[test]
    fn idle_refills_to_burst_never_more() {
        let g = gcra(1, 1, 3);
        let (_, tat) = admit_all(&g, &[SEC; 3]);
        let later = 1_000 * SEC;
        assert!(Gcra::is_idle(tat, later));
        let (admitted, _) = admit_all(&g, &[later; 10]);
        assert_eq!(admitted, 3);
    }

    #[test]
    fn a_cost_above_the_burst_never_passes() {
        let g = gcra(1, 1, 3);
        assert!(matches!(g.decide(0, SEC, 4), GcraAnswer::Refuse { .. }));
        assert!(matches!(g.decide(0, SEC, 3), GcraAnswer::Admit { .. }));
    }

    proptest! {
        /// Over any arrival schedule, admitted ≤ burst + elapsed / interval.
        #[test]
        fn never_more_than_burst_plus_rate(
            count in 1u32..100, period in 1u64..100, burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..(2 * SEC), 1..300),
        ) {
            let g = gcra(count, period, burst);
            let mut now = 10 * SEC;
            let start = now;
            let mut times = Vec::new();
            for gap in gaps {
                now += gap;
                times.push(now);
            }
            let (admitted, _) = admit_all(&g, &times);
            let elapsed = now - start;
            let bound = u64::from(burst) + elapsed / g.interval;
            prop_assert!(admitted as u64 <= bound, "{admitted} > {bound}");
        }

        /// A refused request is admitted exactly when the refusal said, not a
        /// nanosecond earlier, and refusals in between change nothing.
        #[test]
        fn admitted_exactly_when_promised(
            count in 1u32..50, period in 1u64..20, burst in 1u32..10, extra in 1usize..20,
        ) {
            let g = gcra(count, period, burst);
            let now = 5 * SEC;
            let (_, tat) = admit_all(&g, &vec![now; burst as usize]);
            let GcraAnswer::Refuse { retry_after } = g.decide(tat, now, 1) else {
                return Err(TestCaseError::fail("the burst was spent"));
            };
            let when = now + u64::try_from(retry_after.as_nanos()).unwrap();
            for i in 0..extra {
                let early = now + (when - now) * (i as u64) / (extra as u64);
                let refused = matches!(g.decide(tat, early.min(when - 1), 1), GcraAnswer::Refuse { .. });
                prop_assert!(refused, "admitted before the promised time");
            }
            let admitted = matches!(g.decide(tat, when, 1), GcraAnswer::Admit { .. });
            prop_assert!(admitted, "refused at the promised time");
        }
    }
}
