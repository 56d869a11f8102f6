//! Input repeated in an error message, unless it may be a secret.
//!
//! An error that names its bad input helps the person who typed it; an
//! error that echoes a token where an id was expected prints a credential
//! into a terminal, a shell history or a log. Every error type in tokengate
//! that keeps its input keeps it as an [`Echo`], which shows short, plain
//! text as it was given and anything token-shaped not at all.

use std::fmt;

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
