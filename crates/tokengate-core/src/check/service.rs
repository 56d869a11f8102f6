//! The one service that runs a [`Check`] in front of an inner service.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Layer;
use tower::Service;

use super::future::CheckFuture;
use super::{Check, Verdict};

/// Makes a [`CheckService`] of `C` around any inner service.
#[derive(Debug, Clone, Default)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    /// A layer running `check`.
    pub fn new(check: C) -> Self {
        Self { check }
    }
}

impl<S, C: Clone> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::new(self.check.clone(), inner)
    }
}

/// Runs `C` on each request: an admitted request goes to `S` and its
/// response gets what the check adds; a refused one is answered without
/// calling `S`; a waiting one calls `S` once the check decided.
pub struct CheckService<C, S> {
    inner: S,
    check: C,
}

impl<C, S> CheckService<C, S> {
    /// `check` in front of `inner`.
    pub fn new(check: C, inner: S) -> Self {
        Self { inner, check }
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
        match self.check.check(&mut request) {
            Verdict::Admit(admit) => CheckFuture::forward(self.inner.call(request), admit),
            Verdict::Refuse(refusal) => CheckFuture::refused(refusal),
            Verdict::Wait(wait) => {
                // Clone and swap: the service that was polled ready goes with
                // the request; this service keeps a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                CheckFuture::waiting(wait, request, inner, self.check.clone())
            }
        }
    }
}
