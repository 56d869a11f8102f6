//! The audit service: room for the record in `poll_ready`, the record
//! captured in `call`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use http::{Request, Response};
use tokengate_check::is_grpc;
use tokengate_core::Denial;
use tower::Service;

use crate::capture::{Capture, Captured};
use crate::future::{Emitter, ResponseFuture};
use crate::limits::FieldLimits;
use crate::sink::{AuditSink, Reservation};

/// The service [`AuditLayer`](crate::AuditLayer) makes.
///
/// Its `poll_ready` reserves room for the next request's record in the
/// sink ([`AuditSink::reserve`]) before it asks the inner service: a sink
/// with a full queue makes the request wait there, asynchronously. A clone
/// starts without a reservation; one that is dropped unused gives it back.
pub struct Audit<S, K> {
    inner: S,
    sink: Arc<K>,
    limits: FieldLimits,
    room: Room,
}

/// Where this service stands with the sink's room for the next record.
enum Room {
    /// Not asked yet.
    None,
    /// Waiting for the sink.
    Waiting(Pin<Box<dyn Future<Output = bool> + Send + Sync>>),
    /// Room is held for the next call.
    Held(HeldRoom),
    /// The sink's bound on the wait passed: the next call is refused.
    TimedOut,
}

/// Room held in a sink, given back unless it was used.
struct HeldRoom(Option<Arc<dyn AuditSink>>);

impl HeldRoom {
    fn used(mut self) {
        self.0 = None;
    }
}

impl Drop for HeldRoom {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            sink.release();
        }
    }
}

impl<S, K> Audit<S, K> {
    pub(crate) fn new(inner: S, sink: Arc<K>, limits: FieldLimits) -> Self {
        Self {
            inner,
            sink,
            limits,
            room: Room::None,
        }
    }
}

impl<S: Clone, K> Clone for Audit<S, K> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.sink), self.limits)
    }
}

impl<S, K: AuditSink> Audit<S, K> {
    fn held(&self) -> Room {
        let sink: Arc<dyn AuditSink> = self.sink.clone();
        Room::Held(HeldRoom(Some(sink)))
    }

    /// Polls the sink until room is held, or the wait's bound passed.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.room = match &mut self.room {
                Room::None => match self.sink.reserve() {
                    Reservation::Wait(wait) => Room::Waiting(wait),
                    _ => self.held(),
                },
                Room::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(true) => self.held(),
                    Poll::Ready(false) => Room::TimedOut,
                },
                Room::Held(_) | Room::TimedOut => return Poll::Ready(()),
            };
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Audit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = bytes::Bytes>,
    K: AuditSink,
{
    type Response = Response<crate::AuditBody<ResBody, K>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_room(cx));
        if matches!(self.room, Room::TimedOut) {
            // The call is refused without the inner service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let timestamp = SystemTime::now();
        let captured = Captured::new(Capture::new(&request, timestamp, self.limits));
        request.extensions_mut().insert(captured.trail().clone());
        // A call without `poll_ready` takes room only if there is some now.
        let room = match std::mem::replace(&mut self.room, Room::None) {
            Room::None => match self.sink.reserve() {
                Reservation::Ready => self.held(),
                _ => Room::None,
            },
            room => room,
        };
        let (reserved, timed_out) = match room {
            Room::Held(held) => {
                held.used();
                (true, false)
            }
            Room::TimedOut => (false, true),
            Room::None | Room::Waiting(_) => (false, false),
        };
        let recorder = Emitter::new(Arc::clone(&self.sink), captured, reserved, request.method());
        if timed_out {
            let grpc = is_grpc(request.headers());
            metrics::counter!(
                tokengate_core::metric_names::DECISIONS,
                "layer" => "audit",
                "outcome" => "deny",
                "reason" => "audit_unavailable"
            )
            .increment(1);
            let close = tokengate_check::refusal_closes_connection(&request);
            return ResponseFuture::refused(Denial::AuditUnavailable, grpc, close, recorder);
        }
        ResponseFuture::new(self.inner.call(request), recorder)
    }
}
