use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokengate_check::{CheckBody, Renderer};
use tokengate_core::{Clock, Denial, SystemClock};

use crate::capture::{Captured, Ending};
use crate::record::AuditRecord;
use crate::sink::AuditSink;

/// Holds one request's record until the exchange ends, and emits it
/// exactly once: when finished explicitly, or as cancelled when dropped.
///
/// The record is allocated once, in the request's trail, when the request
/// comes in, and travels there to the sink ([`Captured`]): the response
/// future and body stay small, and no second allocation is made when the
/// exchange ends.
pub(crate) struct Emitter<K: AuditSink> {
    sink: Arc<K>,
    pending: Option<Captured>,
    /// When the request came in, on the TSC clock (for the latency).
    start: u64,
    /// Whether the sink holds room for this record ([`AuditSink::reserve`]).
    reserved: bool,
    /// Whether the request is a `HEAD` (its response body is never read).
    head_request: bool,
}

impl<K: AuditSink> Emitter<K> {
    pub(crate) fn new(sink: Arc<K>, capture: Captured, reserved: bool, method: &Method) -> Self {
        Self {
            sink,
            pending: Some(capture),
            start: SystemClock.now_nanos(),
            reserved,
            head_request: *method == Method::HEAD,
        }
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(SystemClock.now_nanos().saturating_sub(self.start))
    }

    /// Notes the response head: status, a trailers-only gRPC status, the
    /// denial a layer attached.
    fn head<B>(&mut self, response: &Response<B>) {
        let latency = self.elapsed();
        if let Some(mut raw) = self.pending.as_ref().and_then(Captured::lock) {
            raw.status = Some(response.status().as_u16());
            raw.grpc_status = grpc_status(response.headers());
            raw.reason = None;
            if let Some(denial) = response.extensions().get::<Denial>() {
                raw.note_denial(denial);
            }
            raw.latency = latency;
        }
    }

    /// Whether the server legitimately never reads the response body:
    /// the answer to a `HEAD` request (a framework or hyper replaces or
    /// drops its body), and `1xx`, `204` and `304` responses, which carry
    /// none. Such an exchange is complete with its head, not cancelled
    /// when the body is dropped unread.
    fn body_is_never_read(&self, status: StatusCode) -> bool {
        self.head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = grpc_status(trailers)
            && let Some(mut raw) = self.pending.as_ref().and_then(Captured::lock)
        {
            raw.grpc_status = Some(code);
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(mut captured) = self.pending.take() {
            captured.close(|raw| {
                raw.ending = ending;
                // No response head (its status is noted with its latency):
                // the latency runs to now.
                if raw.status.is_none() {
                    raw.latency = self.elapsed();
                }
            });
            let record = AuditRecord::new(captured);
            if self.reserved {
                self.sink.record_reserved(record);
            } else {
                self.sink.record(record);
            }
        }
    }
}

impl<K: AuditSink> Drop for Emitter<K> {
    fn drop(&mut self) {
        self.finish(Ending::Cancelled);
    }
}

impl<K: AuditSink> fmt::Debug for Emitter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

pin_project! {
    /// The response future of [`Audit`](crate::Audit).
    pub struct ResponseFuture<F, K: AuditSink> {
        #[pin]
        kind: Kind<F>,
        recorder: Option<Emitter<K>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        /// The inner service's response, on its way.
        Inner { #[pin] future: F },
        /// Refused before the inner service was called.
        Refused { denial: Option<(Denial, bool, bool)> },
    }
}

impl<F, K: AuditSink> ResponseFuture<F, K> {
    pub(crate) fn new(future: F, recorder: Emitter<K>) -> Self {
        Self {
            kind: Kind::Inner { future },
            recorder: Some(recorder),
        }
    }

    /// Answers `denial` (for a gRPC request if `grpc`; with `Connection:
    /// close` if `close`) without calling the inner service.
    pub(crate) fn refused(denial: Denial, grpc: bool, close: bool, recorder: Emitter<K>) -> Self {
        Self {
            kind: Kind::Refused {
                denial: Some((denial, grpc, close)),
            },
            recorder: Some(recorder),
        }
    }
}

impl<F, K, B, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    K: AuditSink,
{
    type Output = Result<Response<AuditBody<B, K>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.kind.project() {
            KindProj::Inner { future } => ready!(future.poll(cx)).map(|r| r.map(CheckBody::new)),
            KindProj::Refused { denial } => match denial.take() {
                Some((denial, grpc, close)) => {
                    let mut response = Renderer::default().render(denial, grpc);
                    if close {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok(response)
                }
                // Polled after completion: nothing left to answer.
                None => return Poll::Pending,
            },
        };
        let Some(mut recorder) = this.recorder.take() else {
            // Polled after completion: nothing left to record.
            return Poll::Ready(result.map(|r| r.map(AuditBody::unrecorded)));
        };
        match result {
            Ok(response) => {
                recorder.head(&response);
                if recorder.body_is_never_read(response.status()) {
                    recorder.finish(Ending::Completed);
                }
                Poll::Ready(Ok(response.map(|body| AuditBody::new(body, recorder))))
            }
            Err(error) => {
                recorder.finish(Ending::ServiceError);
                Poll::Ready(Err(error))
            }
        }
    }
}

impl<F, K: AuditSink> fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body, watched to its end: the record is emitted when
    /// the body ends (with the gRPC status from the trailers, if any), when
    /// it fails, or as cancelled when it is dropped before its end.
    pub struct AuditBody<B, K: AuditSink> {
        #[pin]
        inner: CheckBody<B>,
        recorder: Option<Emitter<K>>,
    }
}

impl<B, K: AuditSink> AuditBody<B, K> {
    fn new(inner: CheckBody<B>, mut recorder: Emitter<K>) -> Self
    where
        B: Body<Data = Bytes>,
    {
        // An empty body may never be polled: it is complete as it stands.
        if inner.is_end_stream() {
            recorder.finish(Ending::Completed);
        }
        Self {
            inner,
            recorder: Some(recorder),
        }
    }

    fn unrecorded(inner: CheckBody<B>) -> Self {
        Self {
            inner,
            recorder: None,
        }
    }
}

impl<B, K> Body for AuditBody<B, K>
where
    B: Body<Data = Bytes>,
    K: AuditSink,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(recorder) = this.recorder.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        recorder.trailers(trailers);
                    }
                    if this.inner.is_end_stream() {
                        recorder.finish(Ending::Completed);
                    }
                }
                Some(Err(_)) => recorder.finish(Ending::BodyError),
                None => recorder.finish(Ending::Completed),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, K: AuditSink> fmt::Debug for AuditBody<B, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditBody").finish_non_exhaustive()
    }
}
