use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokengate_core::{Decided, Denial, GateBody, Principal};
use tower::Service;

use crate::layer::EnforceScopeLayer;
use crate::policy::ScopeLookup;
use crate::requirement::Requirement;

/// The response future of [`EnforceScope`].
pub type ResponseFuture<F, B> = Decided<F, B>;

/// The service [`EnforceScopeLayer`] makes.
pub struct EnforceScope<S, P> {
    pub(crate) inner: S,
    pub(crate) layer: EnforceScopeLayer<P>,
}

impl<S: Clone, P> Clone for EnforceScope<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for EnforceScope<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforceScope")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, P> EnforceScope<S, P>
where
    P: ScopeLookup,
{
    /// Public routes pass; otherwise a principal is needed (401), a rule
    /// must cover the request (403), and the rule must be met (403).
    fn decide<B>(&self, request: &Request<B>) -> Result<(), Denial> {
        let requirement = self
            .layer
            .lookup
            .requirement(request.method(), request.uri().path());
        if matches!(requirement, Some(Requirement::Public)) {
            return Ok(());
        }
        let principal = request
            .extensions()
            .get::<Principal>()
            .ok_or(Denial::MissingToken)?;
        requirement
            .ok_or(Denial::Unmapped)?
            .check(principal.scopes(), &self.layer.rules)
            .map_err(|missing| Denial::InsufficientScope { missing })
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for EnforceScope<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: ScopeLookup,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.decide(&request) {
            Ok(()) => Decided::forward(self.inner.call(request)),
            Err(denial) => Decided::reject(self.layer.renderer.reject(&request, denial)),
        }
    }
}
