//! The record: [`AuditRecord`] as a sink receives it, [`AuditEvent`] as it
//! is written.

use std::fmt;
use std::time::{Duration, SystemTime};

use std::net::IpAddr;

use tokengate_core::{RateFallback, TokenId};

use crate::capture::{Capture, Captured, Ending};
use crate::leak::{LEAK_REPORTED, LeakFacts, LeakReport};
use crate::limits::{clean_into, redact_query_into};

/// Status assumed when the client left before any response was made (the
/// "client closed request" convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's record, as the audit layer hands it to a sink.
///
/// It holds nothing of the request's buffers: the request's text was
/// copied when it came in, into the record, which lives in the request's
/// trail (one allocation for both); what the layers noted there (the
/// client address, the principal, the denial) was taken into the record,
/// on the request's thread, when the exchange ended. [`AuditRecord::event`] does
/// the rest (escaping control characters, bounding lengths, redacting the
/// query, naming the gRPC method, formatting ids): the JSON-lines sink
/// calls it on its writer thread, off the request path.
pub struct AuditRecord {
    kind: Kind,
}

/// What a request's record tells its token's usage
/// ([`AuditRecord::usage`]).
pub(crate) struct Usage<'a> {
    pub(crate) token_id: &'a TokenId,
    pub(crate) at: SystemTime,
    pub(crate) refused: Option<&'static str>,
    pub(crate) client: Option<IpAddr>,
}

/// A request's record, or an event's ([`AuditRecord::leak_reported`]).
enum Kind {
    Request(Captured),
    Leak(Box<LeakReport>),
}

/// Whether the request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Every layer let it through; the status is the handler's.
    Allow,
    /// A tokengate layer refused it.
    Deny,
}

/// One record per request. Field names follow the OpenTelemetry semantic
/// conventions where one exists (`http.request.method`, `url.path`,
/// `client.address`, `user_agent.original`, `rpc.service`, `enduser.id`,
/// ...); tokengate's own are under `tokengate.*`.
///
/// Every text field is cleaned ([`clean`](crate::clean)): control characters escaped,
/// length bounded, truncation flagged in `tokengate.truncated`. The record
/// never holds a token, a token prefix, a header value other than the
/// user agent and request id, or a query value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When the request arrived.
    pub timestamp: SystemTime,
    /// `x-request-id` if the client sent a sane one, otherwise generated.
    pub request_id: String,
    /// The resolved client address, if any.
    pub client_address: Option<String>,
    /// The request method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query with every value replaced by `REDACTED`.
    pub query: Option<String>,
    /// gRPC service, for gRPC requests (`pkg.Service`).
    pub rpc_service: Option<String>,
    /// gRPC method, for gRPC requests.
    pub rpc_method: Option<String>,
    /// The token's public id, if a token was verified.
    pub token_id: Option<String>,
    /// The token's owner, if a token was verified.
    pub subject: Option<String>,
    /// Allowed or denied.
    pub decision: Decision,
    /// The precise reason of a denial (`token_revoked`, `rate_limited`, ...).
    pub reason: Option<String>,
    /// For a refusal decided while a shared rate state (Redis) could not
    /// be reached: the policy that decided (`local` or `fail_closed`).
    pub rate_fallback: Option<&'static str>,
    /// The HTTP status sent.
    pub status: u16,
    /// The gRPC status, when one was sent (headers or trailers).
    pub grpc_status: Option<u16>,
    /// Time from the request's arrival to the response head.
    pub latency: Duration,
    /// How the exchange ended.
    pub ending: Ending,
    /// The user agent, cleaned and cut.
    pub user_agent: Option<String>,
    /// The fields that were cut to fit.
    pub truncated: Vec<&'static str>,
    /// For a leaked token's report (`tokengate.event`: `leak_reported`)
    /// rather than a request: who reported it, where, what was done. The
    /// request fields are then empty.
    pub leak: Option<LeakFacts>,
}

impl AuditEvent {
    /// An event with nothing in it, for [`AuditRecord::fill`](crate::AuditRecord) to fill.
    pub(crate) fn blank() -> Self {
        Self {
            timestamp: SystemTime::UNIX_EPOCH,
            request_id: String::new(),
            client_address: None,
            method: String::new(),
            path: String::new(),
            query: None,
            rpc_service: None,
            rpc_method: None,
            token_id: None,
            subject: None,
            decision: Decision::Allow,
            reason: None,
            rate_fallback: None,
            status: 0,
            grpc_status: None,
            latency: Duration::ZERO,
            ending: Ending::Completed,
            user_agent: None,
            truncated: Vec::new(),
            leak: None,
        }
    }
}

impl AuditRecord {
    /// The record of a finished exchange (made when the request came in,
    /// filled in as it went, closed with what the layers noted).
    pub(crate) fn new(captured: Captured) -> Self {
        Self {
            kind: Kind::Request(captured),
        }
    }

    /// An event's record.
    pub(crate) fn leak(report: Box<LeakReport>) -> Self {
        Self {
            kind: Kind::Leak(report),
        }
    }

    /// When the request's exchange ended (arrival plus latency), or when
    /// the event happened.
    pub(crate) fn ended_at(&self) -> SystemTime {
        match &self.kind {
            Kind::Request(captured) => captured.lock().map_or(SystemTime::UNIX_EPOCH, |capture| {
                capture.timestamp + capture.latency
            }),
            Kind::Leak(report) => report.timestamp,
        }
    }

    /// What the record tells a token's usage, handed to `count`: for a
    /// request whose token was verified, the token, when the request came,
    /// its refusal's reason (none when admitted) and its client address.
    pub(crate) fn with_usage(&self, count: impl FnOnce(Usage<'_>)) {
        let Kind::Request(captured) = &self.kind else {
            return;
        };
        let Some(capture) = captured.lock() else {
            return;
        };
        if let Some(principal) = capture.principal.as_ref() {
            count(Usage {
                token_id: principal.token_id(),
                at: capture.timestamp,
                refused: capture.reason,
                client: capture.client_ip.map(|ip| ip.addr()),
            });
        }
    }

    /// The record, cleaned and bounded.
    pub fn event(self) -> AuditEvent {
        let mut event = AuditEvent::blank();
        self.fill(&mut event);
        event
    }

    /// The record, cleaned and bounded, written over `event`: its strings'
    /// buffers are reused, so a writer that keeps one event allocates
    /// nothing per record for the fields a record usually has.
    pub(crate) fn fill(self, event: &mut AuditEvent) {
        let captured = match self.kind {
            Kind::Request(captured) => captured,
            Kind::Leak(report) => return fill_leak(&report, event),
        };
        let Some(capture) = captured.lock() else {
            return;
        };
        event.leak = None;
        event.truncated.clear();
        fill_target(&capture, event);
        fill_client(&capture, event);
        fill_outcome(&capture, event);
    }
}

/// The request's own fields: path, query, gRPC method, user agent, id,
/// method.
fn fill_target(capture: &Capture, event: &mut AuditEvent) {
    let limits = capture.limits;
    let truncated = &mut event.truncated;
    clean_into(
        &mut event.path,
        capture.path(),
        limits.path,
        "url.path",
        truncated,
    );
    match capture.query() {
        Some(query) => redact_query_into(
            event.query.get_or_insert_with(String::new),
            query,
            limits.query,
            truncated,
        ),
        None => event.query = None,
    }
    let grpc_method = capture
        .path()
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'));
    match grpc_method {
        Some((service, method)) if capture.grpc => {
            let slot = event.rpc_service.get_or_insert_with(String::new);
            clean_into(slot, service, limits.path, "rpc.service", truncated);
            let slot = event.rpc_method.get_or_insert_with(String::new);
            clean_into(slot, method, limits.path, "rpc.method", truncated);
        }
        _ => (event.rpc_service, event.rpc_method) = (None, None),
    }
    match capture.user_agent() {
        Some(agent) => clean_into(
            event.user_agent.get_or_insert_with(String::new),
            agent,
            limits.user_agent,
            "user_agent.original",
            truncated,
        ),
        None => event.user_agent = None,
    }
    capture.request_id.render_into(
        capture.given_id(),
        &mut event.request_id,
        limits.request_id,
        truncated,
    );
    let method = capture.method.as_str();
    clean_into(
        &mut event.method,
        method,
        32,
        "http.request.method",
        truncated,
    );
}

/// Who asked: the client address and the token's id and owner.
fn fill_client(capture: &Capture, event: &mut AuditEvent) {
    match capture.client_ip {
        Some(ip) => {
            let out = event.client_address.get_or_insert_with(String::new);
            out.clear();
            crate::text::push_ip(out, ip.addr());
        }
        None => event.client_address = None,
    }
    let principal = capture.principal.as_ref();
    copy_into(
        &mut event.token_id,
        principal.map(|p| p.token_id().as_str()),
    );
    copy_into(&mut event.subject, principal.map(|p| p.subject()));
}

/// What came of it: the decision and its reason, statuses, timing.
fn fill_outcome(capture: &Capture, event: &mut AuditEvent) {
    copy_into(&mut event.reason, capture.reason);
    event.rate_fallback = capture.rate_fallback.map(RateFallback::as_str);
    event.timestamp = capture.timestamp;
    event.decision = if capture.reason.is_some() {
        Decision::Deny
    } else {
        Decision::Allow
    };
    event.status = match capture.ending {
        Ending::ServiceError => 500,
        _ => capture.status.unwrap_or(CLIENT_CLOSED),
    };
    event.grpc_status = capture.grpc_status;
    event.latency = capture.latency;
    event.ending = capture.ending;
}

/// Sets `slot` to a copy of `value`, reusing the slot's buffer.
fn copy_into(slot: &mut Option<String>, value: Option<&str>) {
    match value {
        Some(value) => {
            let text = slot.get_or_insert_with(String::new);
            text.clear();
            text.push_str(value);
        }
        None => *slot = None,
    }
}

impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Request(captured) => {
                let mut out = f.debug_struct("AuditRecord");
                if let Some(capture) = captured.lock() {
                    out.field("method", &capture.method)
                        .field("path", &capture.path())
                        .field("status", &capture.status)
                        .field("ending", &capture.ending);
                }
                out.finish_non_exhaustive()
            }
            Kind::Leak(report) => f
                .debug_struct("AuditRecord")
                .field("event", &crate::LEAK_REPORTED)
                .field("reporter", &report.reporter)
                .field("outcome", &report.outcome)
                .finish_non_exhaustive(),
        }
    }
}

/// The most of a leak's source a record keeps.
const SOURCE_LIMIT: usize = 512;

impl AuditRecord {
    /// The record of one leaked token's report: `tokengate.event` is
    /// `leak_reported`, with who reported it, where it leaked, what was
    /// done, and the token's id and owner when the store knows it; never
    /// the token. It goes to the sink like a request's record, in the same
    /// chain.
    pub fn leak_reported(report: LeakReport) -> Self {
        Self::leak(Box::new(report))
    }
}

/// Writes `report` over `event`.
pub(crate) fn fill_leak(report: &LeakReport, event: &mut AuditEvent) {
    event.truncated.clear();
    event.timestamp = report.timestamp;
    event.request_id.clear();
    if let Some(id) = &report.request_id {
        clean_into(
            &mut event.request_id,
            id,
            128,
            "http.request.id",
            &mut event.truncated,
        );
    }
    event.client_address = report.client_address.map(|ip| ip.to_string());
    event.method.clear();
    event.path.clear();
    event.query = None;
    event.rpc_service = None;
    event.rpc_method = None;
    event.token_id.clone_from(&report.token_id);
    event.subject = None;
    if let Some(subject) = &report.subject {
        let slot = event.subject.get_or_insert_with(String::new);
        clean_into(slot, subject, 256, "enduser.id", &mut event.truncated);
    }
    event.decision = Decision::Deny;
    event.reason = Some(LEAK_REPORTED.to_owned());
    event.rate_fallback = None;
    event.status = 0;
    event.grpc_status = None;
    event.latency = std::time::Duration::ZERO;
    event.user_agent = None;
    let source = report.source.as_deref().map(|source| {
        let mut out = String::new();
        clean_into(
            &mut out,
            source,
            SOURCE_LIMIT,
            "tokengate.leak.source",
            &mut event.truncated,
        );
        out
    });
    event.leak = Some(LeakFacts {
        reporter: report.reporter,
        source,
        outcome: report.outcome,
    });
}

#[cfg(test)]
impl AuditRecord {
    /// Whether the record's trail still holds the layers' notes: copied
    /// into the record rather than moved, because something else still
    /// held the trail when the exchange ended.
    pub(crate) fn trail_still_noted(&self) -> bool {
        matches!(&self.kind, Kind::Request(captured)
            if captured.trail().client_ip().is_some() || captured.trail().principal().is_some())
    }

    /// A completed `GET /` for sink tests.
    pub(crate) fn sample() -> Self {
        let request = http::Request::get("/").body(()).unwrap();
        let mut capture = Capture::new(
            &request,
            SystemTime::UNIX_EPOCH,
            crate::FieldLimits::default(),
        );
        capture.status = Some(200);
        capture.ending = Ending::Completed;
        Self::new(Captured::new(capture))
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Request};
    use proptest::prelude::*;
    use tokengate_core::RequestTrail;

    use super::*;
    use crate::FieldLimits;
    use crate::request_id::REQUEST_ID;

    fn record(uri: &'static str, grpc: bool, full: bool) -> AuditRecord {
        let limits = FieldLimits {
            path: 12,
            ..FieldLimits::default()
        };
        let mut request = Request::post(uri).header(&REQUEST_ID, "req-7");
        if full {
            let agent = HeaderValue::from_bytes(b"agent/1\t\xc2\x85").unwrap();
            request = request.header(http::header::USER_AGENT, agent);
        }
        if grpc {
            request = request.header(http::header::CONTENT_TYPE, "application/grpc");
        }
        let mut capture = Capture::new(
            &request.body(()).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(7),
            limits,
        );
        capture.status = Some(if full { 200 } else { 401 });
        capture.grpc_status = full.then_some(16);
        capture.latency = Duration::from_micros(42);
        capture.ending = Ending::Completed;
        let mut captured = Captured::new(capture);
        if full {
            let mut extensions = http::Extensions::new();
            extensions.insert(captured.trail().clone());
            let ip = tokengate_core::ClientIp::new("192.0.2.1".parse().unwrap());
            RequestTrail::note_client_ip(&mut extensions, ip);
            RequestTrail::note_denial(&extensions, &tokengate_core::Denial::MissingToken);
        }
        captured.close(|_| {});
        AuditRecord::new(captured)
    }

    #[test]
    fn a_reused_event_reads_as_a_fresh_one() {
        let mut event = AuditEvent::blank();
        let full = || record("/pkg.Service/LongMethodName?a=1&b", true, true);
        full().fill(&mut event);
        assert_eq!(event, full().event());
        assert_eq!(event.truncated, ["url.path", "rpc.method"]);
        assert_eq!(event.query.as_deref(), Some("a=REDACTED&b"));
        assert_eq!(event.client_address.as_deref(), Some("192.0.2.1"));
        assert_eq!(event.user_agent.as_deref(), Some("agent/1\\u{09}\\u{85}"));
        // Whatever the full record left in the buffers is gone.
        let bare = || record("/x", false, false);
        bare().fill(&mut event);
        assert_eq!(event, bare().event());
        assert!(event.truncated.is_empty() && event.query.is_none() && event.rpc_method.is_none());
    }

    /// The path, query and gRPC fields as a record would show them had it
    /// kept the whole target: the oracle for the bounded copy.
    fn shown_whole(uri: &http::Uri, grpc: bool, limits: &FieldLimits) -> [Option<String>; 4] {
        let mut truncated = Vec::new();
        let clean = |text: &str, max, field, truncated: &mut Vec<&'static str>| {
            let mut out = String::new();
            clean_into(&mut out, text, max, field, truncated);
            out
        };
        let path = clean(uri.path(), limits.path, "url.path", &mut truncated);
        let query = uri.query().map(|query| {
            let mut out = String::new();
            redact_query_into(&mut out, query, limits.query, &mut truncated);
            out
        });
        let split = uri.path().strip_prefix('/').and_then(|p| p.split_once('/'));
        let (service, method) = match split {
            Some((service, method)) if grpc => (
                Some(clean(service, limits.path, "rpc.service", &mut truncated)),
                Some(clean(method, limits.path, "rpc.method", &mut truncated)),
            ),
            _ => (None, None),
        };
        let truncated = Some(truncated.join(","));
        [
            Some(path),
            query,
            service.zip(method).map(|(s, m)| format!("{s} {m}")),
            truncated,
        ]
    }

    proptest! {
        /// A record keeps of the target only what its limits can show, and
        /// reads exactly as if it had kept it whole.
        #[test]
        fn a_bounded_target_reads_as_the_whole(
            path in "/[a-zA-Z0-9._~!$'()*+,;:@/-]{0,60}",
            query in proptest::option::of("[a-z0-9=&._~-]{0,80}"),
            grpc in any::<bool>(),
            max_path in 0usize..24,
            max_query in 0usize..24,
        ) {
            let limits = FieldLimits { path: max_path, query: max_query, ..FieldLimits::default() };
            let target = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut request = Request::get(target.as_str());
            if grpc {
                request = request.header(http::header::CONTENT_TYPE, "application/grpc");
            }
            let Ok(request) = request.body(()) else {
                return Err(TestCaseError::reject("not a URI"));
            };
            let capture = Capture::new(&request, SystemTime::UNIX_EPOCH, limits);
            prop_assert!(capture.path().len() <= 2 * (max_path + 4) + 2);
            prop_assert!(capture.query().map_or(0, str::len) <= max_query + 4);
            let event = AuditRecord::new(Captured::new(capture)).event();
            let shown = [
                Some(event.path),
                event.query,
                event.rpc_service.zip(event.rpc_method).map(|(s, m)| format!("{s} {m}")),
                Some(event.truncated.join(",")),
            ];
            prop_assert_eq!(shown, shown_whole(request.uri(), grpc, &limits));
        }
    }
}
