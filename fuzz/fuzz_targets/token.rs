#![no_main]
//! The token format over arbitrary text: parsing never panics, `check`
//! agrees with `parse`, a parsed token prints back to itself, an error
//! that keeps its input never shows a token-shaped run of it, and every
//! token `find_tokens` finds (what `tokengate scan` reports) is one,
//! where it says, ending a word.

use libfuzzer_sys::fuzz_target;
use tokengate::TokenId;
use tokengate::core::{Echo, TokenFormat, find_tokens};

/// Whether `shown` repeats any 24-character run of letters and digits of
/// `input` (what a token's secret is made of).
fn repeats_a_secret_run(input: &str, shown: &str) -> bool {
    input
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|run| run.len() >= Echo::SECRET_RUN)
        .any(|run| shown.contains(&run[..Echo::SECRET_RUN]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let format = TokenFormat::default();
    let parsed = format.parse(text);
    assert_eq!(parsed.is_ok(), format.validate(text).is_ok());
    if let Ok(token) = &parsed {
        assert_eq!(token.expose_secret(), text);
        assert!(!format!("{token} {token:?}").contains(&text[3..]));
    }
    if let Ok(token) = TokenFormat::parse_any_prefix(text) {
        assert_eq!(token.expose_secret(), text);
    }
    for (at, token) in find_tokens(text) {
        let secret = token.expose_secret();
        assert_eq!(&text[at..at + secret.len()], secret);
        assert!(TokenFormat::parse_any_prefix(secret).is_ok());
        let after = text.as_bytes().get(at + secret.len());
        assert!(!after.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_'));
    }
    let shown = Echo::new(text, usize::MAX).to_string();
    assert!(!repeats_a_secret_run(text, &shown), "{shown}");
    if let Err(error) = text.parse::<TokenId>() {
        assert!(!repeats_a_secret_run(text, &format!("{error} {error:?}")));
    }
});
