//! What a [`CheckService`](super::CheckService) tells operators about each
//! request: one count of its decision (the `metrics` facade) and one span
//! (`tracing`).
//!
//! The names are in [`tokengate_core::metric_names`]. With no recorder installed a
//! count is a relaxed load; with no subscriber interested in the span's
//! level (`DEBUG`, target `tokengate`), the span is never built and every
//! field write below is skipped. In a process with no `tracing`
//! subscriber at all the span is not even described: `tracing`'s `log`
//! fallback (on whenever any crate enables its `log` feature, as axum's
//! default `tower-log` does) would otherwise format it for the `log` crate
//! at each step, some 400 instructions per check for records no one
//! reads. Such a process sees tokengate's decisions in its metrics and
//! audit records.

use http::Request;
use metrics::Counter;
use tracing::Span;
use tracing::field::Empty;

use super::refusal::Refusal;
use tokengate_core::metric_names::DECISIONS;
use tokengate_core::{ClientIp, Principal};

/// The decision counts of one named check.
#[derive(Clone)]
pub(super) struct Decisions {
    name: &'static str,
    /// Registered once, when the service is made: the hot path increments
    /// a handle, with no key built or looked up per request.
    allowed: Counter,
}

impl Decisions {
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            allowed: metrics::counter!(
                DECISIONS,
                "layer" => name,
                "outcome" => "allow",
                "reason" => "allowed"
            ),
        }
    }

    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    #[inline]
    pub(super) fn allowed(&self) {
        self.allowed.increment(1);
    }

    /// Counts a refusal under its denial's layer and reason (a refusal
    /// without a denial is the fail-closed 500, counted as `internal`).
    pub(super) fn refused(&self, refusal: &Refusal) {
        let (layer, reason) = refusal.denial().map_or((self.name, "internal"), |denial| {
            (denial.layer(), denial.reason())
        });
        metrics::counter!(
            DECISIONS,
            "layer" => layer,
            "outcome" => "deny",
            "reason" => reason
        )
        .increment(1);
    }
}

/// The request's span: OpenTelemetry's semantic-convention names where
/// they exist, `tokengate.*` for the rest; the decision's fields are
/// written once it is known.
#[inline]
pub(super) fn span<B>(check: &'static str, request: &Request<B>) -> Span {
    if !tracing::dispatcher::has_been_set() {
        return Span::none();
    }
    let span = tracing::debug_span!(
        target: "tokengate",
        "tokengate.check",
        "http.request.method" = Empty,
        "url.path" = Empty,
        "http.route" = Empty,
        "client.address" = Empty,
        "enduser.id" = Empty,
        "http.response.status_code" = Empty,
        "tokengate.check" = check,
        "tokengate.token_id" = Empty,
        "tokengate.decision" = Empty,
        "tokengate.reason" = Empty,
        "tokengate.limiter" = Empty,
    );
    if !span.is_disabled() {
        span.record("http.request.method", request.method().as_str());
        span.record("url.path", request.uri().path());
    }
    span
}

/// Writes what an admitted request's check learned.
pub(super) fn admitted<B>(span: &Span, request: &Request<B>) {
    if span.is_disabled() {
        return;
    }
    span.record("tokengate.decision", "allow");
    write_request(span, request);
}

/// Writes a refusal's decision, reason, limiter and status.
pub(super) fn refused<B>(span: &Span, request: &Request<B>, refusal: &Refusal) {
    if span.is_disabled() {
        return;
    }
    span.record("tokengate.decision", "deny");
    span.record("http.response.status_code", refusal.status().as_u16());
    if let Some(denial) = refusal.denial() {
        span.record("tokengate.reason", denial.reason());
        if let tokengate_core::Denial::RateLimited(limited) = denial {
            span.record("tokengate.limiter", limited.policy.name());
        }
    }
    write_request(span, request);
}

/// Writes the inner service's status on an admitted request.
pub(super) fn answered(span: &Span, status: http::StatusCode) {
    if !span.is_disabled() {
        span.record("http.response.status_code", status.as_u16());
    }
}

fn write_request<B>(span: &Span, request: &Request<B>) {
    let extensions = request.extensions();
    if let Some(ip) = ClientIp::of(extensions) {
        span.record("client.address", tracing::field::display(ip));
    }
    if let Some(principal) = extensions.get::<Principal>() {
        span.record("enduser.id", principal.subject());
        span.record(
            "tokengate.token_id",
            tracing::field::display(principal.token_id()),
        );
    }
}

/// Gives the installed recorder the unit and meaning of every metric
/// tokengate emits ([`tokengate_core::metric_names`]; optional: recorders
/// work without it).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use tokengate_core::metric_names::*;
    describe_counter!(DECISIONS, Unit::Count, "Decisions of tokengate's checks.");
    describe_counter!(
        CACHE_LOOKUPS,
        Unit::Count,
        "Token verifications by cache result."
    );
    describe_histogram!(
        STORE_LOOKUP_DURATION,
        Unit::Seconds,
        "Token store lookups on cache misses."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Token store lookups that failed."
    );
    describe_counter!(
        RATE_LIMITED,
        Unit::Count,
        "Requests refused by a rate limit."
    );
    describe_counter!(
        RATE_STATE_FALLBACKS,
        Unit::Count,
        "Rate decisions made by the shared state's fallback."
    );
    describe_histogram!(
        RATE_STATE_DURATION,
        Unit::Seconds,
        "Round trips to the shared rate state."
    );
    describe_counter!(AUDIT_RECORDS, Unit::Count, "Audit records by fate.");
    describe_gauge!(
        AUDIT_QUEUE_DEPTH,
        Unit::Count,
        "Audit records waiting for the writer."
    );
    describe_gauge!(
        AUDIT_WRITER_LAG,
        Unit::Seconds,
        "How long the last audit record waited for the writer."
    );
    describe_counter!(
        LEAK_REPORTS,
        Unit::Count,
        "Tokens named in secret-scanning reports, by provider and outcome."
    );
    describe_counter!(
        LEAK_REPORTS_REFUSED,
        Unit::Count,
        "Secret-scanning report requests refused, by provider and reason."
    );
    describe_counter!(
        DPOP_REPLAY_FALLBACKS,
        Unit::Count,
        "DPoP proofs admitted on the instance's own replay record, the shared one unavailable."
    );
    describe_counter!(
        LEAK_NOTICES_DROPPED,
        Unit::Count,
        "Owner notices of leaked tokens dropped on a full queue."
    );
    describe_counter!(
        FEED_EVENTS,
        Unit::Count,
        "Change events applied from the store's feed."
    );
    describe_counter!(
        FEED_RECONNECTS,
        Unit::Count,
        "Reconnections of the change feed."
    );
    describe_counter!(
        FEED_FLUSHES,
        Unit::Count,
        "Cache flushes on feed (re)connection."
    );
    describe_gauge!(FEED_CONNECTED, "Whether the change feed is connected.");
    describe_gauge!(
        FEED_LAST_EVENT,
        Unit::Seconds,
        "When the change feed last heard from the store."
    );
    describe_counter!(
        NEAR_EXPIRY,
        Unit::Count,
        "Admitted requests with a token near its expiry."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No test of this crate installs a `tracing` subscriber: the process
    /// has none, as a server without one has.
    #[test]
    fn without_any_subscriber_no_span_is_described() {
        assert!(!tracing::dispatcher::has_been_set());
        let request = Request::get("/notes").body(()).unwrap();
        let span = span("authenticate", &request);
        assert!(span.is_none(), "a span with metadata: {span:?}");
        // Writing to it is a no-op, not a panic.
        admitted(&span, &request);
        answered(&span, http::StatusCode::OK);
    }
}
