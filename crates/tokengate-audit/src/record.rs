//! The record as captured on the request path: raw, reference-counted
//! parts, turned into an [`AuditEvent`] only where it is written.

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use tokengate_core::RequestTrail;

use crate::event::{AuditEvent, Decision, Ending, clean, redact_query};
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

    fn render(&self, max: usize, truncated: &mut Vec<&'static str>) -> String {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        match self {
            Self::Given(value) => clean(
                &String::from_utf8_lossy(value.as_bytes()),
                max,
                "http.request.id",
                truncated,
            ),
            Self::Generated(seq) => {
                format!("{:08x}-{seq}", PREFIX.get_or_init(rand::random::<u32>))
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
        let mut truncated = Vec::new();
        let path = clean(head.uri.path(), limits.path, "url.path", &mut truncated);
        let query = head
            .uri
            .query()
            .map(|q| redact_query(q, limits.query, &mut truncated));
        let (rpc_service, rpc_method) = match head
            .uri
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
        {
            Some((service, method)) if head.grpc => (
                Some(clean(service, limits.path, "rpc.service", &mut truncated)),
                Some(clean(method, limits.path, "rpc.method", &mut truncated)),
            ),
            _ => (None, None),
        };
        let user_agent = head.user_agent.map(|v| {
            clean(
                &String::from_utf8_lossy(v.as_bytes()),
                limits.user_agent,
                "user_agent.original",
                &mut truncated,
            )
        });
        let request_id = head.request_id.render(limits.request_id, &mut truncated);
        let method = clean(
            head.method.as_str(),
            32,
            "http.request.method",
            &mut truncated,
        );
        let reason = reason.or_else(|| trail.denial().map(tokengate_core::Denial::reason));
        let principal = trail.principal();
        AuditEvent {
            timestamp,
            request_id,
            client_address: trail.client_ip().map(|ip| address_text(ip.addr())),
            method,
            path,
            query,
            rpc_service,
            rpc_method,
            token_id: principal.map(|p| p.token_id().to_string()),
            subject: principal.map(|p| p.subject().to_owned()),
            decision: if reason.is_some() {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reason: reason.map(str::to_owned),
            status: match ending {
                Ending::ServiceError => 500,
                _ => status.unwrap_or(CLIENT_CLOSED),
            },
            grpc_status,
            latency,
            ending,
            user_agent,
            truncated,
        }
    }
}

/// An address as `Display` writes it; IPv4 without `fmt` machinery, which
/// was a tenth of the writer thread's time per record.
fn address_text(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(_) => addr.to_string(),
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

    proptest! {
        #[test]
        fn addresses_read_as_display_writes_them(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            let v4 = IpAddr::from(v4);
            prop_assert_eq!(address_text(v4), v4.to_string());
            let v6 = IpAddr::from(v6);
            prop_assert_eq!(address_text(v6), v6.to_string());
        }
    }
}
