//! Where records go.

mod file;
mod tracing_sink;

use std::sync::Arc;

pub use file::{JsonLinesSink, JsonLinesSinkBuilder, Overflow, SinkStats};
pub use tracing_sink::TracingSink;

use crate::event::AuditEvent;

/// Receives every record. Called once per request, from the request's own
/// task (when the response ends, or when it is dropped): implementations
/// must return quickly or block by explicit, documented policy. Implemented
/// for closures.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, event: AuditEvent);
}

impl<F> AuditSink for F
where
    F: Fn(AuditEvent) + Send + Sync + 'static,
{
    fn record(&self, event: AuditEvent) {
        self(event);
    }
}

impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    fn record(&self, event: AuditEvent) {
        (**self).record(event);
    }
}
