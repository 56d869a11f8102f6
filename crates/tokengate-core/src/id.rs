//! Public token ids: safe to log, show and revoke by.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::distr::{Alphanumeric, Distribution};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;

use crate::echo::Echo;

/// The public id of a token record, e.g. `tok_4QzX9mW2kLp8Rt7v`.
///
/// It identifies a record without being a credential: it appears in logs,
/// audit records, the CLI and the `Principal`, and revocation goes by it.
/// Random (≈ 95 bits), so ids do not reveal issue order or count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(Arc<str>);

impl TokenId {
    const PREFIX: &'static str = "tok_";
    const RANDOM_LEN: usize = 16;

    /// A fresh random id.
    pub fn generate() -> Self {
        let mut id = String::with_capacity(Self::PREFIX.len() + Self::RANDOM_LEN);
        id.push_str(Self::PREFIX);
        let mut rng = UnwrapErr(SysRng);
        id.extend(
            Alphanumeric
                .sample_iter(&mut rng)
                .take(Self::RANDOM_LEN)
                .map(char::from),
        );
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TokenId {
    type Err = TokenIdError;

    /// Parses `tok_` followed by 16 base62 characters.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = text.strip_prefix(Self::PREFIX).is_some_and(|rest| {
            rest.len() == Self::RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if valid {
            Ok(Self(text.into()))
        } else {
            Err(TokenIdError {
                input: Echo::new(text, 64),
            })
        }
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenId").field(&&*self.0).finish()
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a token id.
///
/// It names the input unless the input is token-shaped (a token pasted
/// where its id was expected): a token is a secret and is never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TokenIdError {
    input: Echo,
}

impl TokenIdError {
    /// Whether the input looked like a token (or part of one) rather than an id.
    pub fn is_token_shaped(&self) -> bool {
        self.input.is_withheld()
    }
}

impl fmt::Display for TokenIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_token_shaped() {
            f.write_str(
                "a token was given where a token id (tok_ and 16 letters or digits) was expected; \
                 tokens are secrets and are not shown",
            )
        } else {
            write!(
                f,
                "{} is not a token id (expected 'tok_' and 16 letters or digits)",
                self.input
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_differ() {
        let a = TokenId::generate();
        let b = TokenId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 20);
        assert_eq!(a.as_str().parse::<TokenId>().unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_refused_with_the_input_named() {
        for bad in [
            "",
            "tok_",
            "tok_short",
            "key_4QzX9mW2kLp8Rt7v",
            "tok_4QzX9mW2kLp8Rt7-",
        ] {
            let err = bad.parse::<TokenId>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            assert!(!err.is_token_shaped());
        }
    }

    #[test]
    fn a_token_given_as_an_id_is_never_echoed() {
        let token = crate::TokenFormat::default().generate();
        let secret = token.expose_secret();
        for input in [
            secret.to_owned(),
            format!(" {secret} "),
            secret[..30].to_owned(),
        ] {
            let err = input.parse::<TokenId>().unwrap_err();
            assert!(err.is_token_shaped());
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(&secret[3..27]), "{shown}");
            assert!(shown.contains("a token was given"), "{shown}");
        }
    }
}
