//! The client's side: a key that signs DPoP proofs, for Rust clients of a
//! tokengate-protected API and for tests of one.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use tokengate_core::Thumbprint;

use super::proof::{DpopAlgorithm, jwk_thumbprint};

enum Key {
    P256(Box<p256::ecdsa::SigningKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A DPoP key pair held by a client: it makes the `DPoP` header of each
/// request (RFC 9449 §4.2). The private key never leaves it; the token is
/// bound to [`DpopSigner::jkt`].
///
/// ```
/// use tokengate_authenticate::dpop::DpopSigner;
///
/// let key = DpopSigner::generate_es256();
/// // Give `key.jkt()` to `tokengate issue --dpop-jkt`, then on each request:
/// let proof = key.proof("GET", "https://api.example.com/notes", "tg_the_token", None);
/// // Authorization: DPoP tg_the_token
/// // DPoP: <proof>
/// assert_eq!(proof.split('.').count(), 3);
/// ```
pub struct DpopSigner {
    key: Key,
    jwk: serde_json::Value,
    jkt: Thumbprint,
}

impl fmt::Debug for DpopSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopSigner")
            .field("algorithm", &self.algorithm())
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

impl DpopSigner {
    /// A new P-256 key (ES256), from the system's random source.
    pub fn generate_es256() -> Self {
        loop {
            // A random 32-byte value is a valid scalar but with odds of
            // about 2^-32: try again then.
            if let Some(signer) = Self::es256_from_bytes(&random_bytes()) {
                return signer;
            }
        }
    }

    /// A new Ed25519 key (EdDSA), from the system's random source.
    pub fn generate_ed25519() -> Self {
        Self::ed25519_from_bytes(&random_bytes())
    }

    /// The P-256 key of these secret-scalar bytes; `None` when they are
    /// not a valid scalar.
    pub fn es256_from_bytes(secret: &[u8; 32]) -> Option<Self> {
        let key = p256::ecdsa::SigningKey::from_slice(secret).ok()?;
        let point = key.verifying_key().to_sec1_point(false);
        let (x, y) = (point.x()?, point.y()?);
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        Some(Self::with(Key::P256(Box::new(key)), jwk))
    }

    /// The Ed25519 key of this seed.
    pub fn ed25519_from_bytes(seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let jwk = serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        });
        Self::with(Key::Ed25519(Box::new(key)), jwk)
    }

    fn with(key: Key, jwk: serde_json::Value) -> Self {
        let jkt = jwk_thumbprint(&jwk.to_string()).unwrap_or(Thumbprint::new([0; 32]));
        Self { key, jwk, jkt }
    }

    /// The algorithm the key signs with.
    pub fn algorithm(&self) -> DpopAlgorithm {
        match self.key {
            Key::P256(_) => DpopAlgorithm::Es256,
            Key::Ed25519(_) => DpopAlgorithm::EdDsa,
        }
    }

    /// The key's RFC 7638 thumbprint: what a token is bound to.
    pub fn jkt(&self) -> Thumbprint {
        self.jkt
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// A proof for one request: `method` and `url` as sent (query and
    /// fragment are ignored by the server), `token` the access token it
    /// goes with, `nonce` the server's latest `DPoP-Nonce` if it asked for
    /// one. Issued now, with a random `jti`.
    pub fn proof(&self, method: &str, url: &str, token: &str, nonce: Option<&str>) -> String {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(&random_bytes()[..16]),
            "htm": method,
            "htu": url,
            "iat": iat,
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        self.sign(&self.header(), &claims)
    }

    /// The header this key's proofs carry: `typ`, `alg` and `jwk`.
    pub fn header(&self) -> serde_json::Value {
        serde_json::json!({
            "typ": "dpop+jwt",
            "alg": self.algorithm().as_str(),
            "jwk": self.jwk,
        })
    }

    /// Signs `header` and `claims` as they are, as a compact JWS: for
    /// tests that need proofs the server must refuse.
    pub fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            Key::P256(key) => {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
                signature.to_bytes().to_vec()
            }
            Key::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(input.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
