use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokengate_core::{Decided, GateBody};
use tower::Service;

use crate::layer::EnforceScopeLayer;
use crate::policy::ScopeLookup;

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
        match self.layer.check(&request) {
            Ok(()) => Decided::forward(self.inner.call(request)),
            Err(denial) => Decided::reject(self.layer.reject(&request, denial)),
        }
    }
}
