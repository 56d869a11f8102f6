//! What a record keeps of request-controlled text: cut to [`FieldLimits`]
//! (on the request path, before anything is copied), cleaned of control
//! characters and with query values redacted (when the record is written).

use std::borrow::Cow;
use std::fmt::Write as _;

use tokengate_core::may_hold_secret;

/// How long each request-controlled field may be, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// `url.path` (default 2,048).
    pub path: usize,
    /// `url.query` (default 2,048).
    pub query: usize,
    /// `user_agent.original` (default 256).
    pub user_agent: usize,
    /// `http.request.id` (default 128).
    pub request_id: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        Self {
            path: 2_048,
            query: 2_048,
            user_agent: 256,
            request_id: 128,
        }
    }
}

/// What a record keeps of a user agent whose cleaned form is bounded by
/// `max`: its bytes as text (invalid UTF-8 replaced), cut a character past
/// `max`. Only the bytes the cut can reach are converted, so a huge header
/// costs no more than a short one: every sequence that starts within
/// `max + 5` bytes of the start is whole in them, and reads as it does in
/// the whole header.
pub(crate) fn kept_agent(bytes: &[u8], max: usize) -> Cow<'_, str> {
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
pub(crate) fn kept_path(path: &str, grpc: bool, max: usize) -> Cow<'_, str> {
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
pub(crate) fn kept_query(query: &str, max: usize) -> Cow<'_, str> {
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

    proptest! {
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
}
