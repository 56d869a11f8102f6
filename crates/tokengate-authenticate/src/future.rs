use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokengate_core::GateBody;
use tower::Service;

use crate::layer::Config;
use crate::service::{ExpiryHeader, TokenLookup};

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
            lookup: TokenLookup,
            pending: Option<Box<(Request<ReqBody>, S)>>,
            config: Arc<Config<St>>,
        },
        Forward {
            #[pin]
            future: S::Future,
            expiry: ExpiryHeader,
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
    pub(crate) fn forward(future: S::Future, expiry: ExpiryHeader) -> Self {
        Self {
            kind: Kind::Forward { future, expiry },
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
        lookup: TokenLookup,
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
                KindProj::Forward { future, expiry } => {
                    let mut response = ready!(future.poll(cx))?.map(GateBody::new);
                    std::mem::take(expiry).apply(response.headers_mut());
                    return Poll::Ready(Ok(response));
                }
                KindProj::Rejected { response } => {
                    return Poll::Ready(Ok(tokengate_core::take_refusal(response)));
                }
                KindProj::Verifying {
                    lookup,
                    pending,
                    config,
                } => {
                    let verdict = ready!(Pin::new(lookup).poll(cx));
                    match pending.take().map(|boxed| *boxed) {
                        Some((mut request, mut inner)) => match config.admit(&mut request, verdict)
                        {
                            Ok(expiry) => Kind::Forward {
                                future: inner.call(request),
                                expiry,
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
