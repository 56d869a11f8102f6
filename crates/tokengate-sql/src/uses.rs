//! A usage limit and count as six integer columns.

use std::num::NonZeroU64;
use std::time::Duration;

use tokengate_core::{Refill, UseLimit, UseSpend, Uses};

/// A usage limit and count as the SQL stores keep them: six signed
/// integer columns (limit, refill amount, refill interval in
/// milliseconds, count left, window, generation), all `NULL` but the
/// window and generation for a token of unlimited uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UseColumns {
    /// The uses a token starts with.
    pub limit: Option<i64>,
    /// The count a refill sets.
    pub refill: Option<i64>,
    /// The refill interval in milliseconds.
    pub refill_ms: Option<i64>,
    /// The count left.
    pub remaining: Option<i64>,
    /// The window the count belongs to (0 where there is none).
    pub window: i64,
    /// The count's generation ([`Uses::generation`](tokengate_core::Uses::generation)).
    pub generation: i64,
}

impl UseColumns {
    /// A spend's window and refill count as SQL integers (see [`UseColumns::int`]).
    pub fn spend(spend: UseSpend) -> (i64, i64) {
        (Self::int(spend.window), Self::int(spend.refill))
    }

    /// A count or window as a signed SQL integer (`i64::MAX` at most).
    pub fn int(value: u64) -> i64 {
        i64::try_from(value).unwrap_or(i64::MAX)
    }

    /// The columns of `uses`.
    pub fn of(uses: Option<&Uses>) -> Self {
        let Some(uses) = uses else {
            return Self::default();
        };
        let refill = uses.limit.refill();
        Self {
            limit: Some(Self::int(uses.limit.uses())),
            refill: refill.map(|r| Self::int(r.amount())),
            refill_ms: refill.map(|r| i64::try_from(r.every().as_millis()).unwrap_or(i64::MAX)),
            remaining: Some(Self::int(uses.remaining)),
            window: Self::int(uses.window),
            generation: Self::int(uses.generation),
        }
    }

    /// What the columns hold; `None` for unlimited uses, or for values no
    /// build writes (a limit below 1, a refill out of range).
    pub fn into_uses(self) -> Option<Uses> {
        let positive = |v: i64| NonZeroU64::new(u64::try_from(v).ok()?);
        let mut limit = UseLimit::new(positive(self.limit?)?);
        if let (Some(amount), Some(ms)) = (self.refill, self.refill_ms) {
            let every = Duration::from_millis(u64::try_from(ms).ok()?);
            limit = limit.with_refill(Refill::new(positive(amount)?, every).ok()?);
        }
        Some(Uses {
            limit,
            remaining: u64::try_from(self.remaining?).unwrap_or(0),
            window: u64::try_from(self.window).unwrap_or(0),
            generation: u64::try_from(self.generation).unwrap_or(0),
        })
    }
}
