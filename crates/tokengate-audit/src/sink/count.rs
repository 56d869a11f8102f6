//! A sink that also counts each request for its token's usage.

use std::fmt;
use std::sync::Arc;

use tokengate_store::UsageTally;

use super::{AuditSink, Reservation};
use crate::record::AuditRecord;

/// Counts every request record that names a token in a [`UsageTally`]
/// (admitted, or refused by its reason, with its client address), then
/// hands the record on to `inner`.
///
/// Counting is done as the record is handed over, on the request's task:
/// a short lock of one of the tally's shards, no allocation but for a
/// token the tally has not seen since its last flush. So the counts hold
/// every request, also those an audit queue in
/// [`Overflow::Drop`](super::Overflow::Drop) drops. A request refused
/// before its token was verified (no token, an unknown one, an address
/// rule) belongs to no token and is not counted. The tally goes to the
/// store in batches ([`UsageTally::flush`]); a `Deployment` flushes it
/// every few seconds.
pub struct CountUsage<K> {
    inner: K,
    tally: Option<Arc<UsageTally>>,
}

impl<K> CountUsage<K> {
    /// Counts into `tally`, then hands records to `inner`.
    pub fn new(inner: K, tally: Arc<UsageTally>) -> Self {
        Self {
            inner,
            tally: Some(tally),
        }
    }

    /// Counts nothing: records go to `inner` alone.
    pub fn off(inner: K) -> Self {
        Self { inner, tally: None }
    }

    /// The sink records go on to.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// The tally requests are counted in, unless counting is off.
    pub fn tally(&self) -> Option<&Arc<UsageTally>> {
        self.tally.as_ref()
    }

    fn count(&self, record: &AuditRecord) {
        if let Some(tally) = &self.tally {
            record.with_usage(|usage| {
                tally.count(usage.token_id, usage.at, usage.refused, usage.client);
            });
        }
    }
}

impl<K: Clone> Clone for CountUsage<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            tally: self.tally.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for CountUsage<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountUsage")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<K: AuditSink> AuditSink for CountUsage<K> {
    fn record(&self, record: AuditRecord) {
        self.count(&record);
        self.inner.record(record);
    }

    fn reserve(&self) -> Reservation {
        self.inner.reserve()
    }

    fn record_reserved(&self, record: AuditRecord) {
        self.count(&record);
        self.inner.record_reserved(record);
    }

    fn release(&self) {
        self.inner.release();
    }
}
