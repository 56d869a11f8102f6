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
use crate::service::{Quotas, RateHeaders};
use crate::state::RateState;

pin_project! {
    /// The response future of [`RateByToken`](crate::RateByToken).
    pub struct ResponseFuture<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        St: RateState,
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
        St: RateState,
    {
        // A shared backend has not answered yet. Boxed: the slow path pays
        // for its size, the in-memory path keeps the future small.
        Checking {
            pending: Option<Box<Pending<S, St, ReqBody>>>,
        },
        Forward {
            #[pin]
            future: S::Future,
            headers: RateHeaders,
        },
        Rejected {
            // Boxed: refusals are the cold path, and a response held inline
            // would make every future of the layer as large as a response.
            response: Option<Box<Response<GateBody<ResBody>>>>,
        },
    }
}

/// What a request waiting for a shared backend holds.
struct Pending<S, St: RateState, ReqBody> {
    answer: St::Future,
    quotas: Quotas,
    request: Request<ReqBody>,
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    St: RateState,
{
    pub(crate) fn forward(future: S::Future, headers: RateHeaders) -> Self {
        Self {
            kind: Kind::Forward { future, headers },
        }
    }

    pub(crate) fn reject(response: Response<GateBody<ResBody>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn checking(
        answer: St::Future,
        quotas: Quotas,
        request: Request<ReqBody>,
        inner: S,
        config: Arc<Config<St>>,
    ) -> Self {
        Self {
            kind: Kind::Checking {
                pending: Some(Box::new(Pending {
                    answer,
                    quotas,
                    request,
                    inner,
                    config,
                })),
            },
        }
    }
}

impl<S, St, ReqBody, ResBody> Future for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: RateState,
{
    type Output = Result<Response<GateBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Forward { future, headers } => {
                    let mut response = ready!(future.poll(cx))?.map(GateBody::new);
                    std::mem::take(headers).apply(response.headers_mut());
                    return Poll::Ready(Ok(response));
                }
                KindProj::Rejected { response } => {
                    return Poll::Ready(Ok(tokengate_core::take_refusal(response)));
                }
                KindProj::Checking { pending } => {
                    let Some(waiting) = pending.as_mut() else {
                        return Poll::Ready(Ok(tokengate_core::fail_closed()));
                    };
                    let result = ready!(Pin::new(&mut waiting.answer).poll(cx));
                    match pending.take() {
                        Some(waiting) => {
                            let Pending {
                                quotas,
                                request,
                                mut inner,
                                config,
                                ..
                            } = *waiting;
                            match config.finish(result, &quotas, request.extensions()) {
                                Ok(headers) => Kind::Forward {
                                    future: inner.call(request),
                                    headers,
                                },
                                Err(denial) => Kind::Rejected {
                                    response: Some(Box::new(
                                        config.renderer.reject(&request, denial),
                                    )),
                                },
                            }
                        }
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
    St: RateState,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
