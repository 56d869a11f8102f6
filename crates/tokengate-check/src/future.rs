//! The response future of [`CheckService`](super::CheckService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tracing::Span;

use super::body::CheckBody;
use super::observe::{self, Decisions};
use super::refusal::Refusal;
use super::{Admit, Check, Verdict};

pin_project! {
    /// The inner service's response with what the check adds, a refusal,
    /// or a check still waiting with the request and a ready service.
    pub struct CheckFuture<C, S, B>
    where
        C: Check<B>,
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<C, S, B>,
        // The request's span (disabled unless a subscriber wants it).
        span: Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<C, S, B>
    where
        C: Check<B>,
        S: Service<Request<B>>,
    {
        Forward {
            #[pin]
            future: S::Future,
            admit: Option<C::Admit>,
        },
        Waiting {
            #[pin]
            wait: C::Wait,
            // Boxed: only a waiting request pays for the request and the
            // service it holds.
            pending: Option<Box<Pending<C, S, B>>>,
        },
        Refused {
            refusal: Option<Refusal>,
        },
    }
}

/// What a waiting request needs once its check decided.
struct Pending<C, S, B> {
    request: Request<B>,
    inner: S,
    check: C,
    decisions: Decisions,
}

impl<C, S, B> CheckFuture<C, S, B>
where
    C: Check<B>,
    S: Service<Request<B>>,
{
    pub(super) fn forward(future: S::Future, admit: C::Admit, span: Span) -> Self {
        Self {
            state: State::Forward {
                future,
                admit: Some(admit),
            },
            span,
        }
    }

    pub(super) fn refused(refusal: Refusal, span: Span) -> Self {
        Self {
            state: State::Refused {
                refusal: Some(refusal),
            },
            span,
        }
    }

    pub(super) fn waiting(
        wait: C::Wait,
        request: Request<B>,
        inner: S,
        (check, decisions): (C, Decisions),
        span: Span,
    ) -> Self {
        Self {
            state: State::Waiting {
                wait,
                pending: Some(Box::new(Pending {
                    request,
                    inner,
                    check,
                    decisions,
                })),
            },
            span,
        }
    }
}

impl<C, S, B, R> Future for CheckFuture<C, S, B>
where
    C: Check<B>,
    S: Service<Request<B>, Response = Response<R>>,
{
    type Output = Result<Response<CheckBody<R>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        let span = &*this.span;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Forward { future, admit } => {
                    let mut response = ready!(future.poll(cx))?.map(CheckBody::new);
                    admit.take().apply(&mut response);
                    observe::answered(span, response.status());
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refused { refusal } => {
                    let refusal = refusal.take().unwrap_or_else(Refusal::unavailable);
                    return Poll::Ready(Ok(refusal.into_response()));
                }
                StateProj::Waiting { wait, pending } => {
                    let waited = {
                        let _entered = span.enter();
                        ready!(wait.poll(cx))
                    };
                    let Some(mut waiting) = pending.take() else {
                        return Poll::Ready(Ok(Refusal::unavailable().into_response()));
                    };
                    let Pending { request, check, .. } = &mut *waiting;
                    let verdict = {
                        let _entered = span.enter();
                        check.resume(request, waited)
                    };
                    match verdict {
                        Verdict::Admit(admit) => {
                            let Pending {
                                request,
                                mut inner,
                                decisions,
                                ..
                            } = *waiting;
                            decisions.allowed();
                            observe::admitted(span, &request);
                            State::Forward {
                                future: inner.call(request),
                                admit: Some(admit),
                            }
                        }
                        Verdict::Refuse(refusal) => {
                            waiting.decisions.refused(&refusal);
                            observe::refused(span, &waiting.request, &refusal);
                            State::Refused {
                                refusal: Some(refusal),
                            }
                        }
                        Verdict::Wait(wait) => State::Waiting {
                            wait,
                            pending: Some(waiting),
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}

impl<C, S, B> fmt::Debug for CheckFuture<C, S, B>
where
    C: Check<B>,
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Forward { .. } => "forward",
            State::Waiting { .. } => "waiting",
            State::Refused { .. } => "refused",
        };
        f.debug_tuple("CheckFuture").field(&state).finish()
    }
}
