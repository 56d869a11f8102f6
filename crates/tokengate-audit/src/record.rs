//! The record as captured on the request path: raw parts copied out of
//! the request, turned into an [`AuditEvent`] only where it is written.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, Request};
use tokengate_core::{ClientIp, Denial, Principal, RequestTrail, is_grpc};

use crate::event::{AuditEvent, Decision, Ending, clean_into, redact_query, redact_query_into};
use crate::limits::{FieldLimits, REQUEST_ID};

/// Status assumed when the client left before any response was made (the
/// "client closed request" convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's record, as the audit layer hands it to a sink.
///
/// Capturing it costs the request two allocations: the record's box, and
/// one buffer holding the path, the query, the user agent and the request
/// id, copied out of the request (not shared with it, so a queued record
/// never keeps the connection's read buffer alive) and each only as far as
/// its limit can show (a long query is redacted first). When
/// the exchange ends, what the layers noted in the request's trail (the
/// client address, the principal, the denial) is taken out of it on the
/// request's thread, so the record a sink receives shares nothing with
/// the request. [`AuditRecord::event`] does the rest
/// (escaping control characters, bounding lengths, redacting the query,
/// naming the gRPC method, formatting ids): the JSON-lines sink calls it
/// on its writer thread, off the request path.
pub struct AuditRecord {
    raw: Box<Raw>,
}

pub(crate) struct Raw {
    pub(crate) head: RawHead,
    /// The request's trail while the exchange runs; [`Raw::settle`] takes
    /// what it noted out of it when the exchange ends.
    pub(crate) trail: Option<RequestTrail>,
    pub(crate) client_ip: Option<ClientIp>,
    pub(crate) principal: Option<Principal>,
    pub(crate) timestamp: SystemTime,
    pub(crate) status: Option<u16>,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) reason: Option<&'static str>,
    pub(crate) latency: Duration,
    pub(crate) ending: Ending,
    pub(crate) limits: FieldLimits,
}

impl Raw {
    /// A record for a request that came in now, its trail still open.
    pub(crate) fn new(
        head: RawHead,
        trail: RequestTrail,
        timestamp: SystemTime,
        limits: FieldLimits,
    ) -> Self {
        Self {
            head,
            trail: Some(trail),
            client_ip: None,
            principal: None,
            timestamp,
            status: None,
            grpc_status: None,
            reason: None,
            latency: Duration::ZERO,
            ending: Ending::Cancelled,
            limits,
        }
    }

    /// Takes what the layers noted out of the trail (a denial's reason
    /// yields to one the response carried). Called when the exchange
    /// ends, on the request's thread: the trail, which the request no
    /// longer holds by then, is freed there rather than by the sink's
    /// writer, and the record holds no shared state when it is handed
    /// over.
    pub(crate) fn settle(&mut self) {
        if let Some(trail) = self.trail.take() {
            let facts = trail.into_facts();
            self.reason = self.reason.or(facts.denial.as_ref().map(Denial::reason));
            self.client_ip = facts.client_ip;
            self.principal = facts.principal;
        }
    }
}

/// What the request path keeps of the request: the method, and the text
/// a record shows (target, user agent, given request id) copied into one
/// buffer of its own.
///
/// Copied, not shared: hyper parses a request head into slices of the
/// connection's read buffer, so a record holding the request's `Uri` or
/// header values would keep that buffer (16 KiB and up) alive until the
/// writer got to it, and the connection would allocate a fresh one for
/// the requests after it. A queue of records would then pin a buffer per
/// record instead of a few hundred bytes.
pub(crate) struct RawHead {
    pub(crate) method: Method,
    /// Path, query, user agent, given request id: one after the other.
    text: Box<str>,
    path_end: usize,
    query_end: Option<usize>,
    agent_end: Option<usize>,
    pub(crate) request_id: RequestId,
    pub(crate) grpc: bool,
}

impl RawHead {
    /// Copies what a record shows of `request`, each field only as far as
    /// its limit can show it (and a character more, so a truncation is
    /// still seen): a record holds a few KiB at most whatever the request
    /// sent, and reads exactly as if it had kept everything.
    pub(crate) fn capture<B>(request: &Request<B>, limits: &FieldLimits) -> Self {
        let headers = request.headers();
        let uri = request.uri();
        let grpc = is_grpc(headers);
        let path = kept_path(uri.path(), grpc, limits.path);
        let query = uri.query().map(|query| kept_query(query, limits.query));
        let path = path.as_ref();
        let query = query.as_deref();
        let agent = headers
            .get(http::header::USER_AGENT)
            .map(|agent| kept_agent(agent.as_bytes(), limits.user_agent));
        let agent = agent.as_deref();
        let given = headers
            .get(&REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= limits.request_id
                    && id.bytes().all(|b| b.is_ascii_graphic())
            });
        let parts = [
            path,
            query.unwrap_or(""),
            agent.unwrap_or(""),
            given.unwrap_or(""),
        ];
        let path_end = path.len();
        let query_end = query.map(|query| path_end + query.len());
        let agent_end = agent.map(|agent| query_end.unwrap_or(path_end) + agent.len());
        Self {
            method: request.method().clone(),
            text: parts.concat().into_boxed_str(),
            path_end,
            query_end,
            agent_end,
            request_id: given.map_or_else(RequestId::generate, |_| RequestId::Given),
            grpc,
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.text[..self.path_end]
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.query_end.map(|end| &self.text[self.path_end..end])
    }

    pub(crate) fn user_agent(&self) -> Option<&str> {
        let start = self.query_end.unwrap_or(self.path_end);
        self.agent_end.map(|end| &self.text[start..end])
    }

    /// The client's own request id, when it gave a usable one.
    fn given_id(&self) -> &str {
        let start = self.agent_end.or(self.query_end).unwrap_or(self.path_end);
        &self.text[start..]
    }
}

/// What a record keeps of a user agent whose cleaned form is bounded by
/// `max`: its bytes as text (invalid UTF-8 replaced), cut a character past
/// `max`. Only the bytes the cut can reach are converted, so a huge header
/// costs no more than a short one: every sequence that starts within
/// `max + 5` bytes of the start is whole in them, and reads as it does in
/// the whole header.
fn kept_agent(bytes: &[u8], max: usize) -> Cow<'_, str> {
    let keep = max.saturating_add(1);
    let reach = keep.saturating_add(8).min(bytes.len());
    cut(
        String::from_utf8_lossy(bytes.get(..reach).unwrap_or(bytes)),
        keep,
    )
}

/// What a record keeps of a path whose cleaned form is bounded by `max`:
/// a prefix of a character more than that, or for gRPC, where the record
/// also shows the service and the method cut out of the path (each
/// bounded by `max`), that much of each.
fn kept_path(path: &str, grpc: bool, max: usize) -> Cow<'_, str> {
    let keep = max.saturating_add(1);
    if path.len() <= keep {
        return Cow::Borrowed(path);
    }
    if grpc && let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/'))
    {
        let (service, method) = (prefix_within(service, keep), prefix_within(method, keep));
        return Cow::Owned(["/", service, "/", method].concat());
    }
    Cow::Borrowed(prefix_within(path, keep))
}

/// What a record keeps of a query whose redacted, cleaned form is bounded
/// by `max`. A long query is redacted here (values can be long and the
/// redacted form short, so a prefix of the raw query would not do), then
/// cut a character past `max`; redacting again when the record is
/// written changes nothing (redaction is idempotent, and completes a cut
/// `=REDACTED` only past the cut).
fn kept_query(query: &str, max: usize) -> Cow<'_, str> {
    let keep = max.saturating_add(1);
    if query.len() <= keep {
        return Cow::Borrowed(query);
    }
    cut(Cow::Owned(redact_query(query)), keep)
}

/// `text` as [`prefix_within`] cuts it, in place when it is owned.
fn cut(text: Cow<'_, str>, keep: usize) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(prefix_within(text, keep)),
        Cow::Owned(mut text) => {
            let kept = prefix_within(&text, keep).len();
            text.truncate(kept);
            Cow::Owned(text)
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary, or, when `max` cuts a character, the prefix up to
/// the end of that character: `max` bytes of the text are always kept.
fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end += 1;
    }
    &text[..end]
}

/// The client's `x-request-id` (kept in the head's text), or a
/// process-unique number to print.
pub(crate) enum RequestId {
    Given,
    Generated(u64),
}

impl RequestId {
    /// A fresh id: a random per-process prefix and a sequence number, so
    /// ids are unique across restarts without a random draw per request.
    pub(crate) fn generate() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self::Generated(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as the record shows it, into `out` (cleared first); `given`
    /// is the client's id when it gave one.
    fn render_into(
        &self,
        given: &str,
        out: &mut String,
        max: usize,
        truncated: &mut Vec<&'static str>,
    ) {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        match self {
            Self::Given => clean_into(out, given, max, "http.request.id", truncated),
            Self::Generated(seq) => {
                // `{prefix:08x}-{seq}`, without `fmt`.
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.clear();
                let prefix = *PREFIX.get_or_init(rand::random::<u32>);
                for shift in (0..8).rev() {
                    let nibble = (prefix >> (shift * 4)) & 0xf;
                    out.push(char::from(HEX[nibble as usize]));
                }
                out.push('-');
                out.push_str(itoa::Buffer::new().format(*seq));
            }
        }
    }
}

impl AuditRecord {
    /// The record of a finished exchange (boxed when the request came in,
    /// filled in as it went).
    pub(crate) fn new(raw: Box<Raw>) -> Self {
        Self { raw }
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
        let mut raw = self.raw;
        raw.settle();
        let Raw {
            head,
            trail: _,
            client_ip,
            principal,
            timestamp,
            status,
            grpc_status,
            reason,
            latency,
            ending,
            limits,
        } = *raw;
        let truncated = &mut event.truncated;
        truncated.clear();
        clean_into(
            &mut event.path,
            head.path(),
            limits.path,
            "url.path",
            truncated,
        );
        match head.query() {
            Some(query) => redact_query_into(
                event.query.get_or_insert_with(String::new),
                query,
                limits.query,
                truncated,
            ),
            None => event.query = None,
        }
        match head
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
        {
            Some((service, method)) if head.grpc => {
                let slot = event.rpc_service.get_or_insert_with(String::new);
                clean_into(slot, service, limits.path, "rpc.service", truncated);
                let slot = event.rpc_method.get_or_insert_with(String::new);
                clean_into(slot, method, limits.path, "rpc.method", truncated);
            }
            _ => (event.rpc_service, event.rpc_method) = (None, None),
        }
        match head.user_agent() {
            Some(agent) => clean_into(
                event.user_agent.get_or_insert_with(String::new),
                agent,
                limits.user_agent,
                "user_agent.original",
                truncated,
            ),
            None => event.user_agent = None,
        }
        head.request_id.render_into(
            head.given_id(),
            &mut event.request_id,
            limits.request_id,
            truncated,
        );
        clean_into(
            &mut event.method,
            head.method.as_str(),
            32,
            "http.request.method",
            truncated,
        );
        let principal = principal.as_ref();
        match client_ip {
            Some(ip) => address_into(
                event.client_address.get_or_insert_with(String::new),
                ip.addr(),
            ),
            None => event.client_address = None,
        }
        copy_into(
            &mut event.token_id,
            principal.map(|p| p.token_id().as_str()),
        );
        copy_into(&mut event.subject, principal.map(|p| p.subject()));
        copy_into(&mut event.reason, reason);
        event.timestamp = timestamp;
        event.decision = if reason.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        event.status = match ending {
            Ending::ServiceError => 500,
            _ => status.unwrap_or(CLIENT_CLOSED),
        };
        event.grpc_status = grpc_status;
        event.latency = latency;
        event.ending = ending;
    }
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

/// An address as `Display` writes it, into `out` (cleared first); IPv4
/// without `fmt` machinery, which was a tenth of the writer thread's time
/// per record.
fn address_into(out: &mut String, addr: IpAddr) {
    out.clear();
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditRecord")
            .field("method", &self.raw.head.method)
            .field("path", &self.raw.head.path())
            .field("status", &self.raw.status)
            .field("ending", &self.raw.ending)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl AuditRecord {
    /// Whether the record still holds the request's trail (shared with the
    /// request) rather than what was taken out of it.
    pub(crate) fn holds_trail(&self) -> bool {
        self.raw.trail.is_some()
    }

    /// A completed `GET /` for sink tests.
    pub(crate) fn sample() -> Self {
        let request = Request::get("/").body(()).unwrap();
        let limits = FieldLimits::default();
        let mut raw = Raw::new(
            RawHead::capture(&request, &limits),
            RequestTrail::new(),
            SystemTime::UNIX_EPOCH,
            limits,
        );
        raw.status = Some(200);
        raw.ending = Ending::Completed;
        Self::new(Box::new(raw))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn record(uri: &'static str, grpc: bool, full: bool) -> AuditRecord {
        let trail = RequestTrail::new();
        if full {
            let mut extensions = http::Extensions::new();
            extensions.insert(trail.clone());
            let ip = tokengate_core::ClientIp::new("192.0.2.1".parse().unwrap());
            RequestTrail::note_client_ip(&extensions, ip);
            RequestTrail::note_denial(&extensions, &tokengate_core::Denial::MissingToken);
        }
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
        let mut raw = Raw::new(
            RawHead::capture(&request.body(()).unwrap(), &limits),
            trail,
            SystemTime::UNIX_EPOCH + Duration::from_secs(7),
            limits,
        );
        raw.status = Some(if full { 200 } else { 401 });
        raw.grpc_status = full.then_some(16);
        raw.latency = Duration::from_micros(42);
        raw.ending = Ending::Completed;
        AuditRecord::new(Box::new(raw))
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

    #[test]
    fn generated_ids_read_as_formatted() {
        let mut out = String::from("stale");
        RequestId::Generated(42).render_into("", &mut out, 128, &mut Vec::new());
        let prefix = *PREFIX_FOR_TESTS.get_or_init(|| {
            // The same per-process prefix the id was written with.
            let (hex, _) = out.split_once('-').unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        });
        assert_eq!(out, format!("{prefix:08x}-42"));
    }

    static PREFIX_FOR_TESTS: OnceLock<u32> = OnceLock::new();

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
            let head = RawHead::capture(&request, &limits);
            prop_assert!(head.path().len() <= 2 * (max_path + 4) + 2);
            prop_assert!(head.query().map_or(0, str::len) <= max_query + 4);
            let event = AuditRecord::new(Box::new(Raw::new(
                head,
                RequestTrail::new(),
                SystemTime::UNIX_EPOCH,
                limits,
            )))
            .event();
            let shown = [
                Some(event.path),
                event.query,
                event.rpc_service.zip(event.rpc_method).map(|(s, m)| format!("{s} {m}")),
                Some(event.truncated.join(",")),
            ];
            prop_assert_eq!(shown, shown_whole(request.uri(), grpc, &limits));
        }
    }

    proptest! {
        /// A user agent of any bytes a header may carry reads the same
        /// whether the whole header was converted or only what the record
        /// keeps.
        #[test]
        fn a_user_agent_converted_in_part_reads_as_the_whole(
            pieces in proptest::collection::vec(
                prop_oneof![
                    // Visible ASCII and tab, whole characters of two to
                    // four bytes, and stray high bytes.
                    prop_oneof![Just(b'\t'), 0x20u8..0x7f].prop_map(|b| vec![b]),
                    prop_oneof![0x80u32..0x800, 0x800u32..0x1_0000, 0x1_0000u32..0x11_0000]
                        .prop_filter_map("a scalar value", char::from_u32)
                        .prop_map(|c| c.to_string().into_bytes()),
                    (0x80u8..=0xff).prop_map(|b| vec![b]),
                ],
                0..24,
            ),
            max in 0usize..40,
        ) {
            let bytes = pieces.concat();
            let keep = max + 1;
            let whole = String::from_utf8_lossy(&bytes);
            let part = kept_agent(&bytes, max);
            prop_assert!(part.len() <= keep + 3);
            prop_assert_eq!(part.as_ref(), prefix_within(&whole, keep));
        }
    }

    proptest! {
        /// The user agent is copied only up to a character past what its
        /// limit shows; the record reads as if the whole had been kept.
        #[test]
        fn a_cut_user_agent_reads_as_the_whole(agent in "(.|\\PC|[\u{80}-\u{9f}]){0,40}", max in 0usize..48) {
            let clean = |text: &str| {
                let (mut out, mut truncated) = (String::new(), Vec::new());
                clean_into(&mut out, text, max, "user_agent.original", &mut truncated);
                (out, truncated)
            };
            let kept = prefix_within(&agent, max + 1);
            prop_assert!(kept.len() <= max + 4 && agent.starts_with(kept));
            prop_assert_eq!(clean(kept), clean(&agent));
        }
    }

    proptest! {
        #[test]
        fn addresses_read_as_display_writes_them(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            let mut out = String::from("stale");
            let v4 = IpAddr::from(v4);
            address_into(&mut out, v4);
            prop_assert_eq!(&out, &v4.to_string());
            let v6 = IpAddr::from(v6);
            address_into(&mut out, v6);
            prop_assert_eq!(&out, &v6.to_string());
        }
    }
}
