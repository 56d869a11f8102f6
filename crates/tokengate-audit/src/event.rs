//! The audit record, and how request data is made safe to put in it.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

/// Whether the request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Every layer let it through; the status is the handler's.
    Allow,
    /// A tokengate layer refused it.
    Deny,
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

/// One record per request. Field names follow the OpenTelemetry semantic
/// conventions where one exists (`http.request.method`, `url.path`,
/// `client.address`, `user_agent.original`, `rpc.service`, `enduser.id`,
/// ...); tokengate's own are under `tokengate.*`.
///
/// Every text field is cleaned ([`clean`]): control characters escaped,
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
}

impl AuditEvent {
    /// The record as a JSON object (one line, once serialised: control
    /// characters are escaped by JSON itself as well).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |key: &str, value: Value| {
            if !value.is_null() {
                m.insert(key.to_owned(), value);
            }
        };
        put(
            "timestamp",
            humantime::format_rfc3339_millis(self.timestamp)
                .to_string()
                .into(),
        );
        put("http.request.id", self.request_id.clone().into());
        put("client.address", self.client_address.clone().into());
        put("http.request.method", self.method.clone().into());
        put("url.path", self.path.clone().into());
        put("url.query", self.query.clone().into());
        if self.rpc_service.is_some() {
            put("rpc.system", "grpc".into());
        }
        put("rpc.service", self.rpc_service.clone().into());
        put("rpc.method", self.rpc_method.clone().into());
        put("tokengate.token_id", self.token_id.clone().into());
        put("enduser.id", self.subject.clone().into());
        put(
            "tokengate.decision",
            match self.decision {
                Decision::Allow => "allow",
                Decision::Deny => "deny",
            }
            .into(),
        );
        put("tokengate.reason", self.reason.clone().into());
        put("http.response.status_code", self.status.into());
        put("rpc.grpc.status_code", self.grpc_status.into());
        put(
            "tokengate.latency_us",
            u64::try_from(self.latency.as_micros())
                .unwrap_or(u64::MAX)
                .into(),
        );
        put("tokengate.ending", self.ending.as_str().into());
        put("user_agent.original", self.user_agent.clone().into());
        if !self.truncated.is_empty() {
            put("tokengate.truncated", self.truncated.clone().into());
        }
        m
    }
}

impl fmt::Display for AuditEvent {
    /// The JSON line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Value::Object(self.to_json()).to_string())
    }
}

/// Makes request-controlled text safe for a record: control characters
/// (CR, LF, NUL, ESC, DEL, ...) become `\u{..}` escapes, so no sink can be
/// split or steered; the result is cut to at most `max` bytes on a
/// character boundary, and `field` is pushed to `truncated` if it was cut.
pub fn clean(
    text: &str,
    max: usize,
    field: &'static str,
    truncated: &mut Vec<&'static str>,
) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let piece_len = if c.is_control() { 8 } else { c.len_utf8() };
        if out.len() + piece_len > max {
            truncated.push(field);
            return out;
        }
        if c.is_control() {
            out.push_str(&format!("\\u{{{:02x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The query with every value replaced, names kept (cleaned).
pub(crate) fn redact_query(query: &str, max: usize, truncated: &mut Vec<&'static str>) -> String {
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=REDACTED"),
            None => pair.to_owned(),
        })
        .collect();
    clean(&redacted.join("&"), max, "url.query", truncated)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let mut t = Vec::new();
        assert_eq!(
            clean("a\r\nb\0c\u{1b}[31m", 100, "x", &mut t),
            "a\\u{0d}\\u{0a}b\\u{00}c\\u{1b}[31m"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn long_fields_are_cut_on_a_char_boundary_and_flagged() {
        let mut t = Vec::new();
        let cut = clean(&"é".repeat(100), 11, "user_agent.original", &mut t);
        assert_eq!(cut, "ééééé");
        assert_eq!(t, vec!["user_agent.original"]);
    }

    #[test]
    fn query_values_are_redacted_names_kept() {
        let mut t = Vec::new();
        assert_eq!(
            redact_query("page=2&access_token=tg_secret&flag", 100, &mut t),
            "page=REDACTED&access_token=REDACTED&flag"
        );
    }

    proptest! {
        #[test]
        fn cleaned_text_has_no_control_characters_and_respects_the_bound(text in "\\PC*|[\\x00-\\x1f\\x7f]{0,20}", max in 0usize..64) {
            let mut t = Vec::new();
            let out = clean(&text, max, "f", &mut t);
            prop_assert!(out.len() <= max);
            prop_assert!(!out.chars().any(char::is_control));
        }
    }
}
