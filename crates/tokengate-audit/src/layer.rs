//! The layer's configuration: the sink and the field limits.

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use crate::limits::FieldLimits;
use crate::service::Audit;
use crate::sink::AuditSink;

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
        Audit::new(inner, Arc::clone(&self.sink), self.limits)
    }
}
