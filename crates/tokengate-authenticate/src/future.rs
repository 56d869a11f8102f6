use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokengate_core::{Denial, GateBody, Principal, VerifyError};
use tower::Service;

use crate::layer::Config;

type Lookup = Pin<Box<dyn Future<Output = Result<Principal, VerifyError>> + Send>>;

pin_project! {
    /// The response future of [`Authenticate`](crate::Authenticate).
    pub struct ResponseFuture<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, St, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // A cache miss: the store lookup runs, then the request goes on or
        // is refused. `pending` holds the request and the ready service.
        // Boxed: only misses pay for its size; hits keep the future small.
        Verifying {
            lookup: Lookup,
            pending: Option<Box<(Request<ReqBody>, S)>>,
            config: Arc<Config<St>>,
        },
        Forward {
            #[pin]
            future: S::Future,
            expires: Option<HeaderValue>,
            header: Option<HeaderName>,
        },
        Rejected {
            // Boxed: refusals are the cold path, and a response held inline
            // would make every future of the layer as large as a response.
            response: Option<Box<Response<GateBody<ResBody>>>>,
        },
    }
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn forward(
        future: S::Future,
        expires: Option<HeaderValue>,
        header: Option<HeaderName>,
    ) -> Self {
        Self {
            kind: Kind::Forward {
                future,
                expires,
                header,
            },
        }
    }

    pub(crate) fn reject(response: Response<GateBody<ResBody>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn verify(
        lookup: Lookup,
        request: Request<ReqBody>,
        inner: S,
        config: Arc<Config<St>>,
    ) -> Self {
        Self {
            kind: Kind::Verifying {
                lookup,
                pending: Some(Box::new((request, inner))),
                config,
            },
        }
    }
}

impl<S, St, ReqBody, ResBody> Future for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<GateBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Forward {
                    future,
                    expires,
                    header,
                } => {
                    let mut response = ready!(future.poll(cx))?.map(GateBody::new);
                    if let (Some(value), Some(name)) = (expires.take(), header.take()) {
                        response.headers_mut().insert(name, value);
                    }
                    return Poll::Ready(Ok(response));
                }
                KindProj::Rejected { response } => {
                    // Taken once; a future polled again after completion gets
                    // a fail-closed 503 rather than a panic.
                    let response = response.take().map_or_else(
                        || {
                            tokengate_core::Renderer::default()
                                .render(Denial::StoreUnavailable, false)
                        },
                        |boxed| *boxed,
                    );
                    return Poll::Ready(Ok(response));
                }
                KindProj::Verifying {
                    lookup,
                    pending,
                    config,
                } => {
                    let verdict = ready!(lookup.as_mut().poll(cx));
                    match pending.take().map(|boxed| *boxed) {
                        Some((mut request, mut inner)) => match config.admit(&mut request, verdict)
                        {
                            Ok(expires) => Kind::Forward {
                                future: inner.call(request),
                                expires,
                                header: config.expires_header.clone(),
                            },
                            Err(denial) => Kind::Rejected {
                                response: Some(Box::new(config.renderer.reject(&request, denial))),
                            },
                        },
                        None => Kind::Rejected { response: None },
                    }
                }
            };
            kind.set(next);
        }
    }
}

impl<S, St, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
