//! Usage-limited tokens: a token that admits a number of requests, and
//! may get them back on a schedule.
//!
//! The count lives in the store, and the store is the truth: every
//! admitted request of such a token spends one use there, in one atomic
//! step ([`TokenStore::spend_use`](crate::TokenStore::spend_use)), so the
//! count is exact across processes and survives restarts. A token's
//! [`UseLimit`] (how many, how they refill) travels with its grants; the
//! count it has left ([`Uses::remaining`]) does not, as it changes on
//! every request.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderName;

/// The response header with the count a usage-limited token has left
/// after the request (`0` on its `usage-exhausted` refusal), named like
/// the `token-expires` header.
pub const TOKEN_USES_REMAINING: HeaderName = HeaderName::from_static("token-uses-remaining");

/// How many requests a token admits: `uses` from issuance, and, with a
/// [`Refill`], a fresh count at every refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UseLimit {
    uses: NonZeroU64,
    refill: Option<Refill>,
}

/// A refill: every `every` the count is set to `amount` (not added to:
/// what is left of the last period does not carry over).
///
/// Periods are counted from the Unix epoch, so `1d` refills at 00:00 UTC
/// and `1h` on the hour, on every server alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    amount: NonZeroU64,
    every: Duration,
}

/// The window a refilling token is in after rotation handed its uses on:
/// it never refills again.
pub const SPENT_FOR_GOOD: u64 = i64::MAX as u64;

/// What a store needs to spend a request's uses atomically: the refill
/// window the request falls in, the count a window later than the stored
/// one starts from (0 for a limit that never refills), and how many uses
/// the request costs (all or none are spent).
///
/// A window is named by when it starts, in milliseconds since the Unix
/// epoch (0 for a limit that never refills), so windows of different
/// intervals compare: a later window is a later start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseSpend {
    /// The current refill window (0 for a limit that never refills).
    pub window: u64,
    /// The count a new window starts from.
    pub refill: u64,
    /// The uses spent (the request's [cost](crate::cost); at least 1).
    pub cost: u64,
}

impl UseSpend {
    /// The same spend costing `cost` uses (at least 1).
    #[must_use]
    pub fn costing(self, cost: u64) -> Self {
        Self {
            cost: cost.max(1),
            ..self
        }
    }
}

/// A refill or limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UseLimitError {
    /// Not `N/INTERVAL`, or a number that is not a positive integer.
    #[error("refill {value} must be N/INTERVAL with N a positive integer, e.g. 100/1d")]
    Syntax {
        /// The refused text.
        value: String,
    },
    /// An interval shorter than one second or longer than 366 days.
    #[error("refill interval {every:?} must be between 1s and 366 days")]
    Interval {
        /// The refused interval.
        every: Duration,
    },
}

impl UseLimit {
    /// The most uses (and the largest refill) a token can have: what a
    /// signed 64-bit column keeps. The lifecycle refuses more.
    pub const MAX: u64 = i64::MAX as u64;

    /// `uses` requests in all.
    pub fn new(uses: NonZeroU64) -> Self {
        Self { uses, refill: None }
    }

    /// Refilled as `refill` says.
    pub fn with_refill(mut self, refill: Refill) -> Self {
        self.refill = Some(refill);
        self
    }

    /// The uses a token starts with.
    pub fn uses(&self) -> u64 {
        self.uses.get()
    }

    /// The most uses a token can have left at once: its uses, or its
    /// refill amount where that is larger. A count is never set above it.
    pub fn most(&self) -> u64 {
        self.refill
            .map_or(self.uses(), |refill| refill.amount().max(self.uses()))
    }

    /// The refill, if the count comes back.
    pub fn refill(&self) -> Option<Refill> {
        self.refill
    }

    /// The refill window `at` falls in: its start in milliseconds since
    /// the epoch (0 for a limit that never refills).
    pub fn window(&self, at: SystemTime) -> u64 {
        self.refill.map_or(0, |refill| refill.window(at))
    }

    /// How long from `at` until the next refill; `None` when it never comes.
    pub fn next_refill(&self, at: SystemTime) -> Option<Duration> {
        let refill = self.refill?;
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let every = refill.every.as_nanos();
        let into = since.as_nanos() % every;
        u64::try_from(every - into).ok().map(Duration::from_nanos)
    }

    /// What spending one use at `at` asks of the store.
    pub fn spend_at(&self, at: SystemTime) -> UseSpend {
        UseSpend {
            window: self.window(at),
            refill: self.refill.map_or(0, |refill| refill.amount.get()),
            cost: 1,
        }
    }
}

impl Refill {
    /// `amount` uses every `every` (1 s to 366 days).
    pub fn new(amount: NonZeroU64, every: Duration) -> Result<Self, UseLimitError> {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
        if every < Duration::from_secs(1) || every > YEAR {
            return Err(UseLimitError::Interval { every });
        }
        Ok(Self { amount, every })
    }

    /// The count each period starts from.
    pub fn amount(&self) -> u64 {
        self.amount.get()
    }

    /// The period.
    pub fn every(&self) -> Duration {
        self.every
    }

    fn window(&self, at: SystemTime) -> u64 {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let every = self.every.as_millis();
        u64::try_from(since.as_millis() / every * every).unwrap_or(SPENT_FOR_GOOD)
    }
}

/// `N/INTERVAL`, the interval as `humantime` reads it: `100/1d`, `10/1h`,
/// `5/30min`.
impl FromStr for Refill {
    type Err = UseLimitError;

    fn from_str(s: &str) -> Result<Self, UseLimitError> {
        let syntax = || UseLimitError::Syntax {
            value: crate::Echo::new(s, 100).to_string(),
        };
        let (amount, every) = s.split_once('/').ok_or_else(syntax)?;
        let amount = amount.trim().parse::<NonZeroU64>().map_err(|_| syntax())?;
        let every = humantime::parse_duration(every.trim()).map_err(|_| syntax())?;
        Self::new(amount, every)
    }
}

/// `N/INTERVAL`, readable back by [`FromStr`].
impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let every = humantime::format_duration(self.every).to_string();
        write!(f, "{}/{}", self.amount, every.replace(' ', ""))
    }
}

impl fmt::Display for UseLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.refill {
            Some(refill) => write!(f, "{} uses, refill {refill}", self.uses),
            None => write!(f, "{} uses", self.uses),
        }
    }
}

/// A usage-limited token's limit and count, as the store held them when
/// the record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// How many, and how they refill.
    pub limit: UseLimit,
    /// The count left in [`window`](Self::window).
    pub remaining: u64,
    /// The refill window the count belongs to (see [`UseLimit::window`]).
    pub window: u64,
    /// Bumped whenever the count is set rather than spent (a reset, a
    /// rotation's hand-over): uses leased out under an older generation
    /// (`SharedUses`) no longer count.
    pub generation: u64,
}

impl Uses {
    /// The count under a new `limit`, from the refill window `window` on
    /// (the later of it and the count's own). The count left stays, but
    /// never above the new limit's [`most`](UseLimit::most): lowering a limit caps it, and the cap
    /// starts a new generation so uses leased out above it no longer
    /// count. Raising a limit keeps the count (a reset fills it).
    #[must_use]
    pub fn relimited(self, limit: UseLimit, window: u64) -> Self {
        let remaining = self.remaining.min(limit.most());
        Self {
            limit,
            remaining,
            window: self.window.max(window),
            generation: self.generation + u64::from(remaining < self.remaining),
        }
    }

    /// A new token's count at `now`: all of its uses, in the current window.
    pub fn fresh(limit: UseLimit, now: SystemTime) -> Self {
        Self {
            limit,
            remaining: limit.uses(),
            window: limit.window(now),
            generation: 0,
        }
    }

    /// The count left at `now`: a refill since the count was stored
    /// counts as done.
    pub fn remaining_at(&self, now: SystemTime) -> u64 {
        match self.limit.refill {
            Some(refill) if self.window < refill.window(now) => refill.amount(),
            _ => self.remaining,
        }
    }

    /// Spends a request's uses ([`UseSpend::cost`], all or none) of this
    /// count, as a store does it: the count left, or `None` when fewer
    /// than that are left (nothing is spent then).
    pub fn spend(&mut self, spend: UseSpend) -> Option<u64> {
        if self.window < spend.window {
            self.window = spend.window;
            self.remaining = spend.refill;
        }
        self.remaining = self.remaining.checked_sub(spend.cost.max(1))?;
        Some(self.remaining)
    }

    /// Takes up to `want` uses at once, as a store does it (a refill
    /// first, as for [`spend`](Self::spend)).
    pub fn take(&mut self, spend: UseSpend, want: u64) -> Taken {
        if self.window < spend.window {
            self.window = spend.window;
            self.remaining = spend.refill;
        }
        let taken = self.remaining.min(want);
        self.remaining -= taken;
        Taken {
            taken,
            left: self.remaining,
        }
    }

    /// Hands every use left to a replacement token: `self` keeps none and
    /// never refills again.
    pub fn hand_over(&mut self) -> Self {
        let handed = *self;
        self.remaining = 0;
        self.window = SPENT_FOR_GOOD;
        self.generation += 1;
        handed
    }
}

/// Uses taken from the store at once (a store's `take_uses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    /// How many were taken (0: none was left).
    pub taken: u64,
    /// The count the store has left after it.
    pub left: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn limit(uses: u64) -> UseLimit {
        UseLimit::new(NonZeroU64::new(uses).unwrap())
    }

    #[test]
    fn refills_parse_and_print_back() {
        let refill: Refill = "100/1d".parse().unwrap();
        assert_eq!(refill.amount(), 100);
        assert_eq!(refill.every(), Duration::from_secs(86_400));
        assert_eq!(refill.to_string(), "100/1day");
        assert_eq!(refill.to_string().parse::<Refill>().unwrap(), refill);
        let refill: Refill = " 5 / 30min ".parse().unwrap();
        assert_eq!(refill.every(), Duration::from_secs(1800));
    }

    #[test]
    fn bad_refills_name_the_value() {
        for bad in ["", "100", "0/1d", "-1/1d", "x/1d", "10/soon", "10/"] {
            let error = bad.parse::<Refill>().unwrap_err();
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        assert_eq!(
            "10/500ms".parse::<Refill>(),
            Err(UseLimitError::Interval {
                every: Duration::from_millis(500)
            })
        );
        assert!("10/400days".parse::<Refill>().is_err());
    }

    #[test]
    fn a_count_that_never_refills_runs_out() {
        let mut uses = Uses::fresh(limit(2), at(10));
        let spend = uses.limit.spend_at(at(1_000_000));
        assert_eq!(uses.spend(spend), Some(1));
        assert_eq!(uses.spend(spend), Some(0));
        assert_eq!(uses.spend(spend), None);
        assert_eq!(uses.remaining, 0);
        assert_eq!(uses.limit.next_refill(at(1_000_000)), None);
    }

    #[test]
    fn a_costly_request_spends_all_its_uses_or_none() {
        let mut uses = Uses::fresh(limit(25), at(10));
        let spend = uses.limit.spend_at(at(20));
        assert_eq!(spend.cost, 1);
        assert_eq!(uses.spend(spend.costing(10)), Some(15));
        assert_eq!(uses.spend(spend.costing(10)), Some(5));
        assert_eq!(uses.spend(spend.costing(10)), None, "5 left, 10 asked");
        assert_eq!(uses.remaining, 5, "a refused spend spends nothing");
        assert_eq!(spend.costing(0).cost, 1, "a store never spends nothing");
        assert_eq!(uses.spend(spend.costing(5)), Some(0));
    }

    #[test]
    fn a_refill_sets_the_count_at_each_period_from_the_epoch() {
        let hourly = limit(2).with_refill("5/1h".parse().unwrap());
        let mut uses = Uses::fresh(hourly, at(3_600 * 10 + 100));
        assert_eq!(uses.window, 3_600_000 * 10);
        let now = at(3_600 * 10 + 200);
        assert_eq!(uses.spend(hourly.spend_at(now)), Some(1));
        assert_eq!(uses.spend(hourly.spend_at(now)), Some(0));
        assert_eq!(uses.spend(hourly.spend_at(now)), None);
        assert_eq!(hourly.next_refill(now), Some(Duration::from_secs(3_400)));
        let later = at(3_600 * 12 + 1);
        assert_eq!(uses.remaining_at(later), 5);
        assert_eq!(uses.spend(hourly.spend_at(later)), Some(4));
        assert_eq!(uses.window, 3_600_000 * 12);
    }

    #[test]
    fn a_handed_over_count_never_refills() {
        let hourly = limit(3).with_refill("3/1h".parse().unwrap());
        let mut old = Uses::fresh(hourly, at(0));
        let new = old.hand_over();
        assert_eq!(new.remaining, 3);
        assert_eq!(old.remaining_at(at(3_600 * 1000)), 0);
        assert_eq!(old.spend(hourly.spend_at(at(3_600 * 1000))), None);
    }
}
