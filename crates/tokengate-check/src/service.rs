//! The one service that runs a [`Check`] in front of an inner service.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Layer;
use tower::Service;

use super::future::CheckFuture;
use super::observe::{self, Decisions};
use super::{Check, Verdict};

/// Makes a [`CheckService`] of `C` around any inner service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C> {
    check: C,
    name: &'static str,
}

impl<C: Default> Default for CheckLayer<C> {
    fn default() -> Self {
        Self::new(C::default())
    }
}

impl<C> CheckLayer<C> {
    /// A layer running `check`, named `check` in metrics and traces.
    pub fn new(check: C) -> Self {
        Self::named("check", check)
    }

    /// A layer running `check`, named `name` in metrics and traces (the
    /// `layer` label of an admitted request's count, the span's
    /// `tokengate.check` field).
    pub fn named(name: &'static str, check: C) -> Self {
        Self { check, name }
    }
}

impl<S, C: Clone> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named(self.name, self.check.clone(), inner)
    }
}

/// Runs `C` on each request: an admitted request goes to `S` and its
/// response gets what the check adds; a refused one is answered without
/// calling `S`; a waiting one calls `S` once the check decided.
///
/// Each decision is counted once in `tokengate_decisions_total` (an
/// admitted request under the service's name, a refusal under its
/// denial's layer and reason; see [`tokengate_core::metric_names`]) and the check
/// runs inside one `DEBUG` span, `tokengate.check` (target `tokengate`),
/// that carries the request's method, path, client address, subject,
/// token id, decision, reason, limiter and status. The counter handle is
/// registered when the service is made: install a `metrics` recorder
/// before building the services.
pub struct CheckService<C, S> {
    inner: S,
    check: C,
    decisions: Decisions,
}

impl<C, S> CheckService<C, S> {
    /// `check` in front of `inner`, named `check` in metrics and traces.
    pub fn new(check: C, inner: S) -> Self {
        Self::named("check", check, inner)
    }

    /// `check` in front of `inner`, named `name` in metrics and traces.
    pub fn named(name: &'static str, check: C, inner: S) -> Self {
        Self {
            inner,
            check,
            decisions: Decisions::new(name),
        }
    }

    /// The check.
    pub fn check(&self) -> &C {
        &self.check
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<C: Clone, S: Clone> Clone for CheckService<C, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            check: self.check.clone(),
            decisions: self.decisions.clone(),
        }
    }
}

impl<C, S: fmt::Debug> fmt::Debug for CheckService<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<C, S, B, R> Service<Request<B>> for CheckService<C, S>
where
    C: Check<B> + Clone,
    S: Service<Request<B>, Response = Response<R>> + Clone,
{
    type Response = Response<super::CheckBody<R>>;
    type Error = S::Error;
    type Future = CheckFuture<C, S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let span = observe::span(self.decisions.name(), &request);
        let verdict = {
            let _entered = span.enter();
            self.check.check(&mut request)
        };
        match verdict {
            Verdict::Admit(admit) => {
                self.decisions.allowed();
                observe::admitted(&span, &request);
                CheckFuture::forward(self.inner.call(request), admit, span)
            }
            Verdict::Refuse(refusal) => {
                self.decisions.refused(&refusal);
                observe::refused(&span, &request, &refusal);
                CheckFuture::refused(refusal, span)
            }
            Verdict::Wait(wait) => {
                // Clone and swap: the service that was polled ready goes with
                // the request; this service keeps a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let pending = (self.check.clone(), self.decisions.clone());
                CheckFuture::waiting(wait, request, inner, pending, span)
            }
        }
    }
}
