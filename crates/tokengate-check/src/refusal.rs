//! A refusal, rendered once and carried to the client.

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::body::CheckBody;
use super::render::Renderer;
use tokengate_core::Denial;

/// A rendered refusal: the response a check answers instead of calling the
/// inner service, with its [`Denial`] in the response's extensions.
///
/// Boxed: refusals are the cold path, and a response held inline would make
/// every response future as large as a response.
#[derive(Debug)]
pub struct Refusal {
    response: Box<Response<Bytes>>,
}

impl Refusal {
    /// A refusal answering `response`. [`Renderer::refuse`] makes these.
    pub fn new(response: Response<Bytes>) -> Self {
        Self {
            response: Box::new(response),
        }
    }

    /// The fail-closed answer of a response future polled again after it
    /// completed: 503, never a panic.
    pub fn unavailable() -> Self {
        Renderer::default().render_refusal(Denial::StoreUnavailable, false)
    }

    /// The denial the refusal stands for.
    pub fn denial(&self) -> Option<&Denial> {
        self.response.extensions().get::<Denial>()
    }

    /// The refusal's status.
    pub fn status(&self) -> http::StatusCode {
        self.response.status()
    }

    /// The refusal's headers, for an earlier check to add its own.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.response.headers_mut()
    }

    /// The response, with the body type of the service it answers for.
    pub fn into_response<B>(self) -> Response<CheckBody<B>> {
        (*self.response).map(CheckBody::full)
    }

    /// The response, for an [`Admit`](super::Admit) to add to.
    pub fn response_mut(&mut self) -> &mut Response<Bytes> {
        &mut self.response
    }
}
