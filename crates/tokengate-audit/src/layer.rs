use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response};
use tokengate_core::{RequestTrail, is_grpc};
use tower::{Layer, Service};

use crate::event::{clean, redact_query};
use crate::future::{Head, Recorder, ResponseFuture};
use crate::sink::AuditSink;

const REQUEST_ID: &str = "x-request-id";

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
        let start = Instant::now();
        let timestamp = SystemTime::now();
        let head = head(&mut request, &self.layer.limits);
        let trail = RequestTrail::new();
        request.extensions_mut().insert(trail.clone());
        let recorder = Recorder::new(Arc::clone(&self.layer.sink), head, trail, timestamp, start);
        ResponseFuture::new(self.inner.call(request), recorder)
    }
}

/// What the record keeps of the request, cleaned and bounded. A missing or
/// unusable `x-request-id` is generated and set on the request, so the
/// handler sees the same id.
fn head<B>(request: &mut Request<B>, limits: &FieldLimits) -> Head {
    let mut truncated = Vec::new();
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= limits.request_id
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned);
    let request_id = given.unwrap_or_else(|| {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        id
    });
    let uri = request.uri();
    let path = clean(uri.path(), limits.path, "url.path", &mut truncated);
    let query = uri
        .query()
        .map(|q| redact_query(q, limits.query, &mut truncated));
    let (rpc_service, rpc_method) = if is_grpc(request.headers()) {
        match uri.path().strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((service, method)) => (
                Some(clean(service, limits.path, "rpc.service", &mut truncated)),
                Some(clean(method, limits.path, "rpc.method", &mut truncated)),
            ),
            None => (None, None),
        }
    } else {
        (None, None)
    };
    let user_agent = request.headers().get(http::header::USER_AGENT).map(|v| {
        clean(
            &String::from_utf8_lossy(v.as_bytes()),
            limits.user_agent,
            "user_agent.original",
            &mut truncated,
        )
    });
    Head {
        request_id,
        method: clean(
            request.method().as_str(),
            32,
            "http.request.method",
            &mut truncated,
        ),
        path,
        query,
        rpc_service,
        rpc_method,
        user_agent,
        truncated,
    }
}
