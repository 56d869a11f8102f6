//! Where records go.

mod count;
mod file;
mod tracing_sink;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use count::CountUsage;
pub use file::{JsonLinesSink, JsonLinesSinkBuilder, Overflow, SinkStats};
pub use tracing_sink::TracingSink;

use crate::record::AuditEvent;
use crate::record::AuditRecord;

/// Receives every record. Called once per request, from the request's own
/// task (when the response ends, or when it is dropped): implementations
/// must return quickly or block by explicit, documented policy, and should
/// call [`AuditRecord::event`] off the request path when they can.
/// Implemented for closures taking an [`AuditEvent`] (which build the
/// event in place).
///
/// A sink whose queue can fill (the JSON-lines sink in
/// [`Overflow::Block`]) also reserves room for a request's record before
/// the request is handled ([`AuditSink::reserve`]), so that waiting for
/// room is an asynchronous wait in the service's `poll_ready`, never a
/// blocked thread.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: AuditRecord);

    /// Room for one more record, held for a request from before it is
    /// handled until its record is handed to [`AuditSink::record_reserved`]
    /// (or given back with [`AuditSink::release`]). The default holds
    /// nothing: the sink always has room.
    fn reserve(&self) -> Reservation {
        Reservation::Ready
    }

    /// Takes the record of a request that holds a reservation.
    fn record_reserved(&self, record: AuditRecord) {
        self.record(record);
    }

    /// Gives back a reservation that will not be used.
    fn release(&self) {}
}

/// The answer of [`AuditSink::reserve`].
#[non_exhaustive]
pub enum Reservation {
    /// Room is held.
    Ready,
    /// Room is awaited: resolves to `true` once it is held, `false` when
    /// the sink's bound on the wait passed (the request is then refused
    /// with 503).
    Wait(Pin<Box<dyn Future<Output = bool> + Send + Sync>>),
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "Ready",
            Self::Wait(_) => "Wait",
        })
    }
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

    fn reserve(&self) -> Reservation {
        (**self).reserve()
    }

    fn record_reserved(&self, record: AuditRecord) {
        (**self).record_reserved(record);
    }

    fn release(&self) {
        (**self).release();
    }
}
