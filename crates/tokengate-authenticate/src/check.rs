//! The decision: one credential, well-formed, known, for this service,
//! from an allowed network.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response};
use metrics::Counter;
use tokengate_cache::VerifyError;
use tokengate_check::{Admit, Check, Verdict};
use tokengate_core::{
    ClientIp, Denial, InvalidReason, IpReason, Principal, RequestTrail, Token, TokenHash,
};
use tokengate_store::{StoreError, TokenStore};

use crate::credential::{QuerySource, redact_query};
use crate::layer::{
    AudienceRule, AuthenticateLayer, Config, EXPIRY_VALUE, TOKEN_EXPIRES_WITHIN, VerifyToken,
};
use crate::spend::SpendUse;
use crate::spend::{SpendWait, Spent, UsesLeft};
use crate::usage::note_use;
use tokengate_check::{Chain, ChainWait, ChainWaited};
use tokengate_core::Binding;
use tokengate_core::metric_names::{DPOP_REPLAY_FALLBACKS, STORE_ERRORS};
use tokengate_store::ReplayFuture;

use crate::dpop::{DPOP_NONCE, DpopKey, Refused, client_certificate};

/// The verification of a layer's configuration, borrowed: what
/// [`VerifyToken`] and [`AuthenticateLayer`] run.
pub(crate) struct Verify<'a, St>(pub(crate) &'a Config<St>);

/// Verifies the request's token through the verifying cache and puts the
/// [`Principal`] into its extensions; a cache miss waits for the store.
impl<B, St: TokenStore> Check<B> for Verify<'_, St> {
    type Admit = ExpiryHeader;
    type Wait = TokenLookup;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<ExpiryHeader, TokenLookup> {
        let config = self.0;
        match config.decide(request) {
            Ok(Found::Admitted(expiry)) => Verdict::Admit(expiry),
            Ok(Found::Lookup(lookup)) => Verdict::Wait(lookup),
            Err(denial) => Verdict::Refuse(config.refuse(request, denial)),
        }
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        verified: Result<Principal, VerifyError>,
    ) -> Verdict<ExpiryHeader, TokenLookup> {
        let config = self.0;
        match config.admit(request, verified) {
            Ok(expiry) => Verdict::Admit(expiry),
            Err(denial) => Verdict::Refuse(config.refuse(request, denial)),
        }
    }
}

fn expiry_value(principal: &Principal) -> Option<(u64, HeaderValue)> {
    let at = principal.expires_at()?;
    let nanos = at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    });
    Some((
        nanos,
        HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()?,
    ))
}

/// What the layer found without waiting.
enum Found {
    /// Admitted (a public route, or a token the cache knows).
    Admitted(ExpiryHeader),
    /// The cache does not know the token: ask the store.
    Lookup(TokenLookup),
}

/// What the cheap, synchronous part of a decision found.
enum Step {
    Public,
    Refuse(Denial),
    /// The token's hash, and (only while the hasher knows previous
    /// peppers) the token itself, wiped on drop, for their hashes should
    /// the current one be unknown; and a shared replay record's answer to
    /// wait for, for a DPoP proof.
    Lookup(TokenHash, Option<Token>, Option<ReplayFuture>),
}

/// The token-expiry header of an admitted request (nothing when the layer
/// sends none, or the token never expires), and the near-expiry counter
/// when the token is within the layer's window.
#[derive(Debug, Clone, Default)]
pub struct ExpiryHeader {
    header: Option<(HeaderName, HeaderValue)>,
    near: Option<Counter>,
    /// The current DPoP nonce, for a DPoP request when nonces are on
    /// (boxed: every admitted request moves this, few carry one).
    nonce: Option<Box<HeaderValue>>,
}

impl Admit for ExpiryHeader {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        if let Some(nonce) = self.nonce {
            response.headers_mut().insert(DPOP_NONCE, *nonce);
        }
        // Counted here, not when the token is verified: a later check
        // (scope, rate, uses) may still refuse the request, and the
        // metric counts admitted requests only. A refusal carries its
        // denial; a response of the inner service does not.
        if let Some(near) = self.near
            && response.extensions().get::<Denial>().is_none()
        {
            near.increment(1);
        }
    }
}

/// A store lookup of a token the cache did not know, bounded by the
/// layer's lookup timeout (a timeout is a store error: 503).
pub struct TokenLookup {
    future: Pin<Box<dyn Future<Output = Result<Principal, VerifyError>> + Send>>,
}

impl Future for TokenLookup {
    type Output = Result<Principal, VerifyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl fmt::Debug for TokenLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLookup").finish_non_exhaustive()
    }
}

impl<St: TokenStore> Config<St> {
    fn decide<B>(&self, request: &mut Request<B>) -> Result<Found, Denial> {
        let (hash, token, shared) = match self.first_step(request) {
            Step::Public => return Ok(Found::Admitted(ExpiryHeader::default())),
            Step::Refuse(denial) => return Err(denial),
            Step::Lookup(hash, token, shared) => (hash, token, shared),
        };
        let cached = self.verifier.verify_cached(&hash);
        match cached {
            Some(verdict) if shared.is_none() && (token.is_none() || !unknown(&verdict)) => {
                self.admit(request, verdict).map(Found::Admitted)
            }
            cached => {
                // Hashed under the previous peppers only now: a hit never is.
                let previous = token.map_or_else(Vec::new, |token| {
                    self.hasher.previous_hashes(token.expose_secret())
                });
                let verifier = self.verifier.clone();
                let timeout = self.lookup_timeout;
                Ok(Found::Lookup(TokenLookup {
                    future: Box::pin(async move {
                        if let Some(shared) = shared
                            && !first_use(shared, timeout).await
                        {
                            return Err(VerifyError::Invalid(InvalidReason::DpopReplay));
                        }
                        let verdict = match cached {
                            Some(verdict) => verdict,
                            None => bounded(timeout, verifier.verify(&hash)).await,
                        };
                        if !unknown(&verdict) {
                            return verdict;
                        }
                        migrate(&verifier, timeout, hash, previous)
                            .await
                            .unwrap_or(verdict)
                    }),
                }))
            }
        }
    }
}

/// Whether a shared replay record says a proof is new: when it cannot
/// answer within `timeout`, the instance's own record (which found it
/// new) decides.
async fn first_use(shared: ReplayFuture, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, shared).await {
        Ok(Ok(first)) => first,
        Ok(Err(error)) => {
            metrics::counter!(DPOP_REPLAY_FALLBACKS).increment(1);
            tracing::warn!(%error, "shared DPoP replay record unavailable; this instance's decides");
            true
        }
        Err(_) => {
            metrics::counter!(DPOP_REPLAY_FALLBACKS).increment(1);
            tracing::warn!("shared DPoP replay record timed out; this instance's decides");
            true
        }
    }
}

/// Whether `verdict` says the store has no such token.
fn unknown(verdict: &Result<Principal, VerifyError>) -> bool {
    matches!(verdict, Err(VerifyError::Invalid(InvalidReason::Unknown)))
}

/// `lookup` within `timeout`; a timeout is a store error (503).
async fn bounded(
    timeout: Duration,
    lookup: impl Future<Output = Result<Principal, VerifyError>>,
) -> Result<Principal, VerifyError> {
    match tokio::time::timeout(timeout, lookup).await {
        Ok(verdict) => verdict,
        Err(_) => {
            metrics::counter!(STORE_ERRORS, "kind" => "timeout").increment(1);
            Err(VerifyError::Store(StoreError::Timeout))
        }
    }
}

/// After a pepper rotation: looks the token up under each previous
/// pepper's hash; where found, moves it to `current` in the store (once)
/// and answers as found. `None` when no previous pepper knows it.
async fn migrate<St: TokenStore>(
    verifier: &tokengate_cache::CachedStore<St>,
    timeout: Duration,
    current: TokenHash,
    previous: Vec<TokenHash>,
) -> Option<Result<Principal, VerifyError>> {
    for old in previous {
        let verdict = bounded(timeout, verifier.verify(&old)).await;
        if unknown(&verdict) {
            continue;
        }
        if let Ok(principal) = &verdict
            && let Err(error) = verifier.rehash(principal.token_id(), &old, current).await
        {
            // It still verifies under the old pepper; the next use retries.
            tracing::warn!(%error, "could not move a token to the current pepper");
        }
        return Some(verdict);
    }
    None
}

impl<St> Config<St> {
    /// Public routes, credential extraction and token parsing: everything
    /// decided before any cache or store access.
    fn first_step<B>(&self, request: &mut Request<B>) -> Step {
        if self
            .public
            .as_ref()
            .is_some_and(|p| p.is_public(request.method(), request.uri()))
        {
            return Step::Public;
        }
        let credential = match self.sources.find(request.headers(), request.uri()) {
            Ok(Some(credential)) => credential,
            Ok(None) => return Step::Refuse(Denial::MissingToken),
            Err(reason) => return Step::Refuse(Denial::MalformedRequest(reason)),
        };
        // Checked and hashed in place: no owned copy of the secret is made,
        // except while previous peppers are known (a copy wiped on drop,
        // hashed under them only if the current hash is unknown).
        if let Err(error) = self.format.validate(&credential.token) {
            let from_query = credential.from_query;
            if from_query {
                self.redact(request);
            }
            return Step::Refuse(Denial::InvalidToken(InvalidReason::Malformed(error)));
        }
        // A DPoP proof is checked before the lookup: a refused proof costs
        // no store work.
        let proof = match (&self.dpop, credential.dpop) {
            (Some(dpop), true) => {
                let now = self.clock.now_nanos();
                match dpop.check(request, &credential.token, now, &self.hasher) {
                    Ok(checked) => Some(checked),
                    Err(Refused::Invalid(reason)) => {
                        return Step::Refuse(Denial::InvalidToken(reason));
                    }
                    Err(Refused::Full) => {
                        tracing::warn!("the DPoP replay record is full; refusing new proofs");
                        return Step::Refuse(Denial::StoreUnavailable);
                    }
                }
            }
            _ => None,
        };
        let hash = self.hasher.hash_str(&credential.token);
        let previous = self
            .hasher
            .has_previous()
            .then(|| self.format.parse(&credential.token).ok())
            .flatten();
        if credential.from_query {
            self.redact(request);
        }
        let shared = proof.and_then(|checked| {
            request.extensions_mut().insert(checked.key);
            checked.shared
        });
        Step::Lookup(hash, previous, shared)
    }

    /// Refuses `request` with `denial`; a proof without a current nonce
    /// gets the nonce to use.
    fn refuse<B>(&self, request: &Request<B>, denial: Denial) -> tokengate_check::Refusal {
        let nonce = match (&denial, &self.dpop) {
            (Denial::InvalidToken(InvalidReason::DpopNonce), Some(dpop)) => {
                dpop.nonce(&self.hasher, self.clock.now_nanos())
            }
            _ => None,
        };
        let mut refusal = self.renderer.refuse(request, denial);
        if let Some(nonce) = nonce {
            refusal.headers_mut().insert(DPOP_NONCE, nonce);
        }
        refusal
    }

    /// Checks a bound token's proof of possession: the DPoP key that
    /// signed the request's proof, or the client certificate.
    fn check_binding<B>(&self, request: &Request<B>, binding: &Binding) -> Result<(), Denial> {
        let refused = |reason| Err(Denial::InvalidToken(reason));
        match binding {
            Binding::Dpop(jkt) => match request.extensions().get::<DpopKey>() {
                None => refused(InvalidReason::DpopBoundAsBearer),
                Some(key) if key.0 != *jkt => refused(InvalidReason::DpopKeyMismatch),
                Some(_) => Ok(()),
            },
            Binding::Certificate(sha) => match client_certificate(request) {
                Ok(presented) if presented == *sha => Ok(()),
                Ok(_) => refused(InvalidReason::CertMismatch),
                Err(true) => refused(InvalidReason::CertUntrustedHeader),
                Err(false) => refused(InvalidReason::CertMissing),
            },
        }
    }

    /// Replaces the token parameter's value in the request's URI and in
    /// every copy of it the layer was told of.
    fn redact<B>(&self, request: &mut Request<B>) {
        let QuerySource::Accepted(name) = &self.sources.query else {
            return;
        };
        if let Some(uri) = redact_query(request.uri(), name) {
            *request.uri_mut() = uri;
        }
        for copy in &self.uri_copies {
            if let Some(uri) = copy(request.extensions_mut())
                && let Some(redacted) = redact_query(uri, name)
            {
                *uri = redacted;
            }
        }
    }

    /// Checks a verified principal against this service (audience, the
    /// token's networks) and hands it to the request. Returns the token's
    /// expiry header for the response.
    fn admit<B>(
        &self,
        request: &mut Request<B>,
        verdict: Result<Principal, VerifyError>,
    ) -> Result<ExpiryHeader, Denial> {
        let principal = verdict.map_err(|error| {
            if let VerifyError::Store(store) = &error {
                tracing::warn!(error = %store, "token store unavailable");
            }
            error.to_denial()
        })?;
        RequestTrail::note_principal(request.extensions(), &principal);
        if let AudienceRule::Required(audience) = &self.audience
            && !principal.allows_audience(audience)
        {
            return Err(Denial::InvalidToken(InvalidReason::WrongAudience));
        }
        if let Some(binding) = principal.binding() {
            self.check_binding(request, binding)?;
        }
        if !principal.allowed_networks().is_empty() {
            match ClientIp::of(request.extensions()) {
                None => return Err(Denial::IpForbidden(IpReason::Unresolved)),
                Some(ip) if !principal.allows_ip(ip) => {
                    return Err(Denial::InvalidToken(InvalidReason::OutsideNetworks));
                }
                Some(_) => {}
            }
        }
        if let Some(usage) = &self.usage {
            // One record a second per token: a busy token costs the
            // tracker's lock once a second, not once a request.
            let now = UNIX_EPOCH + Duration::from_nanos(self.clock.now_nanos());
            if note_use(&principal, now) {
                usage.record(principal.token_id(), now);
            }
        }
        let expiry = principal.with_slot(&EXPIRY_VALUE, expiry_value, |expiry| {
            let Some((at, value)) = expiry.as_ref() else {
                return ExpiryHeader::default();
            };
            let window = self.expires_within.unwrap_or(TOKEN_EXPIRES_WITHIN);
            let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
            let near = at.saturating_sub(self.clock.now_nanos()) <= window;
            let header = self
                .expires_header
                .as_ref()
                .filter(|_| near || self.expires_within.is_none())
                .map(|name| (name.clone(), value.clone()));
            ExpiryHeader {
                header,
                near: near.then(|| self.near_expiry.clone()),
                nonce: None,
            }
        });
        let mut expiry = expiry;
        if let Some(dpop) = &self.dpop
            && dpop.has_nonces()
            && request.extensions().get::<DpopKey>().is_some()
        {
            expiry.nonce = dpop
                .nonce(&self.hasher, self.clock.now_nanos())
                .map(Box::new);
        }
        request.extensions_mut().insert(principal);
        Ok(expiry)
    }
}

/// Verification alone: the token checked, the principal in the request;
/// a usage-limited token spends nothing here (the Gate spends it last,
/// with [`UseLimitLayer`](crate::UseLimitLayer)).
impl<B, St: TokenStore> Check<B> for VerifyToken<St> {
    type Admit = ExpiryHeader;
    type Wait = TokenLookup;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<ExpiryHeader, TokenLookup> {
        Verify(&self.config).check(request)
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        verified: Result<Principal, VerifyError>,
    ) -> Verdict<ExpiryHeader, TokenLookup> {
        Verify(&self.config).resume(request, verified)
    }
}

/// What an [`AuthenticateLayer`] waits for: a cache miss's lookup, then a
/// usage-limited token's spend.
pub type AuthenticateWait = ChainWait<TokenLookup, SpendWait, ExpiryHeader>;

/// The same decision whether the layer runs as a `tower` layer or as a
/// [`Check`] in a chain of one's own: the token verified, then a
/// usage-limited token's use spent.
impl<B, St: TokenStore> Check<B> for AuthenticateLayer<St> {
    type Admit = (ExpiryHeader, UsesLeft);
    type Wait = AuthenticateWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<Self::Admit, AuthenticateWait> {
        Chain::new(Verify(&self.config), SpendUse(&self.config)).check(request)
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        waited: ChainWaited<Result<Principal, VerifyError>, ExpiryHeader, Spent>,
    ) -> Verdict<Self::Admit, AuthenticateWait> {
        Chain::new(Verify(&self.config), SpendUse(&self.config)).resume(request, waited)
    }
}
