//! What the request path keeps of a request for its record.
//!
//! Capturing costs the request no allocation of its own: the [`Capture`]
//! lives in the request's trail, the allocation the trail takes anyway
//! ([`Captured`]), and the path, the query, the user agent and the request
//! id are copied out of the request into one buffer inside it, each only
//! as far as its limit can show (a long query is redacted first). The
//! buffer holds [`INLINE_TEXT`] bytes in place, as much as most API
//! requests send (`/v1/notes/42` and `curl/8.5.0`, say); longer text takes
//! one allocation.
//!
//! Copied, not shared: hyper parses a request head into slices of the
//! connection's read buffer, so a record holding the request's `Uri` or
//! header values would keep that buffer alive until the writer got to it,
//! and the connection would allocate a fresh one for the requests after
//! it. A queue of records would then pin a buffer per record instead of a
//! few hundred bytes.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{Method, Request};
use tokengate_check::is_grpc;
use tokengate_core::{ClientIp, Denial, Principal, RateFallback, RequestTrail, TrailFacts};

use smallvec::SmallVec;

use crate::limits::{FieldLimits, kept_agent, kept_path, kept_query};
use crate::request_id::{REQUEST_ID, RequestId};

/// The bytes of a request's text a [`Capture`] holds without allocating.
pub(crate) const INLINE_TEXT: usize = 96;

/// A request's [`Capture`], kept in the request's trail
/// ([`RequestTrail::with_attachment`]): the trail and the record are one
/// allocation, made when the request comes in, and the record travels in
/// it to the sink. Only the request's exchange writes the capture, and the
/// sink reads it after the hand-over, so its lock is never contended.
pub(crate) struct Captured(RequestTrail);

impl Captured {
    /// `capture` in a new trail.
    pub(crate) fn new(capture: Capture) -> Self {
        Self(RequestTrail::with_attachment(Mutex::new(capture)))
    }

    /// The trail, for the request's extensions.
    pub(crate) fn trail(&self) -> &RequestTrail {
        &self.0
    }

    /// The capture (always there: [`Captured::new`] put it in).
    pub(crate) fn lock(&self) -> Option<MutexGuard<'_, Capture>> {
        let slot = self.0.attachment::<Mutex<Capture>>()?;
        Some(slot.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Ends the capture under one lock: `end` writes the last of it, then
    /// what the layers noted is taken out of the trail into it (a denial's
    /// reason yields to one the response carried). Called when the
    /// exchange ends, on the request's thread, which the request's own
    /// handle of the trail has usually left by then: the notes move rather
    /// than being copied.
    pub(crate) fn close(&mut self, end: impl FnOnce(&mut Capture)) {
        let facts = self.0.take_facts();
        if let Some(mut capture) = self.lock() {
            end(&mut capture);
            capture.settle(facts);
        }
    }
}

/// One request's record as the request path fills it in: the request's
/// text, then the outcome, then (when the exchange ends) what the layers
/// noted in the request's trail.
pub(crate) struct Capture {
    pub(crate) method: Method,
    /// Path, query, user agent, given request id: one after the other,
    /// each valid UTF-8 (copied from `&str`s whole).
    text: SmallVec<[u8; INLINE_TEXT]>,
    path_end: usize,
    query_end: Option<usize>,
    agent_end: Option<usize>,
    pub(crate) request_id: RequestId,
    pub(crate) grpc: bool,
    pub(crate) client_ip: Option<ClientIp>,
    pub(crate) principal: Option<Principal>,
    pub(crate) timestamp: SystemTime,
    pub(crate) status: Option<u16>,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) reason: Option<&'static str>,
    pub(crate) rate_fallback: Option<RateFallback>,
    pub(crate) latency: Duration,
    pub(crate) ending: Ending,
    pub(crate) limits: FieldLimits,
}

impl Capture {
    /// Copies what a record shows of `request` that came in at
    /// `timestamp`, each field only as far as its limit can show it (and a
    /// character more, so a truncation is still seen): a record holds a
    /// few KiB at most whatever the request sent, and reads exactly as if
    /// it had kept everything.
    pub(crate) fn new<B>(request: &Request<B>, timestamp: SystemTime, limits: FieldLimits) -> Self {
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
        let mut text = SmallVec::new();
        for part in parts {
            text.extend_from_slice(part.as_bytes());
        }
        let path_end = path.len();
        let query_end = query.map(|query| path_end + query.len());
        let agent_end = agent.map(|agent| query_end.unwrap_or(path_end) + agent.len());
        Self {
            method: request.method().clone(),
            text,
            path_end,
            query_end,
            agent_end,
            request_id: given.map_or_else(RequestId::generate, |_| RequestId::Given),
            grpc,
            client_ip: None,
            principal: None,
            timestamp,
            status: None,
            grpc_status: None,
            reason: None,
            rate_fallback: None,
            latency: Duration::ZERO,
            ending: Ending::Cancelled,
            limits,
        }
    }

    /// Takes a denial's reason, and the rate state's fallback policy when
    /// that decided it.
    pub(crate) fn note_denial(&mut self, denial: &Denial) {
        self.reason = Some(denial.reason());
        self.rate_fallback = denial.rate_fallback();
    }

    /// The text from byte `start` to `end`: whole parts, so valid UTF-8.
    fn text(&self, start: usize, end: usize) -> &str {
        std::str::from_utf8(&self.text[start..end]).unwrap_or_default()
    }

    pub(crate) fn path(&self) -> &str {
        self.text(0, self.path_end)
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.query_end.map(|end| self.text(self.path_end, end))
    }

    pub(crate) fn user_agent(&self) -> Option<&str> {
        let start = self.query_end.unwrap_or(self.path_end);
        self.agent_end.map(|end| self.text(start, end))
    }

    /// The client's own request id, when it gave a usable one.
    pub(crate) fn given_id(&self) -> &str {
        let start = self.agent_end.or(self.query_end).unwrap_or(self.path_end);
        self.text(start, self.text.len())
    }

    /// Takes the layers' notes (`facts`, out of the request's trail): a
    /// denial's reason yields to one the response carried.
    fn settle(&mut self, facts: TrailFacts) {
        if self.reason.is_none()
            && let Some(denial) = &facts.denial
        {
            self.note_denial(denial);
        }
        if self.rate_fallback.is_none() {
            self.rate_fallback = facts.rate_fallback;
        }
        self.client_ip = facts.client_ip;
        self.principal = facts.principal;
    }
}

/// How the exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ending {
    /// The response was sent to its end.
    Completed,
    /// The client went away (the future or the body was dropped early).
    Cancelled,
    /// The inner service returned an error instead of a response.
    ServiceError,
    /// The response body failed while streaming.
    BodyError,
}

impl Ending {
    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::ServiceError => "service_error",
            Self::BodyError => "body_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::request_id::REQUEST_ID;

    /// A capture of `GET path?query` from `agent` with request id `id`.
    fn capture(path: &str, query: &str, agent: &str, id: &str) -> Capture {
        let request = Request::get(format!("{path}?{query}"))
            .header(http::header::USER_AGENT, agent)
            .header(&REQUEST_ID, id)
            .body(())
            .unwrap();
        Capture::new(&request, SystemTime::UNIX_EPOCH, FieldLimits::default())
    }

    #[test]
    fn short_text_is_held_in_place_and_long_text_spills_whole() {
        let short = capture("/v1/notes/42", "page=2", "curl/8.5.0", "req-7");
        assert!(!short.text.spilled(), "{} bytes", short.text.len());
        assert_eq!(
            (
                short.path(),
                short.query(),
                short.user_agent(),
                short.given_id()
            ),
            ("/v1/notes/42", Some("page=2"), Some("curl/8.5.0"), "req-7")
        );
        let agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        let long = capture("/v1/notes/42/attachments", "page=2", agent, "req-8");
        assert!(long.text.spilled(), "{} bytes", long.text.len());
        assert_eq!(
            (
                long.path(),
                long.query(),
                long.user_agent(),
                long.given_id()
            ),
            (
                "/v1/notes/42/attachments",
                Some("page=2"),
                Some(agent),
                "req-8"
            )
        );
    }
}
