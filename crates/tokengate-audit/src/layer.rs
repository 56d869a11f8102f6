use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderName, Request, Response};
use tokengate_core::RequestTrail;
use tower::{Layer, Service};

use crate::future::{Recorder, ResponseFuture};
use crate::record::RawHead;
use crate::sink::AuditSink;

/// A constant name: looking a header up by `&str` parses the name first.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long each request-controlled field may be, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// `url.path` (default 2,048).
    pub path: usize,
    /// `url.query` (default 2,048).
    pub query: usize,
    /// `user_agent.original` (default 256).
    pub user_agent: usize,
    /// `http.request.id` (default 128).
    pub request_id: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        Self {
            path: 2_048,
            query: 2_048,
            user_agent: 256,
            request_id: 128,
        }
    }
}

/// Records exactly one [`AuditEvent`](crate::AuditEvent) per request into
/// a sink. Place it outermost: it then sees every outcome, including the
/// refusals of every tokengate layer inside it.
pub struct AuditLayer<K> {
    sink: Arc<K>,
    limits: FieldLimits,
}

impl<K> Clone for AuditLayer<K> {
    fn clone(&self) -> Self {
        Self {
            sink: Arc::clone(&self.sink),
            limits: self.limits,
        }
    }
}

impl<K> fmt::Debug for AuditLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<K: AuditSink> AuditLayer<K> {
    /// Records into `sink`.
    pub fn new(sink: K) -> Self {
        Self {
            sink: Arc::new(sink),
            limits: FieldLimits::default(),
        }
    }

    /// Bounds request-controlled fields to `limits`.
    pub fn limits(mut self, limits: FieldLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl<S, K> Layer<S> for AuditLayer<K> {
    type Service = Audit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuditLayer`] makes.
pub struct Audit<S, K> {
    inner: S,
    layer: AuditLayer<K>,
}

impl<S: Clone, K> Clone for Audit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Audit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    K: AuditSink,
{
    type Response = Response<crate::AuditBody<ResBody, K>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let timestamp = SystemTime::now();
        let head = RawHead::capture(&request, &self.layer.limits);
        let trail = RequestTrail::new();
        request.extensions_mut().insert(trail.clone());
        let recorder = Recorder::new(
            Arc::clone(&self.layer.sink),
            head,
            self.layer.limits,
            trail,
            timestamp,
        );
        ResponseFuture::new(self.inner.call(request), recorder)
    }
}
