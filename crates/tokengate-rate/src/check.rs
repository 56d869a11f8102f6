//! The decision: charge every limiter of the request, or none.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http::{Extensions, HeaderName, HeaderValue, Request, Response};
use smallvec::SmallVec;
use std::sync::Arc;
use tokengate_check::{Admit, Check, Verdict};
use tokengate_core::metric_names::RATE_LIMITED;

use tokengate_core::{
    ChargeFuture, Denial, LateCharge, Meter, Principal, RateLimited, RateQuota, RequestTrail,
    SharedDeadline,
};

use crate::gcra::Gcra;
use crate::layer::{Config, MissingKey, RateLimitLayer};
use crate::state::{Charge, Outcome, RateState, RateStateError};

/// Which limiter and quota each charge of a request stands for.
pub(crate) type Quotas = SmallVec<[(usize, RateQuota); 2]>;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` and `RateLimit` headers of an admitted request:
/// the tightest of its limits, or nothing when the layer sends no headers
/// on success.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders(Option<(HeaderValue, HeaderValue)>);

impl Admit for RateHeaders {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some((policy, state)) = self.0 {
            let headers = response.headers_mut();
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
    }
}

/// A rate state that has not answered yet, with what the answer is read
/// against. Boxed: only a pending answer pays for its size.
pub struct RateWait<St: RateState>(Box<(St::Future, Quotas)>);

/// The rate state's answer, with what it is read against.
#[derive(Debug)]
pub struct RateAnswer {
    outcome: Result<Outcome, RateStateError>,
    quotas: Quotas,
}

impl<St: RateState> Future for RateWait<St> {
    type Output = RateAnswer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RateAnswer> {
        let (answer, quotas) = &mut *self.0;
        let outcome = std::task::ready!(Pin::new(answer).poll(cx));
        Poll::Ready(RateAnswer {
            outcome,
            quotas: std::mem::take(quotas),
        })
    }
}

impl<St: RateState> std::fmt::Debug for RateWait<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateWait").finish_non_exhaustive()
    }
}

/// Charges the request's cost to every limiter that has a key for it, all
/// or none. The in-memory state answers at once; a shared one may wait.
impl<B, St: RateState> Check<B> for RateLimitLayer<St> {
    type Admit = RateHeaders;
    type Wait = RateWait<St>;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<RateHeaders, RateWait<St>> {
        let config = &*self.config;
        let (charges, quotas) = match config.charges(request) {
            Ok(found) => found,
            Err(denial) => return Verdict::Refuse(config.renderer.refuse(request, denial)),
        };
        if charges.is_empty() {
            // A route of cost 0 may still be charged by its handler.
            if config.late_charges {
                self.config.meter(request);
            }
            return Verdict::Admit(RateHeaders::default());
        }
        // A shared backend waits within the request's one deadline.
        let deadline = config
            .state
            .wait_budget()
            .map(|budget| SharedDeadline::start(request.extensions_mut(), budget));
        let mut answer = config
            .state
            .acquire_by(&charges, config.clock.now_nanos(), deadline);
        // In-memory state answers at once: decide without waiting.
        match Pin::new(&mut answer).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => self.config.decide(request, outcome, &quotas),
            Poll::Pending => Verdict::Wait(RateWait(Box::new((answer, quotas)))),
        }
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        answer: RateAnswer,
    ) -> Verdict<RateHeaders, RateWait<St>> {
        self.config.decide(request, answer.outcome, &answer.quotas)
    }
}

impl<St> Config<St> {
    /// The charges of a request, or the refusal for a missing key.
    fn charges<B>(&self, request: &Request<B>) -> Result<(SmallVec<[Charge; 2]>, Quotas), Denial> {
        let cost = self
            .cost
            .as_ref()
            .map_or(1, |cost| cost(request.method(), request.uri()));
        self.charges_at(request, cost)
    }

    /// The charges of a request costing `cost`.
    fn charges_at<B>(
        &self,
        request: &Request<B>,
        cost: u32,
    ) -> Result<(SmallVec<[Charge; 2]>, Quotas), Denial> {
        let mut charges = SmallVec::new();
        let mut quotas = Quotas::new();
        if cost == 0 {
            return Ok((charges, quotas));
        }
        for (index, limiter) in self.limiters.iter().enumerate() {
            match limiter.key_of(request.headers(), request.extensions()) {
                Some((key, gcra, quota, further)) => {
                    let tag = u8::try_from(index).unwrap_or(u8::MAX);
                    // A token's further quotas: the same key under tags of
                    // their own (index + 8 × the quota's place), all checked.
                    for (place, &more) in further.iter().enumerate() {
                        let place = u8::try_from(place + 1).unwrap_or(u8::MAX);
                        charges.push(Charge {
                            key: (tag | place << 3, key.clone()),
                            gcra: Gcra::new(more),
                            cost,
                        });
                        quotas.push((index, more));
                    }
                    charges.push(Charge {
                        key: (tag, key),
                        gcra,
                        cost,
                    });
                    quotas.push((index, quota));
                }
                None if self.missing_key == MissingKey::Skip => {}
                None => return Err(limiter.missing_key_denial()),
            }
        }
        Ok((charges, quotas))
    }

    /// Turns the state's answer into headers for an admitted request or
    /// the denial for a refused one (`extensions` are the request's: a
    /// token's own quota is stated once per token, see
    /// kept with the token's grant).
    /// A failing state backend refuses (503, `rate_state_unavailable`).
    fn finish(
        &self,
        result: Result<Outcome, RateStateError>,
        quotas: &Quotas,
        extensions: &Extensions,
    ) -> Result<RateHeaders, Denial> {
        match result.map_err(|_| Denial::RateStateUnavailable)? {
            Outcome::Refused {
                charge,
                retry_after,
                fallback,
            } => {
                let (index, quota) = quotas
                    .get(charge)
                    .copied()
                    .ok_or(Denial::RateStateUnavailable)?;
                let limiter = self
                    .limiters
                    .get(index)
                    .ok_or(Denial::RateStateUnavailable)?;
                let (policy, _) = limiter
                    .policy(quota, extensions)
                    .ok_or(Denial::RateStateUnavailable)?;
                metrics::counter!(RATE_LIMITED, "limiter" => policy.name().to_owned()).increment(1);
                Err(Denial::RateLimited(RateLimited {
                    retry_after,
                    policy,
                    fallback,
                }))
            }
            Outcome::Admitted { tightest, fallback } => {
                if let Some(fallback) = fallback {
                    RequestTrail::note_rate_fallback(extensions, fallback);
                }
                Ok(RateHeaders(
                    tightest.filter(|_| self.success_headers).and_then(
                        |(charge, remaining, reset)| {
                            let (index, quota) = quotas.get(charge).copied()?;
                            let (policy, header) =
                                self.limiters.get(index)?.policy(quota, extensions)?;
                            Some((header, policy.state_header(u64::from(remaining), reset)))
                        },
                    ),
                ))
            }
        }
    }
}

impl<St: RateState> Config<St> {
    /// The decision for `request` once the state answered; an admitted
    /// request gets the layer's part of its meter when late charges are on.
    fn decide<B>(
        self: &Arc<Self>,
        request: &mut Request<B>,
        outcome: Result<Outcome, RateStateError>,
        quotas: &Quotas,
    ) -> Verdict<RateHeaders, RateWait<St>> {
        match self.finish(outcome, quotas, request.extensions()) {
            Ok(headers) => {
                if self.late_charges {
                    self.meter(request);
                }
                Verdict::Admit(headers)
            }
            Err(denial) => Verdict::Refuse(self.renderer.refuse(request, denial)),
        }
    }

    /// Adds this layer's part to `request`'s meter: its charges again, at
    /// the cost a handler names.
    fn meter<B>(self: &Arc<Self>, request: &mut Request<B>) {
        let Ok((charges, quotas)) = self.charges_at(request, 1) else {
            return;
        };
        if charges.is_empty() {
            return;
        }
        let part = LateRate {
            config: Arc::clone(self),
            charges,
            quotas,
            principal: request.extensions().get::<Principal>().cloned(),
        };
        Meter::add_to(request.extensions_mut(), Arc::new(part));
    }
}

/// A rate layer's part of a request's [`Meter`].
struct LateRate<St> {
    config: Arc<Config<St>>,
    charges: SmallVec<[Charge; 2]>,
    quotas: Quotas,
    /// The request's principal, for how its own quota is stated.
    principal: Option<Principal>,
}

impl<St: RateState> LateCharge for LateRate<St> {
    fn charge(&self, units: u32) -> ChargeFuture<'_> {
        let charges: SmallVec<[Charge; 2]> = self
            .charges
            .iter()
            .map(|charge| Charge {
                cost: units.max(1),
                ..charge.clone()
            })
            .collect();
        let config = &self.config;
        let deadline = config
            .state
            .wait_budget()
            .map(|budget| std::time::Instant::now() + budget);
        let answer = config
            .state
            .acquire_by(&charges, config.clock.now_nanos(), deadline);
        Box::pin(async move {
            // Made only when a handler charges: most requests never do.
            let mut extensions = Extensions::new();
            if let Some(principal) = &self.principal {
                extensions.insert(principal.clone());
            }
            config
                .finish(answer.await, &self.quotas, &extensions)
                .map(drop)
        })
    }
}
