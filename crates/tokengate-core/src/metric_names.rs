//! The name of every metric tokengate emits through the
//! [`metrics`](https://docs.rs/metrics) facade, with its labels.
//!
//! Install whatever recorder you run (Prometheus, OpenTelemetry, StatsD)
//! before you build the layers: hot-path counters are registered once,
//! when a service, cache or sink is made. With no recorder installed
//! every call site costs a relaxed load. Labels have bounded values only:
//! never a token, subject, path or address. `tokengate_check::describe_metrics`
//! gives a recorder each metric's unit and meaning.

/// Counter: one per decision of a check service. Labels: `layer` (the
/// service's name for `allow`: `gate`, `authenticate`, `rate`, ...; the
/// denial's layer for `deny`: `client_ip`, `ip_filter`, `authenticate`,
/// `rate`, `scope`, `audit`, `check`), `outcome` (`allow`, `deny`) and
/// `reason` (`allowed`, or [`Denial::reason`](crate::Denial::reason)).
pub const DECISIONS: &str = "tokengate_decisions_total";

/// Counter: verifications answered by the cache. Label `result`: `hit`
/// (a cached principal), `negative_hit` (a hash cached as unknown),
/// `miss` (a store lookup), `joined` (waited for another request's
/// lookup of the same hash).
pub const CACHE_LOOKUPS: &str = "tokengate_cache_lookups_total";

/// Histogram, seconds: the store's lookups on cache misses. Export it
/// with [`DURATION_BUCKETS`] (see [`HISTOGRAMS`]).
pub const STORE_LOOKUP_DURATION: &str = "tokengate_store_lookup_duration_seconds";

/// Counter: store lookups that failed. Label `kind`: `error` (the store
/// answered with an error) or `timeout` (the lookup bound passed). Both
/// series exist from the start (at 0), so a rate over them is defined
/// before the first failure.
pub const STORE_ERRORS: &str = "tokengate_store_errors_total";

/// Counter: requests a rate limit refused. Label `limiter`: the limiter's
/// name (set in the configuration, so bounded); each configured limiter's
/// series exists (at 0) from when its layer is made.
pub const RATE_LIMITED: &str = "tokengate_rate_limited_total";

/// Counter: decisions a shared rate state (Redis) could not make in
/// time, answered by its fallback. Label `policy`: `local`, `fail_open`
/// or `fail_closed`.
pub const RATE_STATE_FALLBACKS: &str = "tokengate_rate_state_fallbacks_total";

/// Histogram, seconds: round trips to a shared rate state. Export it
/// with [`DURATION_BUCKETS`] (see [`HISTOGRAMS`]).
pub const RATE_STATE_DURATION: &str = "tokengate_rate_state_duration_seconds";

/// Counter: audit records by fate. Label `result`: `written`, `dropped`
/// (the queue was full) or `failed` (the write failed).
pub const AUDIT_RECORDS: &str = "tokengate_audit_records_total";

/// Gauge, records: queued for the audit writer, set as the writer starts
/// a batch and to 0 once it has drained the queue (so an idle writer
/// reads 0).
pub const AUDIT_QUEUE_DEPTH: &str = "tokengate_audit_queue_depth";

/// Gauge, seconds: how long the last record of the writer's latest batch
/// waited between its request's end and the end of that batch.
pub const AUDIT_WRITER_LAG: &str = "tokengate_audit_writer_lag_seconds";

/// Counter: change events received from the store's feed (revocations,
/// rotations, changes) and applied to the cache.
pub const FEED_EVENTS: &str = "tokengate_feed_events_total";

/// Counter: times the change feed reconnected after losing its
/// connection. PostgreSQL's feed only: the SQLite store's feed reads the
/// database file it already has open, and has no connection to lose.
pub const FEED_RECONNECTS: &str = "tokengate_feed_reconnects_total";

/// Counter: times the cache was flushed because the feed may have missed
/// events (every (re)connection).
pub const FEED_FLUSHES: &str = "tokengate_feed_flushes_total";

/// Gauge: 1 while the change feed is connected, 0 while it is not.
pub const FEED_CONNECTED: &str = "tokengate_feed_connected";

/// Gauge, seconds since the Unix epoch: when the feed last heard from the
/// store (an event or a heartbeat). Alert on
/// `time() - tokengate_feed_last_event_timestamp_seconds`.
pub const FEED_LAST_EVENT: &str = "tokengate_feed_last_event_timestamp_seconds";

/// Counter: admitted requests whose token expires within the
/// authenticate layer's expiry window (7 days by default): clients that
/// should rotate soon.
pub const NEAR_EXPIRY: &str = "tokengate_near_expiry_requests_total";

/// Counter: tokens named in secret-scanning reports (`tokengate::leaks`).
/// Labels `provider` (`github`, `gitlab`) and `outcome` (`revoked`,
/// `disabled`, `notified`, `already_dead`, `unknown`).
pub const LEAK_REPORTS: &str = "tokengate_leak_reports_total";

/// Counter: secret-scanning report requests refused before any token was
/// looked at. Labels `provider` and `reason` (`unsigned`, `unknown_key`,
/// `bad_signature`, `keys_unavailable`, `too_large`, `malformed`,
/// `too_many`, `unauthorized`, `timeout`, `store`).
pub const LEAK_REPORTS_REFUSED: &str = "tokengate_leak_reports_refused_total";

/// Counter: webhook delivery attempts (`tokengate::webhooks`). Label
/// `result`: `delivered` (a 2xx answer), `retried` (no answer or another
/// status; tried again later), `failed` (given up after three days, or the
/// webhook was removed).
pub const WEBHOOK_DELIVERIES: &str = "tokengate_webhook_deliveries_total";

/// Counter: owner notices of leaked tokens dropped because the
/// notification queue was full.
pub const LEAK_NOTICES_DROPPED: &str = "tokengate_leak_notices_dropped_total";

/// Counter: DPoP proofs admitted on this instance's own replay record
/// because the shared one (Redis) did not answer in time.
pub const DPOP_REPLAY_FALLBACKS: &str = "tokengate_dpop_replay_fallbacks_total";

/// The bucket bounds, in seconds, for every histogram in [`HISTOGRAMS`]:
/// from 100 µs (a lookup in a local SQLite file) to 2.5 s (past any
/// sensible lookup or Redis timeout). Histograms with the same buckets
/// on every instance add up across instances, which summaries (a
/// Prometheus exporter's default) cannot.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every histogram tokengate emits; give each [`DURATION_BUCKETS`] in
/// your exporter (`PrometheusBuilder::set_buckets_for_metric`).
pub const HISTOGRAMS: &[&str] = &[STORE_LOOKUP_DURATION, RATE_STATE_DURATION];
