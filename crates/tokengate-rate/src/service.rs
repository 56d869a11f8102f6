use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response};
use smallvec::SmallVec;
use tokengate_core::{Denial, GateBody, RateLimited, RateQuota};

use tower::Service;

use crate::future::ResponseFuture;
use crate::layer::{Config, MissingKey, RateByTokenLayer};
use crate::state::{Check, MemoryRateState, Outcome, RateState, RateStateError};

/// Which limiter and quota each check of a request stands for.
pub(crate) type Quotas = SmallVec<[(usize, RateQuota); 2]>;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` and `RateLimit` headers of an admitted request:
/// the tightest of its limits, or nothing when the layer sends no headers
/// on success.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders(Option<(HeaderValue, HeaderValue)>);

impl RateHeaders {
    /// Sets the headers on a response's `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        if let Some((policy, state)) = self.0 {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
    }
}

/// The service [`RateByTokenLayer`](crate::RateByTokenLayer) makes.
pub struct RateByToken<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St> RateByToken<S, St> {
    pub(crate) fn new(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
    }
}

impl<S: Clone, St> Clone for RateByToken<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateByToken<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateByToken")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<St> Config<St> {
    /// The checks of a request, or the refusal for a missing key.
    fn checks<B>(&self, request: &Request<B>) -> Result<(SmallVec<[Check; 2]>, Quotas), Denial> {
        let cost = self
            .cost
            .as_ref()
            .map_or(1, |cost| cost(request.method(), request.uri()).max(1));
        let mut checks = SmallVec::new();
        let mut quotas = Quotas::new();
        for (index, limiter) in self.limiters.iter().enumerate() {
            match limiter.key_of(request.headers(), request.extensions()) {
                Some((key, gcra, quota)) => {
                    let tag = u8::try_from(index).unwrap_or(u8::MAX);
                    checks.push(Check {
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
        Ok((checks, quotas))
    }

    /// Turns the state's answer into headers for an admitted request or
    /// the denial for a refused one (`extensions` are the request's: a
    /// token's own quota is stated once per token, see
    /// [`Principal::quota_policy`](tokengate_core::Principal::quota_policy)).
    /// A failing state backend refuses (503).
    pub(crate) fn finish(
        &self,
        result: Result<Outcome, RateStateError>,
        quotas: &Quotas,
        extensions: &Extensions,
    ) -> Result<RateHeaders, Denial> {
        match result.map_err(|_| Denial::StoreUnavailable)? {
            Outcome::Refused { check, retry_after } => {
                let (index, quota) = quotas.get(check).copied().ok_or(Denial::StoreUnavailable)?;
                let limiter = self.limiters.get(index).ok_or(Denial::StoreUnavailable)?;
                let (policy, _) = limiter
                    .policy(quota, extensions)
                    .ok_or(Denial::StoreUnavailable)?;
                Err(Denial::RateLimited(RateLimited {
                    retry_after,
                    policy,
                }))
            }
            Outcome::Admitted { tightest } => Ok(RateHeaders(
                tightest
                    .filter(|_| self.success_headers)
                    .and_then(|(check, remaining, reset)| {
                        let (index, quota) = quotas.get(check).copied()?;
                        let (policy, header) =
                            self.limiters.get(index)?.policy(quota, extensions)?;
                        Some((header, policy.state_header(u64::from(remaining), reset)))
                    }),
            )),
        }
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateByToken<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: RateState,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        let (checks, quotas) = match config.checks(&request) {
            Ok(found) => found,
            Err(denial) => return ResponseFuture::reject(config.renderer.reject(&request, denial)),
        };
        if checks.is_empty() {
            return ResponseFuture::forward(self.inner.call(request), RateHeaders::default());
        }
        let mut answer = config.state.acquire(&checks, config.clock.now_nanos());
        // In-memory state answers at once; only a pending answer needs the
        // request and a ready service moved into the future.
        match Pin::new(&mut answer).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => match config.finish(result, &quotas, request.extensions()) {
                Ok(headers) => ResponseFuture::forward(self.inner.call(request), headers),
                Err(denial) => ResponseFuture::reject(config.renderer.reject(&request, denial)),
            },
            Poll::Pending => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::checking(answer, quotas, request, inner, Arc::clone(&self.config))
            }
        }
    }
}

impl RateByTokenLayer<MemoryRateState> {
    /// Decides `request` as this layer's service does, for a service that
    /// runs several layers' decisions itself (the facade's `Gate`): the
    /// in-memory state answers at once, so this is synchronous. The headers
    /// for the admitted response, or the refusal to answer with
    /// [`RateByTokenLayer::reject`].
    pub fn check<B>(&self, request: &Request<B>) -> Result<RateHeaders, Denial> {
        let config = &*self.config;
        let (checks, quotas) = config.checks(request)?;
        if checks.is_empty() {
            return Ok(RateHeaders::default());
        }
        let outcome = config.state.decide(&checks, config.clock.now_nanos());
        config.finish(Ok(outcome), &quotas, request.extensions())
    }
}

impl<St> RateByTokenLayer<St> {
    /// The response this layer's service refuses `request` with.
    pub fn reject<B, R>(&self, request: &Request<B>, denial: Denial) -> Response<GateBody<R>> {
        self.config.renderer.reject(request, denial)
    }
}
