use std::fmt;
use std::sync::Arc;

use http::{Method, Uri};
use tokengate_check::{CheckService, Renderer};
use tokengate_core::{RateQuota, SharedClock, SystemClock};
use tower::Layer;

use crate::limiter::Limiter;
use crate::state::{MemoryRateState, RateState};

/// The most limiters one layer checks per request.
pub const MAX_LIMITERS: usize = 8;

/// What to do when a request lacks a limiter's key (no principal, no
/// client address, a custom function said `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse: 401 for token and owner limiters (the layer sits after
    /// authentication, so only public routes lack a principal), 403 for
    /// client-IP limiters. The default: fail closed, never a shared bucket.
    #[default]
    Deny,
    /// Skip that limiter for the request (e.g. public routes under a
    /// per-token limiter). Never a shared fallback bucket either.
    Skip,
}

pub use tokengate_core::CostFn;

/// GCRA quotas per token, per owner, per client IP or per custom key.
///
/// See the [crate docs](crate) for semantics, headers and an example.
pub struct RateLimitLayer<St = MemoryRateState> {
    pub(crate) config: Arc<Config<St>>,
}

#[derive(Clone)]
pub(crate) struct Config<St> {
    pub(crate) limiters: Vec<Limiter>,
    pub(crate) state: St,
    pub(crate) clock: SharedClock,
    pub(crate) renderer: Renderer,
    pub(crate) cost: Option<CostFn>,
    pub(crate) success_headers: bool,
    pub(crate) missing_key: MissingKey,
    /// Put a part of the request's [`Meter`](tokengate_core::Meter) in it.
    pub(crate) late_charges: bool,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("RateLimitLayer")
            .field("limiters", &c.limiters)
            .field("state", &c.state)
            .field("success_headers", &c.success_headers)
            .field("missing_key", &c.missing_key)
            .finish_non_exhaustive()
    }
}

/// A layer configuration that cannot work. Names the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateConfigError {
    /// No limiter.
    #[error("a rate layer needs at least one limiter")]
    NoLimiter,
    /// More than [`MAX_LIMITERS`].
    #[error("{count} limiters given; at most {MAX_LIMITERS} per layer")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A name that cannot appear in a `RateLimit-Policy` header.
    #[error("limiter name {name:?} must be 1 to 32 lowercase letters, digits, '_' or '-'")]
    BadName {
        /// The name.
        name: String,
    },
    /// Two limiters with one name.
    #[error("two limiters are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
}

impl RateLimitLayer<MemoryRateState> {
    /// A layer checking `limiters` (all-then-commit), with in-memory state
    /// for 100,000 keys.
    pub fn new(limiters: impl IntoIterator<Item = Limiter>) -> Result<Self, RateConfigError> {
        let limiters: Vec<Limiter> = limiters.into_iter().collect();
        validate(&limiters)?;
        Ok(Self::with_defaults(limiters))
    }

    /// One limiter: `quota` per token (the token's own quota wins).
    pub fn per_token(quota: RateQuota) -> Self {
        Self::with_defaults(vec![Limiter::per_token(quota)])
    }

    /// One limiter: `quota` per client address, for use before authentication.
    pub fn per_client_ip(quota: RateQuota) -> Self {
        Self::with_defaults(vec![Limiter::per_client_ip(quota)])
    }

    /// `limiters` (already valid) with in-memory state, the system clock,
    /// default rendering, unit cost, success headers and missing keys refused.
    fn with_defaults(limiters: Vec<Limiter>) -> Self {
        crate::limiter::register_slots();
        register_series(&limiters);
        Self {
            config: Arc::new(Config {
                limiters,
                state: MemoryRateState::default(),
                clock: SystemClock::shared(),
                renderer: Renderer::default(),
                cost: None,
                success_headers: true,
                missing_key: MissingKey::Deny,
                late_charges: false,
            }),
        }
    }
}

/// Each limiter's refusal series exists (at 0) before its first refusal,
/// so a rate over it is defined from the start.
fn register_series(limiters: &[Limiter]) {
    for limiter in limiters {
        let _ = metrics::counter!(
            tokengate_core::metric_names::RATE_LIMITED,
            "limiter" => limiter.name().to_owned()
        );
    }
}

fn validate(limiters: &[Limiter]) -> Result<(), RateConfigError> {
    if limiters.is_empty() {
        return Err(RateConfigError::NoLimiter);
    }
    if limiters.len() > MAX_LIMITERS {
        return Err(RateConfigError::TooMany {
            count: limiters.len(),
        });
    }
    for (i, limiter) in limiters.iter().enumerate() {
        let name = limiter.name();
        if !limiter.has_valid_name() {
            return Err(RateConfigError::BadName {
                name: name.to_owned(),
            });
        }
        if limiters[..i].iter().any(|l| l.name() == name) {
            return Err(RateConfigError::DuplicateName {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

impl<St> RateLimitLayer<St> {
    fn with(self, change: impl FnOnce(&mut Config<St>)) -> Self
    where
        St: Clone,
    {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// The same layer (its state, clock, rendering, headers and policies)
    /// checking `limiters` instead of its own.
    pub fn with_limiters(
        self,
        limiters: impl IntoIterator<Item = Limiter>,
    ) -> Result<Self, RateConfigError>
    where
        St: Clone,
    {
        let limiters: Vec<Limiter> = limiters.into_iter().collect();
        validate(&limiters)?;
        register_series(&limiters);
        Ok(self.with(|c| c.limiters = limiters))
    }

    /// Where the layer keeps its limiters' state.
    pub fn rate_state(&self) -> &St {
        &self.config.state
    }

    /// Keeps state in `state` (e.g. a larger in-memory table, or a shared backend).
    pub fn state<S2: RateState>(self, state: S2) -> RateLimitLayer<S2>
    where
        St: Clone,
    {
        let c = Arc::unwrap_or_clone(self.config);
        RateLimitLayer {
            config: Arc::new(Config {
                limiters: c.limiters,
                state,
                clock: c.clock,
                renderer: c.renderer,
                cost: c.cost,
                success_headers: c.success_headers,
                missing_key: c.missing_key,
                late_charges: c.late_charges,
            }),
        }
    }

    /// Lets handlers charge more after the fact: every admitted request
    /// with a key for some limiter gets this layer's part of the request's
    /// [`Meter`](tokengate_core::Meter) (the same keys, quotas and state,
    /// charged all or nothing). Off by default: it costs an allocation per
    /// admitted request.
    pub fn late_charges(self, on: bool) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.late_charges = on)
    }

    /// Reads time from `clock`.
    pub fn clock(self, clock: SharedClock) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.clock = clock)
    }

    /// Renders rejections with `renderer`.
    pub fn renderer(self, renderer: Renderer) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.renderer = renderer)
    }

    /// Charges each request `cost(method, uri)` units instead of 1 (see
    /// [`tokengate_core::cost`]). A cost above a limiter's burst can never
    /// pass that limiter; a cost of 0 charges nothing (and the response
    /// carries no `RateLimit` headers).
    pub fn cost(self, cost: impl Fn(&Method, &Uri) -> u32 + Send + Sync + 'static) -> Self
    where
        St: Clone,
    {
        self.cost_fn(Some(Arc::new(cost)))
    }

    /// Charges each request what `cost` says, or 1 with `None`.
    pub fn cost_fn(self, cost: Option<CostFn>) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.cost = cost)
    }

    /// Whether admitted responses carry `RateLimit-Policy` and `RateLimit`
    /// (on by default; 429s always do).
    pub fn success_headers(self, on: bool) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.success_headers = on)
    }

    /// What to do with requests that lack a limiter's key.
    pub fn missing_key(self, policy: MissingKey) -> Self
    where
        St: Clone,
    {
        self.with(|c| c.missing_key = policy)
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("rate", self.clone(), inner)
    }
}

/// The service [`RateLimitLayer`] makes.
pub type RateLimit<S, St = MemoryRateState> = CheckService<RateLimitLayer<St>, S>;
