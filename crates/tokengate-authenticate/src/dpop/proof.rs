//! Reading and verifying one DPoP proof (RFC 9449 §4.2, §4.3): a compact
//! JWS whose header carries the public key that signed it.
//!
//! Everything here runs on bytes a request sent, so it is bounded first
//! and parsed second: the proof's length, each part's, the key's
//! coordinates; JSON is read into flat structures (`serde_json` refuses
//! duplicate members and nests no deeper than 128), and no step can panic.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokengate_core::Thumbprint;

/// The longest proof read, in bytes: an EC or Ed25519 proof is about
/// 600; anything near this bound is not one.
pub const MAX_PROOF_LEN: usize = 4096;

/// The longest `jti` accepted, in bytes.
const MAX_JTI_LEN: usize = 256;

/// A signature algorithm a proof may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopAlgorithm {
    /// ECDSA over P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl DpopAlgorithm {
    /// The JOSE name: `ES256`, `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl std::str::FromStr for DpopAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s).ok_or_else(|| {
            format!("DPoP algorithm {s:?} is not supported: expected ES256 or EdDSA")
        })
    }
}

/// Why a proof was refused: the audit reason of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProofError {
    /// Not a compact JWS of a DPoP proof: too long, not three parts, not
    /// base64url JSON, a claim missing or of the wrong type, `typ` not
    /// `dpop+jwt`, a private or malformed key.
    Malformed,
    /// `alg` outside the allowlist (or not matching the key's type).
    Algorithm,
    /// The signature does not verify with the header's key.
    Signature,
    /// `htm` is not the request's method.
    Method,
    /// `htu` is not the request's URL.
    Url,
    /// `iat` outside the window.
    IssuedAt,
    /// `ath` is not the token's hash.
    TokenHash,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    typ: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    jwk: Jwk<'a>,
}

/// The public key of the header. Private members (`d`, and RSA's
/// `p`, `q`, ...) make the proof malformed: a client that sends its
/// private key has lost it.
#[derive(Deserialize)]
struct Jwk<'a> {
    #[serde(borrow)]
    kty: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    crv: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    x: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    y: Option<std::borrow::Cow<'a, str>>,
    d: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(borrow)]
    jti: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    htm: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    htu: std::borrow::Cow<'a, str>,
    iat: serde_json::Number,
    #[serde(borrow)]
    ath: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    nonce: Option<std::borrow::Cow<'a, str>>,
}

/// A public key read from a proof's header.
enum PublicKey {
    /// The uncompressed SEC1 point, checked on the curve.
    P256(Box<[u8; 65]>),
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
}

/// A proof whose signature verified: what the request's checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proof {
    /// The key's RFC 7638 thumbprint.
    pub(crate) jkt: Thumbprint,
    pub(crate) jti: String,
    pub(crate) htm: String,
    pub(crate) htu: String,
    /// Seconds since the epoch (fractions dropped).
    pub(crate) iat: i64,
    /// The token's hash as sent, decoded.
    pub(crate) ath: Option<Vec<u8>>,
    pub(crate) nonce: Option<String>,
}

fn b64(text: &str) -> Result<Vec<u8>, ProofError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ProofError::Malformed)
}

fn coordinate(text: Option<&str>) -> Result<[u8; 32], ProofError> {
    let text = text.ok_or(ProofError::Malformed)?;
    if text.len() != 43 {
        return Err(ProofError::Malformed);
    }
    b64(text)?.try_into().map_err(|_| ProofError::Malformed)
}

/// Reads the key of `jwk` and its RFC 7638 thumbprint (the members the
/// RFC names for its type, in lexicographic order, no whitespace).
fn read_key(jwk: &Jwk<'_>, alg: DpopAlgorithm) -> Result<(PublicKey, Thumbprint), ProofError> {
    if jwk.d.is_some() {
        return Err(ProofError::Malformed);
    }
    let crv = jwk.crv.as_deref();
    match (alg, &*jwk.kty, crv) {
        (DpopAlgorithm::Es256, "EC", Some("P-256")) => {
            let (x, y) = (coordinate(jwk.x.as_deref())?, coordinate(jwk.y.as_deref())?);
            let mut sec1 = [0u8; 65];
            sec1[0] = 4;
            sec1[1..33].copy_from_slice(&x);
            sec1[33..].copy_from_slice(&y);
            // On the curve, or malformed (not merely a bad signature).
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| ProofError::Malformed)?;
            let canonical = format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(x),
                URL_SAFE_NO_PAD.encode(y)
            );
            Ok((PublicKey::P256(Box::new(sec1)), thumbprint(&canonical)))
        }
        (DpopAlgorithm::EdDsa, "OKP", Some("Ed25519")) => {
            if jwk.y.is_some() {
                return Err(ProofError::Malformed);
            }
            let x = coordinate(jwk.x.as_deref())?;
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| ProofError::Malformed)?;
            let canonical = format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(x)
            );
            Ok((PublicKey::Ed25519(Box::new(key)), thumbprint(&canonical)))
        }
        _ => Err(ProofError::Algorithm),
    }
}

fn thumbprint(canonical: &str) -> Thumbprint {
    Thumbprint::new(Sha256::digest(canonical.as_bytes()).into())
}

/// The RFC 7638 thumbprint of a public JWK given as JSON text (an EC
/// P-256 or Ed25519 key): what `tokengate issue --dpop-jkt` takes.
///
/// # Errors
///
/// When the text is not such a key, or holds a private member.
pub fn jwk_thumbprint(jwk: &str) -> Result<Thumbprint, String> {
    let key: Jwk<'_> = serde_json::from_str(jwk).map_err(|e| format!("not a JSON Web Key: {e}"))?;
    let alg = match &*key.kty {
        "EC" => DpopAlgorithm::Es256,
        "OKP" => DpopAlgorithm::EdDsa,
        other => {
            return Err(format!(
                "key type {other:?} is not EC (P-256) or OKP (Ed25519)"
            ));
        }
    };
    read_key(&key, alg)
        .map(|(_, jkt)| jkt)
        .map_err(|_| "not a public P-256 or Ed25519 key (or it holds a private member)".to_owned())
}

/// Reads `text` as a DPoP proof, verifies its signature with the key of
/// its header, and returns its claims. `allowed` is the algorithm
/// allowlist. The request-specific checks (method, URL, time, token hash,
/// nonce, replay) are the caller's.
pub(crate) fn verify(text: &str, allowed: &[DpopAlgorithm]) -> Result<Proof, ProofError> {
    if text.len() > MAX_PROOF_LEN {
        return Err(ProofError::Malformed);
    }
    let mut parts = text.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let header_json = b64(header_b64)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_json).map_err(|_| ProofError::Malformed)?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(ProofError::Malformed);
    }
    let alg = DpopAlgorithm::from_name(&header.alg)
        .filter(|alg| allowed.contains(alg))
        .ok_or(ProofError::Algorithm)?;
    let (key, jkt) = read_key(&header.jwk, alg)?;
    let signature = b64(signature_b64)?;
    let signed = &text.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    let verified = match &key {
        PublicKey::P256(point) => ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &point[..],
        )
        .verify(signed, &signature)
        .is_ok(),
        PublicKey::Ed25519(key) => <[u8; 64]>::try_from(signature.as_slice()).is_ok_and(|bytes| {
            key.verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&bytes))
                .is_ok()
        }),
    };
    if !verified {
        return Err(ProofError::Signature);
    }
    let claims_json = b64(claims_b64)?;
    let claims: Claims<'_> =
        serde_json::from_slice(&claims_json).map_err(|_| ProofError::Malformed)?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
        return Err(ProofError::Malformed);
    }
    let iat = claims
        .iat
        .as_i64()
        .or_else(|| {
            claims
                .iat
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                // Bounded above: the cast cannot truncate.
                .map(|f| {
                    #[allow(clippy::cast_possible_truncation, reason = "bounded above")]
                    let whole = f.trunc() as i64;
                    whole
                })
        })
        .ok_or(ProofError::Malformed)?;
    let ath = claims.ath.as_deref().map(b64).transpose()?;
    Ok(Proof {
        jkt,
        jti: claims.jti.into_owned(),
        htm: claims.htm.into_owned(),
        htu: claims.htu.into_owned(),
        iat,
        ath,
        nonce: claims.nonce.map(std::borrow::Cow::into_owned),
    })
}
