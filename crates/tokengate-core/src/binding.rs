//! What a token may be bound to: a DPoP key (RFC 9449) or a client
//! certificate (RFC 8705). A bound token works only beside a proof that
//! its client holds the key: a copy of the token alone is refused.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A SHA-256 thumbprint: of a DPoP key's JWK (RFC 7638, the `jkt`) or of
/// a certificate's DER (the `x5t#S256`).
///
/// Read from base64url without padding (43 characters, as `jkt` and
/// `x5t#S256` are written) or hexadecimal (64 digits, as
/// `openssl x509 -fingerprint -sha256` prints it, colons allowed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    /// The thumbprint of these 32 bytes.
    pub const fn new(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The SHA-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// Base64url without padding: how `jkt` and `x5t#S256` are written.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.to_base64url())
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64url())
    }
}

/// A thumbprint that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "thumbprint {text:?} must be a SHA-256 digest: 43 base64url characters or 64 hex digits \
     (colons allowed)"
)]
pub struct ThumbprintError {
    text: String,
}

impl FromStr for Thumbprint {
    type Err = ThumbprintError;

    fn from_str(s: &str) -> Result<Self, ThumbprintError> {
        let error = || ThumbprintError {
            text: s.chars().take(100).collect(),
        };
        let text = s.trim();
        let hex_digits: String = text.chars().filter(|&c| c != ':').collect();
        if hex_digits.len() == 64 {
            let mut digest = [0; 32];
            return hex::decode_to_slice(&hex_digits, &mut digest)
                .map(|()| Self(digest))
                .map_err(|_| error());
        }
        if text.len() == 43 {
            let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| error())?;
            return bytes.try_into().map(Self).map_err(|_| error());
        }
        Err(error())
    }
}

/// What a token is bound to, if anything: every request with it must prove
/// possession of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// A DPoP key (RFC 9449): requests carry `Authorization: DPoP <token>`
    /// and a `DPoP` proof signed by the key whose JWK thumbprint
    /// (RFC 7638) this is, the `jkt`.
    Dpop(Thumbprint),
    /// A client certificate (RFC 8705): requests come over mutual TLS with
    /// the certificate whose DER's SHA-256 this is, the `x5t#S256`.
    Certificate(Thumbprint),
}

impl Binding {
    /// The thumbprint the proof must match.
    pub fn thumbprint(&self) -> &Thumbprint {
        match self {
            Self::Dpop(t) | Self::Certificate(t) => t,
        }
    }

    /// `dpop` or `certificate`: a label for listings and records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dpop(_) => "dpop",
            Self::Certificate(_) => "certificate",
        }
    }

    /// The form stores keep: `jkt:<base64url>` or `x5t#S256:<base64url>`,
    /// read back by [`Binding::from_stored`].
    pub fn to_stored(&self) -> String {
        match self {
            Self::Dpop(t) => format!("jkt:{t}"),
            Self::Certificate(t) => format!("x5t#S256:{t}"),
        }
    }

    /// The binding a store kept with [`Binding::to_stored`].
    pub fn from_stored(text: &str) -> Option<Self> {
        if let Some(jkt) = text.strip_prefix("jkt:") {
            return jkt.parse().ok().map(Self::Dpop);
        }
        text.strip_prefix("x5t#S256:")?
            .parse()
            .ok()
            .map(Self::Certificate)
    }
}

/// `dpop jkt=<base64url>` or `certificate sha256=<hex>`: the forms the
/// CLI's options take them in.
impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dpop(t) => write!(f, "dpop jkt={t}"),
            Self::Certificate(t) => write!(f, "certificate sha256={}", t.to_hex()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_read_from_base64url_and_hex_and_nothing_else() {
        let digest: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap());
        let t = Thumbprint::new(digest);
        assert_eq!(t.to_base64url().parse::<Thumbprint>(), Ok(t));
        assert_eq!(t.to_hex().parse::<Thumbprint>(), Ok(t));
        let colons = digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Thumbprint>(), Ok(t));
        for bad in [
            "",
            "abc",
            &t.to_hex()[1..],
            &format!("{}=", t.to_base64url()),
        ] {
            let error = bad.parse::<Thumbprint>().unwrap_err();
            assert!(error.to_string().contains("SHA-256"), "{error}");
        }
        // Non-canonical base64url (trailing bits set) is refused.
        let mut last = t.to_base64url();
        last.pop();
        last.push('B');
        assert!(last.parse::<Thumbprint>().is_err() || last == t.to_base64url());
    }

    #[test]
    fn bindings_round_trip_through_their_stored_form() {
        let t = Thumbprint::new([9; 32]);
        for binding in [Binding::Dpop(t), Binding::Certificate(t)] {
            assert_eq!(Binding::from_stored(&binding.to_stored()), Some(binding));
        }
        assert_eq!(Binding::from_stored("jkt:nope"), None);
        assert_eq!(Binding::from_stored("other:abc"), None);
        assert!(Binding::Dpop(t).to_string().starts_with("dpop jkt="));
        assert!(
            Binding::Certificate(t)
                .to_string()
                .ends_with(&"09".repeat(32))
        );
    }
}
