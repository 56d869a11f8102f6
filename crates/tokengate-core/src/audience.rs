//! Audiences: which service a token is for.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::echo::Echo;

/// The name of a service a token may be used at, e.g. `notes` or
/// `api.example.com`.
///
/// 1 to 128 ASCII letters, digits, `.`, `-`, `_`, `:` or `/`; compared
/// exactly. A layer guarding audience `notes` refuses a token issued for
/// `billing` alone (segmentation).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience(Arc<str>);

impl Audience {
    /// The audience as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Audience {
    type Err = AudienceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = (1..=128).contains(&text.len())
            && text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/')
            });
        if valid {
            Ok(Self(text.into()))
        } else {
            Err(AudienceError {
                input: Echo::new(text, 140),
            })
        }
    }
}

impl fmt::Debug for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Audience({})", self.0)
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a valid audience.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input} is not an audience: expected 1 to 128 letters, digits or '.-_:/'")]
pub struct AudienceError {
    input: Echo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_parse_and_bad_ones_are_named() {
        assert_eq!(
            "api.example.com".parse::<Audience>().unwrap().as_str(),
            "api.example.com"
        );
        for bad in ["", "has space", "quote\"", &"a-".repeat(65)] {
            let err = bad.parse::<Audience>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
