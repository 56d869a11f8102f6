//! Request cost: how much of a token's quotas and uses one request of a
//! route spends.
//!
//! Most requests cost 1. An export may cost 10 and a health probe 0. A
//! route's cost is charged, in the same units, to the per-token and
//! per-owner rate quotas (a GCRA charge of `cost` intervals, all or
//! nothing) and to a usage-limited token's uses (`cost` uses in one atomic
//! step of the store, all or nothing). `RateLimit` and
//! `token-uses-remaining` count what is left in those units. A request of
//! cost 0 spends nothing and is still authenticated, scoped and audited.
//!
//! The [`Gate`](https://docs.rs/tokengate) takes each route's cost from
//! its policy (`cost = 10` on a `[[routes]]` entry, or
//! `ScopePolicyBuilder::cost`); a layer used alone takes a [`CostFn`].
//! Where the cost is known only once the handler has run, the handler
//! charges the rest through the request's [`Meter`].

use std::sync::Arc;

use http::{Method, Uri};

use crate::Denial;

/// The cost of a request from its method and URI (1 for most routes).
pub type CostFn = Arc<dyn Fn(&Method, &Uri) -> u32 + Send + Sync>;

/// One layer's part of a [`Meter`]: charges `units` more to what that
/// layer counts for the request (its quotas, or its token's uses), all or
/// nothing.
pub trait LateCharge: Send + Sync + 'static {
    /// Charges `units` (at least 1); a refusal charges nothing here.
    fn charge(&self, units: u32) -> ChargeFuture<'_>;
}

/// A [`LateCharge`]'s answer, later.
pub type ChargeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Denial>> + Send + 'a>>;

/// What a handler charges after the fact, when the cost is known only then
/// (rows returned, bytes sent): found in the request's extensions of every
/// request the Gate admits with a token, once late charges are on
/// (`Gate::late_charges`, or each layer's own switch).
///
/// [`charge`](Self::charge) charges the same quotas and uses the route's
/// cost was charged to, in the same atomic steps and the same stores, so a
/// token never goes over its limit across instances: a charge that would
/// is refused, nothing of it spent in the part that refused, and the
/// handler decides what to answer (the [`Denial`] knows its status and
/// `Retry-After`). Parts are charged in the Gate's order (quotas, then
/// uses); a refusal by the uses leaves the quotas charged, as for a
/// route's cost.
///
/// ```
/// use tokengate_core::{Denial, Meter};
///
/// /// A handler's charge for the rows it sends: the route's cost (1) paid
/// /// for the first; `Err` when the token cannot pay for the rest.
/// async fn pay_for_rows(meter: &Meter, rows: u32) -> Result<(), Denial> {
///     meter.charge(rows.saturating_sub(1)).await
/// }
/// ```
///
/// A test of the whole flow, through an axum handler over a real server,
/// is in the repository's `tests/uses.rs`.
#[derive(Clone, Default)]
pub struct Meter {
    parts: Vec<Arc<dyn LateCharge>>,
}

impl Meter {
    /// Adds a layer's part (the layers do, as they admit the request).
    pub fn add(&mut self, part: Arc<dyn LateCharge>) {
        self.parts.push(part);
    }

    /// Adds `part` to the meter in `extensions`, making one if needed.
    pub fn add_to(extensions: &mut http::Extensions, part: Arc<dyn LateCharge>) {
        extensions.get_or_insert_default::<Self>().add(part);
    }

    /// Charges `units` more to every part, in order; the first refusal
    /// stops it. Zero units charge nothing.
    pub async fn charge(&self, units: u32) -> Result<(), Denial> {
        if units == 0 {
            return Ok(());
        }
        for part in &self.parts {
            part.charge(units).await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("parts", &self.parts.len())
            .finish()
    }
}
