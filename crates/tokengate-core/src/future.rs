//! The response future shared by layers that decide synchronously.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::GateBody;
use crate::denial::{Denial, Renderer};

pin_project! {
    /// Either the inner service's response future (its body wrapped in
    /// [`GateBody`]) or a rejection decided before the inner service was
    /// called.
    pub struct Decided<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Forward { #[pin] future: F },
        // Boxed: refusals are the cold path, and a response held inline
        // would make every layer's future as large as a response.
        Rejected { response: Option<Box<Response<GateBody<B>>>> },
    }
}

impl<F, B> Decided<F, B> {
    /// Forwards to the inner service's future.
    pub fn forward(future: F) -> Self {
        Self {
            kind: Kind::Forward { future },
        }
    }

    /// Answers with `response` without calling the inner service.
    pub fn reject(response: Response<GateBody<B>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }
}

/// The answer of a response future polled again after it completed: a
/// fail-closed 503 rather than a panic.
pub fn fail_closed<B>() -> Response<GateBody<B>> {
    Renderer::default().render(Denial::StoreUnavailable, false)
}

/// Takes a refusal decided earlier from its slot in a response future; an
/// empty slot (the future was polled again after completing) answers
/// [`fail_closed`].
pub fn take_refusal<B>(slot: &mut Option<Box<Response<GateBody<B>>>>) -> Response<GateBody<B>> {
    slot.take().map_or_else(fail_closed, |boxed| *boxed)
}

impl<F, B, E> Future for Decided<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GateBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Forward { future } => {
                Poll::Ready(Ok(ready!(future.poll(cx))?.map(GateBody::new)))
            }
            KindProj::Rejected { response } => Poll::Ready(Ok(take_refusal(response))),
        }
    }
}

impl<F, B> fmt::Debug for Decided<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Forward { .. } => "forward",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_tuple("Decided").field(&state).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;

    use super::*;

    #[tokio::test]
    async fn forwards_or_answers_the_stored_rejection() {
        let ok = Decided::<_, ()>::forward(async { Ok::<_, Infallible>(Response::new(())) });
        assert_eq!(ok.await.unwrap().status(), StatusCode::OK);
        let refused = Renderer::default().render(Denial::MissingToken, false);
        let rejected =
            Decided::<std::future::Ready<Result<Response<()>, Infallible>>, ()>::reject(refused);
        assert_eq!(rejected.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
}
