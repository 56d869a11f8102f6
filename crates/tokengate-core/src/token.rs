//! The bearer token a client holds: its format, generation and parsing.
//!
//! A token reads `<prefix>_<secret><checksum>`:
//!
//! - `prefix` names the issuer (`tg` by default, e.g. `acme_live`): lowercase
//!   ASCII letters, digits and `_`, starting with a letter, at most
//!   [`TokenPrefix::MAX_LEN`] bytes. It lets secret scanners recognise leaked
//!   tokens.
//! - `secret` is [`SECRET_LEN`] base62 characters drawn uniformly from the
//!   operating system's CSPRNG: 32 × log2(62) ≈ 190.5 bits.
//! - `checksum` is the CRC32 of everything before it, in [`CHECKSUM_LEN`]
//!   base62 characters, so a typo or a random string is refused without any
//!   store work.
//!
//! ```
//! use tokengate_core::{Token, TokenFormat, TokenPrefix};
//!
//! let format = TokenFormat::new(TokenPrefix::new("acme_live")?);
//! let token = format.generate();
//! assert!(token.expose_secret().starts_with("acme_live_"));
//! // Display and Debug never show the secret.
//! assert!(!format!("{token} {token:?}").contains(&token.expose_secret()[10..40]));
//! // Parsing checks prefix, length, alphabet and checksum.
//! let parsed = format.parse(token.expose_secret())?;
//! assert_eq!(parsed.expose_secret(), token.expose_secret());
//! assert!(format.parse("acme_live_not-a-token").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use rand::distr::{Alphanumeric, Distribution};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Number of base62 characters in a token's secret part (≈ 190.5 bits).
pub const SECRET_LEN: usize = 32;
/// Number of base62 characters in a token's checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;

/// The characters of a checksum, in digit order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A validated token prefix such as `tg` or `acme_live`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenPrefix(Box<str>);

impl TokenPrefix {
    /// The longest prefix accepted, in bytes.
    pub const MAX_LEN: usize = 24;
    /// The prefix used when none is configured.
    pub const DEFAULT: &'static str = "tg";

    /// Validates a prefix: 1 to [`Self::MAX_LEN`] bytes of lowercase ASCII
    /// letters, digits and `_`, starting with a letter and not ending with `_`.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if prefix.is_empty() || prefix.len() > Self::MAX_LEN {
            return Err(PrefixError::Length {
                prefix: prefix.chars().take(Self::MAX_LEN + 8).collect(),
            });
        }
        let valid_chars = prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let starts_with_letter = prefix.as_bytes()[0].is_ascii_lowercase();
        if !valid_chars || !starts_with_letter || prefix.ends_with('_') {
            return Err(PrefixError::Characters {
                prefix: prefix.to_owned(),
            });
        }
        Ok(Self(prefix.into()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TokenPrefix {
    fn default() -> Self {
        Self(Self::DEFAULT.into())
    }
}

impl fmt::Debug for TokenPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenPrefix").field(&self.as_str()).finish()
    }
}

impl fmt::Display for TokenPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a configured token prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Empty or longer than [`TokenPrefix::MAX_LEN`].
    #[error(
        "token prefix {prefix:?} must be 1 to {} bytes long",
        TokenPrefix::MAX_LEN
    )]
    Length {
        /// The refused prefix (cut if very long).
        prefix: String,
    },
    /// Characters outside `[a-z0-9_]`, or not starting with a letter, or ending with `_`.
    #[error(
        "token prefix {prefix:?} must be lowercase ASCII letters, digits and '_', start with a letter and not end with '_'"
    )]
    Characters {
        /// The refused prefix.
        prefix: String,
    },
}

/// A bearer token: the secret a client presents.
///
/// `Debug` and `Display` show only the prefix and the last four characters
/// (which belong to the checksum); the memory is zeroed on drop; there is no
/// `Serialize`. Use [`Token::expose_secret`] to hand the token to its owner
/// exactly once.
#[derive(Clone)]
pub struct Token {
    value: String,
    prefix_len: usize,
}

impl Token {
    /// The full token text. Show it to its owner once; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.value
    }

    /// The prefix part, e.g. `tg`.
    pub fn prefix(&self) -> &str {
        &self.value[..self.prefix_len]
    }

    /// A redacted form safe for logs and screens: `tg_…WxYz`.
    pub fn redacted(&self) -> String {
        let tail = &self.value[self.value.len() - 4..];
        format!("{}_…{}", self.prefix(), tail)
    }
}

/// Constant-time comparison: equal tokens take as long to compare as tokens
/// that differ in their last byte.
impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.value.as_bytes().ct_eq(other.value.as_bytes()).into()
    }
}

impl Eq for Token {}

impl Drop for Token {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&self.redacted()).finish()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why a presented string is not a well-formed token.
///
/// Messages never echo the input, which may be a real secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFormatError {
    /// No `_` separates a prefix from the secret.
    #[error("token has no prefix separator")]
    MissingSeparator,
    /// The prefix is not the one this deployment issues.
    #[error("token prefix does not match")]
    WrongPrefix,
    /// The part after the prefix is not secret plus checksum long.
    #[error("token has the wrong length")]
    WrongLength,
    /// A character outside base62 after the prefix.
    #[error("token contains a character outside base62")]
    InvalidCharacter,
    /// The checksum does not match the rest of the token.
    #[error("token checksum does not match")]
    BadChecksum,
}

/// Generates and parses tokens of one prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFormat {
    prefix: TokenPrefix,
}

impl TokenFormat {
    /// The format for tokens with `prefix`.
    pub fn new(prefix: TokenPrefix) -> Self {
        Self { prefix }
    }

    /// The prefix this format issues and accepts.
    pub fn prefix(&self) -> &TokenPrefix {
        &self.prefix
    }

    /// The regular expression of this format's tokens, as a secret-scanning
    /// provider registers it: `\b` + the prefix + `_[A-Za-z0-9]{38}\b`
    /// (32 secret and 6 checksum characters). A match is a token only if
    /// its checksum holds ([`TokenFormat::validate`]).
    ///
    /// ```
    /// use tokengate_core::{TokenFormat, TokenPrefix};
    ///
    /// let format = TokenFormat::new(TokenPrefix::new("acme_live")?);
    /// assert_eq!(format.pattern(), r"\bacme_live_[A-Za-z0-9]{38}\b");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pattern(&self) -> String {
        format!(
            r"\b{}_[A-Za-z0-9]{{{}}}\b",
            self.prefix.as_str(),
            SECRET_LEN + CHECKSUM_LEN
        )
    }

    /// The regular expression of tokens of any valid prefix.
    pub const ANY_PATTERN: &'static str = r"\b[a-z][a-z0-9_]{0,23}_[A-Za-z0-9]{38}\b";

    /// The exact length in bytes of every token of this format.
    pub fn token_len(&self) -> usize {
        self.prefix.0.len() + 1 + SECRET_LEN + CHECKSUM_LEN
    }

    /// Generates a fresh token from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Only if the operating system cannot supply randomness, in which case
    /// no token can be issued safely at all.
    #[allow(clippy::expect_used)]
    pub fn generate(&self) -> Token {
        let mut value = String::with_capacity(self.token_len());
        value.push_str(self.prefix.as_str());
        value.push('_');
        let mut rng = UnwrapErr(SysRng);
        value.extend(
            Alphanumeric
                .sample_iter(&mut rng)
                .take(SECRET_LEN)
                .map(char::from),
        );
        push_checksum(&mut value);
        Token {
            value,
            prefix_len: self.prefix.0.len(),
        }
    }

    /// Parses `input` as a token of this format: prefix, length, alphabet and
    /// checksum, in that order. Does no store work and allocates only on success.
    pub fn parse(&self, input: &str) -> Result<Token, TokenFormatError> {
        self.validate(input)?;
        Ok(Token {
            value: input.to_owned(),
            prefix_len: self.prefix.as_str().len(),
        })
    }

    /// Validates `input` like [`TokenFormat::parse`] without copying it: for
    /// the request path, which hashes the borrowed text with
    /// [`TokenHasher::hash_str`](crate::TokenHasher::hash_str) and never
    /// needs an owned token.
    pub fn validate(&self, input: &str) -> Result<(), TokenFormatError> {
        let prefix = self.prefix.as_str();
        let Some(body) = input.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
            return Err(if input.contains('_') {
                TokenFormatError::WrongPrefix
            } else {
                TokenFormatError::MissingSeparator
            });
        };
        check_body(input, body)
    }

    /// Parses a token of any valid prefix (for tools such as secret scanners
    /// and `tokengate inspect`, not for request paths).
    pub fn parse_any_prefix(input: &str) -> Result<Token, TokenFormatError> {
        let (prefix, body) = input
            .rsplit_once('_')
            .ok_or(TokenFormatError::MissingSeparator)?;
        TokenPrefix::new(prefix).map_err(|_| TokenFormatError::WrongPrefix)?;
        check_body(input, body)?;
        Ok(Token {
            value: input.to_owned(),
            prefix_len: prefix.len(),
        })
    }
}

/// Every token of any prefix in `text` whose checksum holds, with its
/// byte offset, in order: what `tokengate scan` reports. A token is a
/// whole word of [`TokenFormat::ANY_PATTERN`] (`\b` on both sides, so
/// `xtg_…` and `tg_…x` are not one); where the word before the secret has
/// `_`s (`API_KEY_tg_…`), the longest prefix whose checksum holds wins.
/// Random text matches with odds of one in 2^32 per candidate word.
///
/// ```
/// use tokengate_core::{TokenFormat, find_tokens};
///
/// let token = TokenFormat::default().generate();
/// let text = format!("export KEY={}\nnot_a_token_0123456789012345678901234567890123456", token.expose_secret());
/// let found: Vec<_> = find_tokens(&text).collect();
/// assert_eq!(found.len(), 1);
/// assert_eq!(found[0].0, 11);
/// assert_eq!(found[0].1, token);
/// ```
pub fn find_tokens(text: &str) -> impl Iterator<Item = (usize, Token)> + '_ {
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() {
            let start = at + bytes[at..].iter().position(|&b| is_word(b))?;
            let end = start
                + bytes[start..]
                    .iter()
                    .position(|&b| !is_word(b))
                    .unwrap_or(bytes.len() - start);
            at = end;
            if let Some(found) = token_in_word(text, start, end) {
                return Some(found);
            }
        }
        None
    })
}

/// The token that the word `text[start..end]` ends with, if any.
fn token_in_word(text: &str, start: usize, end: usize) -> Option<(usize, Token)> {
    const TAIL: usize = SECRET_LEN + CHECKSUM_LEN;
    let word = &text[start..end];
    if word.len() < TAIL + 2 || word.len() > TokenPrefix::MAX_LEN + 1 + TAIL + 64 {
        return None;
    }
    let (head, body) = word.split_at(word.len() - TAIL);
    let head = head.strip_suffix('_')?;
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    // The prefix: the whole head, or its part after one of its `_`s.
    let starts = std::iter::once(0).chain(head.match_indices('_').map(|(i, _)| i + 1));
    for from in starts {
        let prefix = &head[from..];
        if TokenPrefix::new(prefix).is_err() {
            continue;
        }
        let candidate = &word[from..];
        if check_body(candidate, body).is_ok() {
            return Some((
                start + from,
                Token {
                    value: candidate.to_owned(),
                    prefix_len: prefix.len(),
                },
            ));
        }
    }
    None
}

/// Checks the secret-and-checksum part of `full`.
fn check_body(full: &str, body: &str) -> Result<(), TokenFormatError> {
    if body.len() != SECRET_LEN + CHECKSUM_LEN {
        return Err(TokenFormatError::WrongLength);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TokenFormatError::InvalidCharacter);
    }
    let (signed, checksum) = full.split_at(full.len() - CHECKSUM_LEN);
    if encode_checksum(crc32fast::hash(signed.as_bytes())) != checksum.as_bytes() {
        return Err(TokenFormatError::BadChecksum);
    }
    Ok(())
}

fn push_checksum(value: &mut String) {
    let checksum = encode_checksum(crc32fast::hash(value.as_bytes()));
    value.extend(checksum.iter().map(|&b| char::from(b)));
}

/// Encodes a CRC32 as exactly six base62 digits, most significant first.
fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn format() -> TokenFormat {
        TokenFormat::default()
    }

    #[test]
    fn generated_token_has_documented_shape() {
        let token = format().generate();
        let text = token.expose_secret();
        assert_eq!(text.len(), 2 + 1 + 32 + 6);
        assert!(text.starts_with("tg_"));
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(token.prefix(), "tg");
    }

    #[test]
    fn secret_carries_at_least_190_bits() {
        let bits = SECRET_LEN as f64 * 62f64.log2();
        assert!(bits >= 190.0, "{bits}");
    }

    #[test]
    fn checksum_encoding_covers_full_u32_range() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(62), b"000010");
        // 2^32 - 1 = 4_294_967_295 fits in six base62 digits.
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn prefix_validation_names_the_bad_value() {
        for bad in [
            "",
            "Acme",
            "acme-live",
            "9acme",
            "acme_",
            "a b",
            "ä",
            &"a".repeat(25),
        ] {
            let err = TokenPrefix::new(bad).expect_err(bad);
            let shown = bad.chars().take(8).collect::<String>();
            assert!(err.to_string().contains(&shown), "{err}");
        }
        for good in ["tg", "acme_live", "a1", &"a".repeat(24)] {
            assert_eq!(TokenPrefix::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn parse_rejects_each_kind_of_bad_input() {
        let f = format();
        let good = f.generate();
        let text = good.expose_secret();
        assert_eq!(f.parse(""), Err(TokenFormatError::MissingSeparator));
        assert_eq!(f.parse("garbage"), Err(TokenFormatError::MissingSeparator));
        assert_eq!(
            f.parse(&text.replacen("tg_", "xx_", 1)),
            Err(TokenFormatError::WrongPrefix)
        );
        assert_eq!(
            f.parse(&text[..text.len() - 1]),
            Err(TokenFormatError::WrongLength)
        );
        assert_eq!(
            f.parse(&format!("{text}A")),
            Err(TokenFormatError::WrongLength)
        );
        let mut bad_char = text.to_owned();
        bad_char.replace_range(10..11, "-");
        assert_eq!(f.parse(&bad_char), Err(TokenFormatError::InvalidCharacter));
        let mut non_ascii = text[..text.len() - 2].to_owned();
        non_ascii.push('é');
        assert_eq!(f.parse(&non_ascii), Err(TokenFormatError::InvalidCharacter));
        let flipped = flip_char(text, 5);
        assert_eq!(f.parse(&flipped), Err(TokenFormatError::BadChecksum));
    }

    #[test]
    fn parse_any_prefix_accepts_custom_prefixes() {
        let f = TokenFormat::new(TokenPrefix::new("acme_live").unwrap());
        let token = f.generate();
        let parsed = TokenFormat::parse_any_prefix(token.expose_secret()).unwrap();
        assert_eq!(parsed.prefix(), "acme_live");
        assert_eq!(
            format().parse(token.expose_secret()),
            Err(TokenFormatError::WrongPrefix)
        );
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let token = format().generate();
        let secret = &token.expose_secret()[3..3 + SECRET_LEN];
        for shown in [
            format!("{token}"),
            format!("{token:?}"),
            format!("{token:#?}"),
        ] {
            for window in secret.as_bytes().windows(5) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(!shown.contains(window), "{shown} leaks {window}");
            }
        }
        assert!(format!("{token}").starts_with("tg_…"));
    }

    #[test]
    fn a_million_generated_tokens_are_distinct() {
        let f = format();
        let mut seen = HashSet::with_capacity(1_000_000);
        for _ in 0..1_000_000 {
            let token = f.generate();
            let secret: [u8; SECRET_LEN] = token.expose_secret().as_bytes()[3..3 + SECRET_LEN]
                .try_into()
                .unwrap();
            assert!(seen.insert(secret), "duplicate token generated");
        }
        assert_eq!(seen.len(), 1_000_000);
    }

    /// Replaces the base62 character at `index` by the next one in the alphabet.
    fn flip_char(text: &str, index: usize) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let pos = BASE62.iter().position(|&b| b == bytes[index]).unwrap();
        bytes[index] = BASE62[(pos + 1) % 62];
        String::from_utf8(bytes).unwrap()
    }

    proptest! {
        #[test]
        fn generate_then_parse_round_trips(prefix in "[a-z][a-z0-9_]{0,22}[a-z0-9]") {
            let f = TokenFormat::new(TokenPrefix::new(&prefix).unwrap());
            let token = f.generate();
            let parsed = f.parse(token.expose_secret()).unwrap();
            prop_assert_eq!(parsed.expose_secret(), token.expose_secret());
            prop_assert_eq!(parsed.prefix(), prefix.as_str());
        }

        #[test]
        fn every_single_substitution_fails(index in 3usize..41, shift in 1usize..62) {
            let f = format();
            let token = f.generate();
            let mut bytes = token.expose_secret().as_bytes().to_vec();
            let pos = BASE62.iter().position(|&b| b == bytes[index]).unwrap();
            bytes[index] = BASE62[(pos + shift) % 62];
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(f.parse(&mutated), Err(TokenFormatError::BadChecksum));
        }

        #[test]
        fn every_adjacent_transposition_fails(index in 3usize..40) {
            let f = format();
            let token = f.generate();
            let mut bytes = token.expose_secret().as_bytes().to_vec();
            prop_assume!(bytes[index] != bytes[index + 1]);
            bytes.swap(index, index + 1);
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(f.parse(&mutated), Err(TokenFormatError::BadChecksum));
        }

        #[test]
        fn arbitrary_input_is_refused_without_panicking(input in "\\PC{0,80}") {
            prop_assert!(format().parse(&input).is_err());
            prop_assert!(TokenFormat::parse_any_prefix(&input).is_err());
        }

        #[test]
        fn a_token_is_found_wherever_it_sits_and_arbitrary_text_finds_none(
            before in "\\PC{0,40}",
            after in "\\PC{0,40}",
        ) {
            prop_assert_eq!(find_tokens(&before).count(), 0);
            let token = format().generate();
            let text = format!("{before} {} {after}", token.expose_secret());
            let found: Vec<_> = find_tokens(&text).collect();
            prop_assert_eq!(found.len(), 1);
            prop_assert_eq!(found[0].0, before.len() + 1);
            prop_assert!(found[0].1 == token);
        }
    }

    #[test]
    fn find_tokens_takes_whole_words_with_a_valid_checksum_only() {
        let tg = format().generate();
        let acme = TokenFormat::new(TokenPrefix::new("acme_live").unwrap()).generate();
        let (tg, acme) = (tg.expose_secret(), acme.expose_secret());
        let broken = flip_char(tg, 10);
        let text = format!(
            "A={tg}\nAPI_KEY_{acme},x{tg} {tg}x \"{broken}\" {tg}{tg}\n\
             random_0123456789abcdefghijABCDEFGHIJ0123456789 é{acme}é"
        );
        let found: Vec<(usize, String)> = find_tokens(&text)
            .map(|(at, token)| (at, token.expose_secret().to_owned()))
            .collect();
        let first = text.find(tg).unwrap();
        let second = text.find(acme).unwrap();
        let last = text.rfind(acme).unwrap();
        assert_eq!(
            found,
            vec![
                (first, tg.to_owned()),
                (second, acme.to_owned()),
                (last, acme.to_owned())
            ]
        );
        assert_eq!(
            found[1].1.split('_').count(),
            3,
            "the prefix is acme_live, not API_KEY_acme_live"
        );
    }
}
