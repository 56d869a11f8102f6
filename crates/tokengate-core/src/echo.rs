//! Input repeated in an error message, unless it may be a secret.
//!
//! An error that names its bad input helps the person who typed it; an
//! error that echoes a token where an id was expected prints a credential
//! into a terminal, a shell history or a log. Every error type in tokengate
//! that keeps its input keeps it as an [`Echo`], which shows short, plain
//! text as it was given and anything token-shaped not at all.

use std::fmt;
use std::fmt::Write as _;

/// The shortest run of letters and digits that is treated as possibly
/// secret: longer than any id, scope or audience segment a person types,
/// shorter than a token's secret (so a cut or mistyped token is caught too).
const SECRET_RUN: usize = 24;

/// A bad input as an error message may show it.
///
/// `Display` writes the input quoted (cut to the length given at
/// construction) when it is safe to repeat, and `a token-shaped value (not
/// shown)` when any part of it could be a token's secret: a run of
/// [`Echo::SECRET_RUN`] or more ASCII letters and digits. `Debug` shows
/// the same, never more.
///
/// ```
/// use tokengate_core::{Echo, TokenFormat};
///
/// assert_eq!(Echo::new("notes:raed", 100).to_string(), "\"notes:raed\"");
/// let token = TokenFormat::default().generate();
/// let echo = Echo::new(token.expose_secret(), 100);
/// assert!(echo.is_withheld());
/// assert!(!echo.to_string().contains(&token.expose_secret()[3..]));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Echo(Option<Box<str>>);

impl Echo {
    /// The shortest run of ASCII letters and digits that is withheld.
    pub const SECRET_RUN: usize = SECRET_RUN;

    /// `input`, cut to `max_chars` characters, or withheld if it may hold a secret.
    pub fn new(input: &str, max_chars: usize) -> Self {
        if may_hold_secret(input) {
            Self(None)
        } else {
            Self(Some(input.chars().take(max_chars).collect()))
        }
    }

    /// Whether the input was withheld as possibly secret.
    pub fn is_withheld(&self) -> bool {
        self.0.is_none()
    }

    /// The input as shown, if it was not withheld.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Whether `input` holds a run of [`Echo::SECRET_RUN`] or more ASCII
/// letters and digits: long enough to be (part of) a token's secret, so
/// that no log, record or message may show it.
pub fn may_hold_secret(input: &str) -> bool {
    let mut run = 0;
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() {
            run += 1;
            if run >= SECRET_RUN {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Characters that are printable as they are, and still break a reader or
/// a reviewer: U+2028 and U+2029 end lines in JavaScript and in
/// line-splitting tools; bidi controls (U+202A..U+202E, U+2066..U+2069)
/// and zero-width characters (U+200B..U+200F, U+FEFF) make a line display
/// differently from what it holds. The audit log escapes them, and so does
/// every text an operator reads ([`escape_for_display`]).
pub fn needs_unicode_escape(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// `text` as a terminal or a log line may show it: control characters
/// (C0 with CR, LF and ESC, DEL, C1) and the characters
/// [`needs_unicode_escape`] names become `\u{..}` escapes, so stored or
/// typed text can neither steer a terminal nor display as something else.
/// Text with none of them is returned as it is.
///
/// ```
/// use tokengate_core::escape_for_display;
///
/// assert_eq!(escape_for_display("ci-deploy"), "ci-deploy");
/// assert_eq!(escape_for_display("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
/// assert_eq!(escape_for_display("\u{1b}[2J\u{9b}"), "\\u{1b}[2J\\u{9b}");
/// ```
pub fn escape_for_display(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| c.is_control() || needs_unicode_escape(c);
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(text) => write!(f, "{text:?}"),
            None => f.write_str("a token-shaped value (not shown)"),
        }
    }
}

impl fmt::Debug for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::TokenFormat;

    #[test]
    fn short_plain_input_is_shown_quoted_and_cut() {
        assert_eq!(Echo::new("notes:raed", 100).to_string(), "\"notes:raed\"");
        assert_eq!(Echo::new("abcdef", 3).to_string(), "\"abc\"");
        assert_eq!(
            Echo::new("tok_4QzX9mW2kLp8Rt7-", 64).as_str(),
            Some("tok_4QzX9mW2kLp8Rt7-")
        );
    }

    #[test]
    fn tokens_cut_tokens_and_bearer_lines_are_withheld() {
        let token = TokenFormat::default().generate();
        let secret = token.expose_secret();
        for input in [
            secret.to_owned(),
            format!("Bearer {secret}"),
            secret[..30].to_owned(),
            format!("{secret}x"),
            secret[3..].to_owned(),
        ] {
            let echo = Echo::new(&input, 1000);
            assert!(echo.is_withheld(), "{input}");
            assert!(!format!("{echo} {echo:?}").contains(&secret[3..27]));
        }
    }

    proptest! {
        #[test]
        fn no_run_of_a_secret_survives_display(
            prefix in "[a-z]{1,8}",
            secret in "[A-Za-z0-9]{24,40}",
            around in "[ -~]{0,10}",
        ) {
            let input = format!("{around}{prefix}_{secret}{around}");
            let shown = Echo::new(&input, 1000).to_string();
            prop_assert!(!shown.contains(&secret[..SECRET_RUN]));
        }
    }
}
