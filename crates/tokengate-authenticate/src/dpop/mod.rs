//! Proof of possession: DPoP-bound (RFC 9449) and certificate-bound
//! (RFC 8705) tokens.
//!
//! A token bound to a key ([`Binding`](tokengate_core::Binding)) is admitted only beside a proof
//! that the client holds the key: `Authorization: DPoP <token>` and one
//! `DPoP` header whose proof verifies (see [`Dpop`] for the checks), or
//! a client certificate whose SHA-256 is the bound one. A copy of the
//! token alone (from a log, a laptop, a CI variable) is refused.

mod htu;
mod nonce;
pub(crate) mod proof;
mod replay;
mod signer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderName, HeaderValue, Request};
use sha2::{Digest as _, Sha256};
use tokengate_core::{InvalidReason, RequestTrail, Thumbprint, TokenHasher};
use tokengate_store::{ReplayFuture, SharedReplay};

pub use proof::{DpopAlgorithm, MAX_PROOF_LEN, jwk_thumbprint};
pub use signer::DpopSigner;

use htu::Target;
use nonce::Nonces;
use proof::ProofError;
use replay::{MemoryReplay, Seen};

/// The `DPoP` request header: the proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// The `DPoP-Nonce` response header: the nonce the next proofs carry.
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The RFC 9440 `Client-Cert` header a TLS-terminating proxy sends.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The DPoP key whose proof this request carried (its RFC 7638
/// thumbprint), in the request's extensions once the proof verified: for
/// handlers that want to know which key called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopKey(pub Thumbprint);

/// The client certificate of the request's TLS connection, for servers
/// that terminate TLS themselves: insert it into each request's
/// extensions (as [`PeerAddr`](https://docs.rs/tokengate-ipfilter) is),
/// and tokens bound to a certificate are checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate(Thumbprint);

impl ClientCertificate {
    /// The certificate whose DER encoding is `der`.
    pub fn from_der(der: &[u8]) -> Self {
        Self(Thumbprint::new(Sha256::digest(der).into()))
    }

    /// Its SHA-256 thumbprint (`x5t#S256`).
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.0
    }
}

/// How DPoP proofs are checked: on by default wherever the authenticate
/// layer runs ([`AuthenticateLayer::dpop`](crate::AuthenticateLayer::dpop)
/// changes it).
///
/// A request with `Authorization: DPoP <token>` must carry exactly one
/// `DPoP` header whose proof, in this order:
///
/// 1. is a compact JWS of at most [`MAX_PROOF_LEN`] bytes with `typ`
///    `dpop+jwt`, a public `jwk` (a private member is refused) and an
///    `alg` of the allowlist (ES256 and EdDSA by default; never `none` or
///    a symmetric one), matching the key's type;
/// 2. verifies with that key;
/// 3. has `htm` equal to the request's method;
/// 4. has `htu` equal to the request's URL without query and fragment
///    (normalised as RFC 9449 says), built from the
///    [external origin](Self::external_origin) when set, otherwise from
///    the request (its scheme, or `X-Forwarded-Proto` from a trusted
///    proxy, else `http`; `X-Forwarded-Host` from a trusted proxy, else
///    `Host`) and its path;
/// 5. has `iat` within the [window](Self::iat_window) of the layer's
///    clock (60 seconds either way by default);
/// 6. has `ath` equal to the token's SHA-256;
/// 7. with [nonces](Self::nonces), carries a current nonce (else 401 with
///    `error="use_dpop_nonce"` and the nonce in `DPoP-Nonce`);
/// 8. has a `jti` not seen within the window: in memory for one instance,
///    and through a [shared record](Self::shared_replay) for all;
/// 9. and, for a DPoP-bound token, was signed by the bound key.
///
/// A DPoP-bound token sent as `Bearer` is refused. Every failure is the
/// same 401 `invalid_token`; the audit record names the check
/// (`dpop_missing`, `dpop_malformed`, `dpop_alg_not_allowed`,
/// `dpop_invalid_signature`, `dpop_htm_mismatch`, `dpop_htu_mismatch`,
/// `dpop_iat`, `dpop_ath_mismatch`, `dpop_nonce`, `dpop_replay`,
/// `dpop_key_mismatch`, `dpop_bound_as_bearer`).
#[derive(Clone)]
pub struct Dpop {
    algorithms: Vec<DpopAlgorithm>,
    iat_window: Duration,
    origin: Option<(String, String)>,
    nonce_period: Option<Duration>,
    replay_capacity: usize,
    shared: Option<Arc<dyn SharedReplay>>,
}

impl fmt::Debug for Dpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("algorithms", &self.algorithms)
            .field("iat_window", &self.iat_window)
            .field("origin", &self.origin)
            .field("nonce_period", &self.nonce_period)
            .field("replay_capacity", &self.replay_capacity)
            .field("shared_replay", &self.shared.is_some())
            .finish()
    }
}

impl Default for Dpop {
    fn default() -> Self {
        Self::new()
    }
}

/// A DPoP setting that cannot be used; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DpopConfigError(String);

impl Dpop {
    /// ES256 and EdDSA, a 60-second window, the URL from the request, no
    /// nonces, a record of up to 1,000,000 proofs in memory.
    pub fn new() -> Self {
        Self {
            algorithms: vec![DpopAlgorithm::Es256, DpopAlgorithm::EdDsa],
            iat_window: Duration::from_secs(60),
            origin: None,
            nonce_period: None,
            replay_capacity: 1_000_000,
            shared: None,
        }
    }

    /// Accepts proofs signed with these algorithms only.
    ///
    /// # Errors
    ///
    /// When `algorithms` is empty.
    pub fn algorithms(
        mut self,
        algorithms: impl IntoIterator<Item = DpopAlgorithm>,
    ) -> Result<Self, DpopConfigError> {
        self.algorithms = algorithms.into_iter().collect();
        self.algorithms.dedup();
        if self.algorithms.is_empty() {
            return Err(DpopConfigError(
                "DPoP needs at least one algorithm (ES256, EdDSA)".to_owned(),
            ));
        }
        Ok(self)
    }

    /// Accepts a proof whose `iat` is at most `window` from the clock's
    /// now, either way (1 second to 10 minutes; 60 seconds by default).
    ///
    /// # Errors
    ///
    /// When `window` is outside that range.
    pub fn iat_window(mut self, window: Duration) -> Result<Self, DpopConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&window) {
            return Err(DpopConfigError(format!(
                "DPoP iat window {window:?} must be between 1s and 600s"
            )));
        }
        self.iat_window = window;
        Ok(self)
    }

    /// Compares `htu` with this origin (`https://api.example.com`) and the
    /// request's path, whatever the request's `Host`: for servers behind
    /// proxies that rewrite it.
    ///
    /// # Errors
    ///
    /// When `origin` is not an `http` or `https` origin (no path, query
    /// or credentials).
    pub fn external_origin(mut self, origin: &str) -> Result<Self, DpopConfigError> {
        let error = || {
            DpopConfigError(format!(
                "DPoP external origin {:?} must be an http(s) origin such as \
                 https://api.example.com (no path)",
                tokengate_core::Echo::new(origin, 100)
            ))
        };
        let uri: http::Uri = origin.parse().map_err(|_| error())?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(error());
        };
        let path_ok = matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/"));
        if !path_ok || Target::new(scheme, authority.as_str(), "/").is_none() {
            return Err(error());
        }
        self.origin = Some((scheme.to_owned(), authority.as_str().to_owned()));
        Ok(self)
    }

    /// Requires server nonces, a new one every `period` (the one before
    /// stays valid too): the server answers proofs without a current one
    /// with 401 `use_dpop_nonce` and the nonce in `DPoP-Nonce`, and sends
    /// the current nonce on every response to a DPoP request. Nonces are
    /// made under the token pepper, so every instance of a deployment
    /// accepts every other's without sharing anything else.
    ///
    /// # Errors
    ///
    /// When `period` is under 10 seconds or over a day.
    pub fn nonces(mut self, period: Duration) -> Result<Self, DpopConfigError> {
        if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&period) {
            return Err(DpopConfigError(format!(
                "DPoP nonce period {period:?} must be between 10s and 1d"
            )));
        }
        self.nonce_period = Some(period);
        Ok(self)
    }

    /// Remembers at most `capacity` proofs in memory (1,000,000 by
    /// default, about 25 bytes each). A full record refuses new proofs
    /// with 503 rather than forget one early.
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity.max(1);
        self
    }

    /// Also records proofs in `shared`, so a proof replayed at another
    /// instance is refused (the Redis rate state's `replay`). When it
    /// cannot answer, this instance's own record decides.
    pub fn shared_replay(mut self, shared: Arc<dyn SharedReplay>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The URL the request was sent to, as its client saw it.
    fn target<B>(&self, request: &Request<B>) -> Option<Target> {
        let path = request.uri().path();
        if let Some((scheme, authority)) = &self.origin {
            return Target::new(scheme, authority, path);
        }
        let trusted = RequestTrail::peer_trusted(request.extensions());
        let scheme = trusted
            .then(|| forwarded(request, &X_FORWARDED_PROTO))
            .flatten()
            .or(request.uri().scheme_str())
            .unwrap_or("http");
        let authority = trusted
            .then(|| forwarded(request, &X_FORWARDED_HOST))
            .flatten()
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .or(request.uri().authority().map(http::uri::Authority::as_str))?;
        Target::new(scheme, authority, path)
    }

    /// Verifies the request's own DPoP proof when no access token goes
    /// with it (an issuing endpoint binding a new token to the key that
    /// signed the proof): one `DPoP` header, its signature, `htm`, `htu`
    /// and `iat` (at `now`, nanoseconds since the epoch). Returns the
    /// key's thumbprint, or the audit reason of the first failed check.
    pub fn proof_key<B>(
        &self,
        request: &Request<B>,
        now: u64,
    ) -> Result<Thumbprint, InvalidReason> {
        let text = the_proof(request.headers())?;
        let reason = |error: ProofError| match Refused::from(error) {
            Refused::Invalid(reason) => reason,
            Refused::Full => InvalidReason::DpopMalformed,
        };
        let proof = proof::verify(text, &self.algorithms).map_err(reason)?;
        self.request_checks(request, &proof, now).map_err(reason)?;
        Ok(proof.jkt)
    }

    /// The checks of a verified proof against its request: method, URL,
    /// time.
    fn request_checks<B>(
        &self,
        request: &Request<B>,
        proof: &proof::Proof,
        now: u64,
    ) -> Result<(), ProofError> {
        if proof.htm != request.method().as_str() {
            return Err(ProofError::Method);
        }
        match (Target::parse(&proof.htu), self.target(request)) {
            (Some(claimed), Some(actual)) if claimed == actual => {}
            _ => return Err(ProofError::Url),
        }
        let now_secs = i64::try_from(now / 1_000_000_000).unwrap_or(i64::MAX);
        let window = i64::try_from(self.iat_window.as_secs()).unwrap_or(i64::MAX);
        if now_secs.abs_diff(proof.iat) > window.unsigned_abs() {
            return Err(ProofError::IssuedAt);
        }
        Ok(())
    }

    /// The `algs` of the `WWW-Authenticate: DPoP` challenge.
    pub(crate) fn algs_text(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn build(self) -> DpopState {
        let window = u64::try_from(self.iat_window.as_nanos()).unwrap_or(u64::MAX);
        DpopState {
            memory: MemoryReplay::new(window, self.replay_capacity),
            nonces: self.nonce_period.map(|period| Nonces {
                period_nanos: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            }),
            options: self,
        }
    }
}

/// The checks, with their record of proofs seen.
pub(crate) struct DpopState {
    pub(crate) options: Dpop,
    memory: MemoryReplay,
    nonces: Option<Nonces>,
}

/// A proof that passed every check this side of the token lookup.
pub(crate) struct Checked {
    pub(crate) key: DpopKey,
    /// The shared record's answer, when there is one.
    pub(crate) shared: Option<ReplayFuture>,
}

/// Why a proof was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    Invalid(InvalidReason),
    /// The record of proofs is full (503).
    Full,
}

impl From<ProofError> for Refused {
    fn from(error: ProofError) -> Self {
        Self::Invalid(match error {
            ProofError::Malformed => InvalidReason::DpopMalformed,
            ProofError::Algorithm => InvalidReason::DpopAlgorithm,
            ProofError::Signature => InvalidReason::DpopInvalidSignature,
            ProofError::Method => InvalidReason::DpopHtmMismatch,
            ProofError::Url => InvalidReason::DpopHtuMismatch,
            ProofError::IssuedAt => InvalidReason::DpopIat,
            ProofError::TokenHash => InvalidReason::DpopAthMismatch,
        })
    }
}

/// The first value of a forwarding header, trimmed.
fn forwarded<'a, B>(request: &'a Request<B>, name: &HeaderName) -> Option<&'a str> {
    let value = request.headers().get(name)?.to_str().ok()?;
    Some(value.split(',').next().unwrap_or_default().trim()).filter(|v| !v.is_empty())
}

/// The request's one `DPoP` proof as text: none is `dpop_missing`;
/// several, or one that is not visible ASCII, `dpop_malformed`.
fn the_proof(headers: &http::HeaderMap) -> Result<&str, InvalidReason> {
    let mut proofs = headers.get_all(DPOP).iter();
    match (proofs.next(), proofs.next()) {
        (Some(proof), None) => proof.to_str().map_err(|_| InvalidReason::DpopMalformed),
        (None, _) => Err(InvalidReason::DpopMissing),
        (Some(_), Some(_)) => Err(InvalidReason::DpopMalformed),
    }
}

impl DpopState {
    /// Checks the request's proof for `token` at `now` (nanoseconds since
    /// the epoch): everything but the bound key, which needs the token's
    /// record.
    pub(crate) fn check<B>(
        &self,
        request: &Request<B>,
        token: &str,
        now: u64,
        hasher: &TokenHasher,
    ) -> Result<Checked, Refused> {
        let text = the_proof(request.headers()).map_err(Refused::Invalid)?;
        let proof = proof::verify(text, &self.options.algorithms)?;
        self.options.request_checks(request, &proof, now)?;
        let token_hash = Sha256::digest(token.as_bytes());
        if proof.ath.as_deref() != Some(token_hash.as_slice()) {
            return Err(ProofError::TokenHash.into());
        }
        if let Some(nonces) = &self.nonces
            && !nonces.accepts(hasher, proof.nonce.as_deref(), now)
        {
            return Err(Refused::Invalid(InvalidReason::DpopNonce));
        }
        let mut digest = Sha256::new();
        digest.update(proof.jkt.digest());
        digest.update(proof.jti.as_bytes());
        let digest = digest.finalize();
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        match self.memory.record(u128::from_be_bytes(key), now) {
            Seen::First => {}
            Seen::Again => return Err(Refused::Invalid(InvalidReason::DpopReplay)),
            Seen::Full => return Err(Refused::Full),
        }
        let shared = self
            .options
            .shared
            .as_ref()
            .map(|shared| shared.first_use(key, self.options.iat_window.saturating_mul(2)));
        Ok(Checked {
            key: DpopKey(proof.jkt),
            shared,
        })
    }

    /// Whether nonces are on.
    pub(crate) fn has_nonces(&self) -> bool {
        self.nonces.is_some()
    }

    /// The nonce to send, when nonces are on.
    pub(crate) fn nonce(&self, hasher: &TokenHasher, now: u64) -> Option<HeaderValue> {
        self.nonces.as_ref().map(|n| n.current(hasher, now))
    }
}

/// The client certificate of `request`: the TLS connection's, or an
/// RFC 9440 `Client-Cert` header from a trusted proxy. `Err(true)` when
/// the only one is a header from a peer that is not a trusted proxy
/// (ignored), `Err(false)` when there is none.
pub(crate) fn client_certificate<B>(request: &Request<B>) -> Result<Thumbprint, bool> {
    if let Some(certificate) = request.extensions().get::<ClientCertificate>() {
        return Ok(certificate.0);
    }
    let Some(header) = request.headers().get(CLIENT_CERT) else {
        return Err(false);
    };
    if !RequestTrail::peer_trusted(request.extensions()) {
        return Err(true);
    }
    // A structured-field byte sequence: `:` base64 `:`.
    let der = header
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|v| v.strip_prefix(':')?.strip_suffix(':'))
        .filter(|b64| b64.len() <= 64 * 1024)
        .and_then(|b64| STANDARD.decode(b64).ok())
        .ok_or(false)?;
    Ok(ClientCertificate::from_der(&der).0)
}
