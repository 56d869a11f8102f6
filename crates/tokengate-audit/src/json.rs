//! The one JSON encoder: an [`AuditEvent`] as one line.
//!
//! Written by hand rather than through `serde_json` for what `serde_json`
//! leaves raw: it escapes line separators, bidi controls and zero-width
//! characters too ([`needs_unicode_escape`]), so no line can be split or
//! made to read differently from what it holds. Its output is valid JSON,
//! and the tests read it back with `serde_json`.

use std::fmt;

use crate::record::{AuditEvent, Decision};

impl AuditEvent {
    /// Appends the record to `out` as one JSON object, its members in
    /// sorted key order (`chain.prev` first, when given). Written directly, with no intermediate map
    /// and no allocation beyond `out` (the JSON-lines writer reuses one
    /// buffer for every line).
    pub(crate) fn write_json(&self, out: &mut String, chain_prev: Option<&str>) {
        let mut json = JsonObject::new(out);
        if let Some(prev) = chain_prev {
            json.string("chain.prev", prev);
        }
        if let Some(leak) = &self.leak {
            return self.write_leak(json, leak);
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
        json.timestamp("timestamp", self.timestamp);
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
        json.opt_string("tokengate.rate_fallback", self.rate_fallback);
        json.opt_string("tokengate.reason", self.reason.as_deref());
        json.opt_string("tokengate.token_id", self.token_id.as_deref());
        self.write_truncated(&mut json);
        json.string("url.path", &self.path);
        json.opt_string("url.query", self.query.as_deref());
        json.opt_string("user_agent.original", self.user_agent.as_deref());
        json.close();
    }
}

impl AuditEvent {
    /// A leak report's members, in sorted key order after `chain.prev`.
    fn write_leak(&self, mut json: JsonObject<'_>, leak: &crate::LeakFacts) {
        json.opt_string("client.address", self.client_address.as_deref());
        json.opt_string("enduser.id", self.subject.as_deref());
        if !self.request_id.is_empty() {
            json.string("http.request.id", &self.request_id);
        }
        json.timestamp("timestamp", self.timestamp);
        json.string("tokengate.event", crate::LEAK_REPORTED);
        json.string("tokengate.leak.outcome", leak.outcome);
        json.string("tokengate.leak.reporter", leak.reporter);
        json.opt_string("tokengate.leak.source", leak.source.as_deref());
        json.opt_string("tokengate.token_id", self.token_id.as_deref());
        self.write_truncated(&mut json);
        json.close();
    }

    fn write_truncated(&self, json: &mut JsonObject<'_>) {
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

    /// An RFC 3339 time with milliseconds.
    fn timestamp(&mut self, key: &'static str, at: std::time::SystemTime) {
        self.key(key);
        self.out.push('"');
        crate::text::push_rfc3339_millis(self.out, at);
        self.out.push('"');
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

pub(crate) use tokengate_core::needs_unicode_escape;

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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::capture::Ending;

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
            rate_fallback: full.then_some("local"),
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
            leak: None,
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

    /// `e`'s line, read back by `serde_json`.
    fn read_back(e: &AuditEvent, prev: Option<&str>) -> Map<String, Value> {
        let mut line = String::new();
        e.write_json(&mut line, prev);
        serde_json::from_str(&line).unwrap()
    }

    fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        map.get(key).map(|v| v.as_str().unwrap())
    }

    #[test]
    fn a_line_reads_back_as_the_event() {
        for full in [false, true] {
            let e = event("/notes \"q\" \\ \u{1} \u{7f} é \t\r\n", full);
            let mut line = String::new();
            e.write_json(&mut line, None);
            assert_eq!(e.to_string(), line);
            assert!(!line.contains('\n'), "one line");
            let map = read_back(&e, None);
            assert_eq!(field(&map, "url.path"), Some(e.path.as_str()));
            assert_eq!(field(&map, "url.query"), e.query.as_deref());
            assert_eq!(field(&map, "user_agent.original"), e.user_agent.as_deref());
            assert_eq!(field(&map, "http.request.id"), Some(e.request_id.as_str()));
            assert_eq!(field(&map, "enduser.id"), e.subject.as_deref());
            assert_eq!(field(&map, "rpc.method"), e.rpc_method.as_deref());
            assert_eq!(field(&map, "rpc.system"), full.then_some("grpc"));
            assert_eq!(field(&map, "timestamp"), Some("2023-11-14T22:13:20.123Z"));
            assert_eq!(
                field(&map, "tokengate.decision"),
                Some(if full { "deny" } else { "allow" })
            );
            assert_eq!(field(&map, "tokengate.ending"), Some("completed"));
            assert_eq!(map["http.response.status_code"], 429);
            assert_eq!(map["tokengate.latency_us"], 1234);
            let grpc = map.get("rpc.grpc.status_code").and_then(Value::as_u64);
            assert_eq!(grpc, full.then_some(8));
            let truncated = map
                .get("tokengate.truncated")
                .map(|v| v.as_array().unwrap().len());
            assert_eq!(truncated, full.then_some(2));
            assert_eq!(
                field(&map, "tokengate.rate_fallback"),
                full.then_some("local")
            );
            assert_eq!(map.len(), if full { 20 } else { 8 }, "{map:?}");
            let chained = read_back(&e, Some("abc"));
            assert_eq!(field(&chained, "chain.prev"), Some("abc"));
            assert_eq!(chained.len(), map.len() + 1);
        }
    }

    proptest! {
        #[test]
        fn any_text_reads_back_equal(text in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let e = event(&text, true);
            let mut line = String::new();
            e.write_json(&mut line, None);
            prop_assert!(!line.chars().any(needs_unicode_escape));
            let map = read_back(&e, None);
            for key in ["url.path", "url.query", "user_agent.original", "enduser.id", "rpc.method"] {
                prop_assert_eq!(field(&map, key), Some(text.as_str()));
            }
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

    }
}
