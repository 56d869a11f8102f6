//! The audit record, and how request data is made safe to put in it.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokengate_core::may_hold_secret;

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
            status: 0,
            grpc_status: None,
            latency: Duration::ZERO,
            ending: Ending::Completed,
            user_agent: None,
            truncated: Vec::new(),
        }
    }

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

impl AuditEvent {
    /// Appends the record to `out` as one JSON object: the members of
    /// [`AuditEvent::to_json`] in the same (sorted) key order, plus
    /// `chain.prev` when given. Written directly, with no intermediate map
    /// and no allocation beyond `out` (the JSON-lines writer reuses one
    /// buffer for every line).
    pub(crate) fn write_json(&self, out: &mut String, chain_prev: Option<&str>) {
        let mut json = JsonObject::new(out);
        if let Some(prev) = chain_prev {
            json.string("chain.prev", prev);
        }
        json.opt_string("client.address", self.client_address.as_deref());
        json.opt_string("enduser.id", self.subject.as_deref());
        json.string("http.request.id", &self.request_id);
        json.string("http.request.method", &self.method);
        json.number("http.response.status_code", u64::from(self.status));
        if let Some(code) = self.grpc_status {
            json.number("rpc.grpc.status_code", u64::from(code));
        }
        json.opt_string("rpc.method", self.rpc_method.as_deref());
        json.opt_string("rpc.service", self.rpc_service.as_deref());
        if self.rpc_service.is_some() {
            json.string("rpc.system", "grpc");
        }
        json.key("timestamp");
        json.out.push('"');
        let _ = write!(
            json.out,
            "{}",
            humantime::format_rfc3339_millis(self.timestamp)
        );
        json.out.push('"');
        json.string(
            "tokengate.decision",
            match self.decision {
                Decision::Allow => "allow",
                Decision::Deny => "deny",
            },
        );
        json.string("tokengate.ending", self.ending.as_str());
        json.number(
            "tokengate.latency_us",
            u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
        );
        json.opt_string("tokengate.reason", self.reason.as_deref());
        json.opt_string("tokengate.token_id", self.token_id.as_deref());
        if !self.truncated.is_empty() {
            json.key("tokengate.truncated");
            json.out.push('[');
            for (i, field) in self.truncated.iter().enumerate() {
                if i > 0 {
                    json.out.push(',');
                }
                push_json_string(json.out, field);
            }
            json.out.push(']');
        }
        json.string("url.path", &self.path);
        json.opt_string("url.query", self.query.as_deref());
        json.opt_string("user_agent.original", self.user_agent.as_deref());
        json.close();
    }
}

/// Writes one JSON object's members in the order given.
struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }

    /// Member names are this file's literals: nothing in them needs escaping.
    fn key(&mut self, key: &'static str) {
        debug_assert!(!key.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'));
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn string(&mut self, key: &'static str, value: &str) {
        self.key(key);
        push_json_string(self.out, value);
    }

    fn opt_string(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.string(key, value);
        }
    }

    fn number(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// Appends `text` as a JSON string: escaped as `serde_json` escapes it
/// (quote, backslash and control characters below U+0020), and further
/// every character that breaks readers or hides what a line holds while
/// staying valid JSON ([`needs_unicode_escape`]) as `\uXXXX`. Read back as
/// JSON, the string equals `text`.
///
/// The writer thread spends most of a line here, so plain text is skipped
/// eight bytes at a time.
fn push_json_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = text.as_bytes();
    let mut plain = 0;
    let mut at = 0;
    while at < bytes.len() {
        if let Some(word) = bytes.get(at..at + 8)
            && !word_needs_escape(word)
        {
            at += 8;
            continue;
        }
        let start = at;
        let byte = bytes[at];
        at += 1;
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            UNICODE_LEAD_A | UNICODE_LEAD_B => {
                // `start` is a char boundary: the scan only stops on ASCII
                // bytes and lead bytes, and steps over whole characters.
                let Some(c) = text.get(start..).and_then(|rest| rest.chars().next()) else {
                    continue;
                };
                at = start + c.len_utf8();
                if !needs_unicode_escape(c) {
                    continue;
                }
                out.push_str(&text[plain..start]);
                let code = u32::from(c);
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(char::from(HEX[((code >> shift) & 0xf) as usize]));
                }
                plain = at;
                continue;
            }
            _ => continue,
        };
        // `start` is an ASCII byte, so both cuts are on char boundaries.
        out.push_str(&text[plain..start]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        plain = at;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// The UTF-8 lead byte of U+2000..U+2FFF (line and paragraph separators,
/// bidi controls, zero-width characters).
const UNICODE_LEAD_A: u8 = 0xe2;
/// The UTF-8 lead byte of U+F000..U+FFFF (the byte-order mark, U+FEFF).
const UNICODE_LEAD_B: u8 = 0xef;

/// Characters that are valid JSON as they are, and still break a reader
/// or a reviewer: U+2028 and U+2029 end lines in JavaScript and in
/// line-splitting tools; bidi controls (U+202A..U+202E, U+2066..U+2069)
/// and zero-width characters (U+200B..U+200F, U+FEFF) make a line display
/// differently from what it holds.
pub(crate) fn needs_unicode_escape(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Whether any of eight bytes is a quote, a backslash, below 0x20, or the
/// lead byte of a character [`needs_unicode_escape`] may name: the classic
/// bit tricks for "has a zero byte" and "has a byte less than n", exact as
/// a yes/no answer (a borrow only starts at a matching byte).
fn word_needs_escape(word: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut eight = [0u8; 8];
    eight.copy_from_slice(word);
    let x = u64::from_ne_bytes(eight);
    let less_than_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let zero_in = |y: u64| y.wrapping_sub(ONES) & !y & HIGH;
    less_than_space
        | zero_in(x ^ (ONES * u64::from(b'"')))
        | zero_in(x ^ (ONES * u64::from(b'\\')))
        | zero_in(x ^ (ONES * u64::from(UNICODE_LEAD_A)))
        | zero_in(x ^ (ONES * u64::from(UNICODE_LEAD_B)))
        != 0
}

impl fmt::Display for AuditEvent {
    /// The JSON line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        self.write_json(&mut line, None);
        f.write_str(&line)
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
    let mut out = String::new();
    clean_into(&mut out, text, max, field, truncated);
    out
}

/// [`clean`] into `out` (cleared first), reusing its buffer.
pub(crate) fn clean_into(
    out: &mut String,
    text: &str,
    max: usize,
    field: &'static str,
    truncated: &mut Vec<&'static str>,
) {
    out.clear();
    // Most fields need nothing: no control character (C0, DEL, or C1,
    // whose UTF-8 starts with 0xC2; a few printable characters share that
    // lead byte and take the slow path) and short enough.
    if text.len() <= max && !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
        out.push_str(text);
        return;
    }
    clean_each(out, text, max, field, truncated);
}

/// [`clean_into`] character by character.
fn clean_each(
    out: &mut String,
    text: &str,
    max: usize,
    field: &'static str,
    truncated: &mut Vec<&'static str>,
) {
    for c in text.chars() {
        let piece_len = if c.is_control() { 8 } else { c.len_utf8() };
        if out.len() + piece_len > max {
            truncated.push(field);
            return;
        }
        if c.is_control() {
            let _ = write!(out, "\\u{{{:02x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
}

/// The query with every value replaced, names kept (cleaned), into `out`.
pub(crate) fn redact_query_into(
    out: &mut String,
    query: &str,
    max: usize,
    truncated: &mut Vec<&'static str>,
) {
    clean_into(out, &redact_query(query), max, "url.query", truncated);
}

/// The query with every value replaced by `REDACTED`, and every name
/// that may hold a secret too (a client that sends its token as a bare
/// parameter name, `?tg_...`); other names kept. Idempotent.
pub(crate) fn redact_query(query: &str) -> String {
    let mut redacted = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            redacted.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, _)) => (name, Some("=REDACTED")),
            None => (pair, None),
        };
        let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        if may_hold_secret(name) || may_hold_secret(&decoded) {
            redacted.push_str("REDACTED");
        } else {
            redacted.push_str(name);
        }
        redacted.push_str(value.unwrap_or_default());
    }
    redacted
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
        let (mut t, mut out) = (Vec::new(), String::from("stale"));
        redact_query_into(&mut out, "page=2&access_token=tg_secret&flag", 100, &mut t);
        assert_eq!(out, "page=REDACTED&access_token=REDACTED&flag");
    }

    #[test]
    fn a_token_sent_as_a_parameter_name_is_redacted() {
        let token = tokengate_core::TokenFormat::default().generate();
        let secret = token.expose_secret();
        let encoded = secret.replacen('A', "%41", 3).replacen('a', "%61", 3);
        for (query, expected) in [
            (secret.to_owned(), "REDACTED".to_owned()),
            (
                format!("{secret}=x&page=2"),
                "REDACTED=REDACTED&page=REDACTED".to_owned(),
            ),
            (
                format!("page=2&{encoded}"),
                "page=REDACTED&REDACTED".to_owned(),
            ),
        ] {
            let redacted = redact_query(&query);
            assert_eq!(redacted, expected, "{query}");
            assert_eq!(redact_query(&redacted), redacted, "idempotent");
        }
    }

    fn event(text: &str, full: bool) -> AuditEvent {
        let some = |s: &str| full.then(|| s.to_owned());
        AuditEvent {
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: text.to_owned(),
            client_address: some("192.0.2.1"),
            method: "GET".into(),
            path: text.to_owned(),
            query: some(text),
            rpc_service: some("notes.v1.Notes"),
            rpc_method: some(text),
            token_id: some("tok_aaaaaaaaaaaaaaaa"),
            subject: some(text),
            decision: if full {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reason: some("rate_limited"),
            status: 429,
            grpc_status: full.then_some(8),
            latency: Duration::from_micros(1234),
            ending: Ending::Completed,
            user_agent: some(text),
            truncated: if full {
                vec!["url.path", "user_agent.original"]
            } else {
                Vec::new()
            },
        }
    }

    /// `serde_json`'s text with the characters it leaves raw, and the
    /// writer escapes, escaped as `\uXXXX`.
    fn oracle(json: &str) -> String {
        json.chars()
            .map(|c| {
                if needs_unicode_escape(c) {
                    format!("\\u{:04x}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn every_line_breaking_bidi_and_zero_width_character_is_escaped() {
        let text = "a\u{2028}b\u{2029}c\u{202a}\u{202e}\u{2066}\u{2069}\u{200b}\u{200f}\u{feff}d";
        let mut out = String::new();
        push_json_string(&mut out, text);
        assert_eq!(
            out,
            "\"a\\u2028b\\u2029c\\u202a\\u202e\\u2066\\u2069\\u200b\\u200f\\ufeffd\""
        );
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
    }

    #[test]
    fn the_direct_writer_matches_the_json_map_byte_for_byte() {
        for full in [false, true] {
            let e = event("/notes \"q\" \\ \u{1} \u{7f} é \t\r\n", full);
            let mut line = String::new();
            e.write_json(&mut line, None);
            assert_eq!(line, oracle(&Value::Object(e.to_json()).to_string()));
            assert_eq!(e.to_string(), line);
            let mut chained = String::new();
            e.write_json(&mut chained, Some("abc"));
            let mut map = e.to_json();
            map.insert("chain.prev".into(), "abc".into());
            assert_eq!(chained, oracle(&Value::Object(map).to_string()));
        }
    }

    proptest! {
        #[test]
        fn any_text_is_written_as_serde_json_writes_it(text in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let e = event(&text, true);
            let mut line = String::new();
            e.write_json(&mut line, None);
            prop_assert_eq!(line, oracle(&Value::Object(e.to_json()).to_string()));
        }

        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them_at_any_offset(text in "([a-z0-9 /é€]{0,12}[\"\\\\\x00-\x1f\x7f]?){0,24}") {
            // Escapes land at every position of the eight-byte words the
            // fast path skips, after multi-byte characters too.
            let mut out = String::new();
            push_json_string(&mut out, &text);
            prop_assert_eq!(out, oracle(&serde_json::to_string(&text).unwrap()));
        }

        #[test]
        fn invisible_and_line_breaking_characters_are_escaped_and_read_back_equal(
            text in "([a-z é€\"]{0,9}[\u{200b}-\u{200f}\u{2028}-\u{202e}\u{2066}-\u{2069}\u{feff}\u{2010}\u{2070}\u{fefe}]?){0,24}"
        ) {
            let mut out = String::new();
            push_json_string(&mut out, &text);
            prop_assert!(!out.chars().any(needs_unicode_escape), "{}", out);
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text.clone());
            prop_assert_eq!(out, oracle(&serde_json::to_string(&text).unwrap()));
        }

        #[test]
        fn the_fast_path_cleans_as_the_careful_one(text in "[a-z/\x00-\x1f\x7f\u{80}-\u{bf}é€]{0,40}", max in 0usize..48) {
            let (mut fast_cut, mut each_cut) = (Vec::new(), Vec::new());
            let mut each = String::new();
            clean_each(&mut each, &text, max, "f", &mut each_cut);
            prop_assert_eq!(clean(&text, max, "f", &mut fast_cut), each);
            prop_assert_eq!(fast_cut, each_cut);
        }

        #[test]
        fn cleaned_text_has_no_control_characters_and_respects_the_bound(text in "\\PC*|[\\x00-\\x1f\\x7f]{0,20}", max in 0usize..64) {
            let mut t = Vec::new();
            let out = clean(&text, max, "f", &mut t);
            prop_assert!(out.len() <= max);
            prop_assert!(!out.chars().any(char::is_control));
        }
    }
}
