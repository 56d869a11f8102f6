//! Where records go.

mod file;
mod tracing_sink;

use std::sync::Arc;

pub use file::{JsonLinesSink, JsonLinesSinkBuilder, Overflow, SinkStats};
pub use tracing_sink::TracingSink;

use crate::event::AuditEvent;
use crate::record::AuditRecord;

/// Receives every record. Called once per request, from the request's own
/// task (when the response ends, or when it is dropped): implementations
/// must return quickly or block by explicit, documented policy, and should
/// call [`AuditRecord::event`] off the request path when they can.
/// Implemented for closures taking an [`AuditEvent`] (which build the
/// event in place).
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: AuditRecord);
}

impl<F> AuditSink for F
where
    F: Fn(AuditEvent) + Send + Sync + 'static,
{
    fn record(&self, record: AuditRecord) {
        self(record.event());
    }
}

impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    fn record(&self, record: AuditRecord) {
        (**self).record(record);
    }
}
