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

use std::sync::Arc;

use http::{Method, Uri};

/// The cost of a request from its method and URI (1 for most routes).
pub type CostFn = Arc<dyn Fn(&Method, &Uri) -> u32 + Send + Sync>;
