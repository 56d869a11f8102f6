//! The record as captured on the request path: raw, reference-counted
//! parts, turned into an [`AuditEvent`] only where it is written.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use tokengate_core::RequestTrail;

use crate::event::{AuditEvent, Decision, Ending, clean_into, redact_query_into};
use crate::layer::FieldLimits;

/// Status assumed when the client left before any response was made (the
/// "client closed request" convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's record, as the audit layer hands it to a sink.
///
/// Capturing it costs the request a few reference-count increments and one
/// allocation: the method, the URI, the user agent and the request id are
/// kept as the request had them. [`AuditRecord::event`] does the rest
/// (escaping control characters, bounding lengths, redacting the query,
/// naming the gRPC method, formatting ids): the JSON-lines sink calls it
/// on its writer thread, off the request path.
pub struct AuditRecord {
    raw: Box<Raw>,
}

pub(crate) struct Raw {
    pub(crate) head: RawHead,
    pub(crate) trail: RequestTrail,
    pub(crate) timestamp: SystemTime,
    pub(crate) status: Option<u16>,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) reason: Option<&'static str>,
    pub(crate) latency: Duration,
    pub(crate) ending: Ending,
    pub(crate) limits: FieldLimits,
}

/// What the request path keeps of the request.
pub(crate) struct RawHead {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: RequestId,
    pub(crate) grpc: bool,
}

/// The client's `x-request-id`, or a process-unique number to print.
pub(crate) enum RequestId {
    Given(HeaderValue),
    Generated(u64),
}

impl RequestId {
    /// A fresh id: a random per-process prefix and a sequence number, so
    /// ids are unique across restarts without a random draw per request.
    pub(crate) fn generate() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self::Generated(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as the record shows it, into `out` (cleared first).
    fn render_into(&self, out: &mut String, max: usize, truncated: &mut Vec<&'static str>) {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        match self {
            Self::Given(value) => clean_into(
                out,
                &String::from_utf8_lossy(value.as_bytes()),
                max,
                "http.request.id",
                truncated,
            ),
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
        let Raw {
            head,
            trail,
            timestamp,
            status,
            grpc_status,
            reason,
            latency,
            ending,
            limits,
        } = *self.raw;
        let truncated = &mut event.truncated;
        truncated.clear();
        clean_into(
            &mut event.path,
            head.uri.path(),
            limits.path,
            "url.path",
            truncated,
        );
        match head.uri.query() {
            Some(query) => redact_query_into(
                event.query.get_or_insert_with(String::new),
                query,
                limits.query,
                truncated,
            ),
            None => event.query = None,
        }
        match head
            .uri
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
        match head.user_agent {
            Some(agent) => clean_into(
                event.user_agent.get_or_insert_with(String::new),
                &String::from_utf8_lossy(agent.as_bytes()),
                limits.user_agent,
                "user_agent.original",
                truncated,
            ),
            None => event.user_agent = None,
        }
        head.request_id
            .render_into(&mut event.request_id, limits.request_id, truncated);
        clean_into(
            &mut event.method,
            head.method.as_str(),
            32,
            "http.request.method",
            truncated,
        );
        let reason = reason.or_else(|| trail.denial().map(tokengate_core::Denial::reason));
        let principal = trail.principal();
        match trail.client_ip() {
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
            .field("path", &self.raw.head.uri.path())
            .field("status", &self.raw.status)
            .field("ending", &self.raw.ending)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl AuditRecord {
    /// A completed `GET /` for sink tests.
    pub(crate) fn sample() -> Self {
        Self::new(Box::new(Raw {
            head: RawHead {
                method: Method::GET,
                uri: Uri::from_static("/"),
                user_agent: None,
                request_id: RequestId::generate(),
                grpc: false,
            },
            trail: RequestTrail::new(),
            timestamp: SystemTime::UNIX_EPOCH,
            status: Some(200),
            grpc_status: None,
            reason: None,
            latency: Duration::ZERO,
            ending: Ending::Completed,
            limits: FieldLimits::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
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
        AuditRecord::new(Box::new(Raw {
            head: RawHead {
                method: Method::POST,
                uri: Uri::from_static(uri),
                user_agent: full.then(|| HeaderValue::from_bytes(b"agent/1\t\xc2\x85").unwrap()),
                request_id: RequestId::Given(HeaderValue::from_static("req-7")),
                grpc,
            },
            trail,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(7),
            status: Some(if full { 200 } else { 401 }),
            grpc_status: full.then_some(16),
            reason: None,
            latency: Duration::from_micros(42),
            ending: Ending::Completed,
            limits: FieldLimits {
                path: 12,
                ..FieldLimits::default()
            },
        }))
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
        RequestId::Generated(42).render_into(&mut out, 128, &mut Vec::new());
        let prefix = *PREFIX_FOR_TESTS.get_or_init(|| {
            // The same per-process prefix the id was written with.
            let (hex, _) = out.split_once('-').unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        });
        assert_eq!(out, format!("{prefix:08x}-42"));
    }

    static PREFIX_FOR_TESTS: OnceLock<u32> = OnceLock::new();

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
