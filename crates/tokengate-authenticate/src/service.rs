use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tokengate_core::{
    ClientIp, Denial, GateBody, InvalidReason, IpReason, Principal, RequestTrail, StoreError,
    TokenHash, TokenStore, VerifyError,
};
use tower::Service;

use crate::credential::{QuerySource, redact_query};
use crate::future::ResponseFuture;
use crate::layer::{AudienceCheck, AuthenticateLayer, Config};

/// The service [`AuthenticateLayer`](crate::AuthenticateLayer) makes.
pub struct Authenticate<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St> Authenticate<S, St> {
    pub(crate) fn new(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
    }
}

impl<S: Clone, St> Clone for Authenticate<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Authenticate<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the cheap, synchronous part of a decision found.
enum Step {
    Public,
    Refuse(Denial),
    Lookup(TokenHash),
}

/// What [`AuthenticateLayer::check_cached`] decided without waiting.
#[derive(Debug)]
pub enum Verdict {
    /// A public route: no token is asked for.
    Public,
    /// Verified from the cache and admitted: the principal is in the
    /// request's extensions. Set the expiry header on the response.
    Admitted(ExpiryHeader),
    /// The cache does not know the token: await the lookup, then hand its
    /// output to [`AuthenticateLayer::admit`].
    Lookup(TokenLookup),
}

/// The token-expiry header of an admitted request (nothing when the layer
/// sends none, or the token never expires).
#[derive(Debug, Clone, Default)]
pub struct ExpiryHeader(Option<(HeaderName, HeaderValue)>);

impl ExpiryHeader {
    /// Sets the header on a response's `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        if let Some((name, value)) = self.0 {
            headers.insert(name, value);
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

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Authenticate<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: TokenStore,
    ReqBody: Send + 'static,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        match config.check_cached(&mut request) {
            Ok(Verdict::Public) => {
                ResponseFuture::forward(self.inner.call(request), ExpiryHeader::default())
            }
            Ok(Verdict::Admitted(expiry)) => {
                ResponseFuture::forward(self.inner.call(request), expiry)
            }
            Ok(Verdict::Lookup(lookup)) => {
                // Clone and swap: the service that was polled ready goes with
                // the request; this service keeps a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::verify(lookup, request, inner, Arc::clone(&self.config))
            }
            Err(denial) => ResponseFuture::reject(config.renderer.reject(&request, denial)),
        }
    }
}

impl<St: TokenStore> AuthenticateLayer<St> {
    /// Decides `request` as far as this layer's service does without
    /// waiting, for a service that runs several layers' decisions itself
    /// (the facade's `Gate`): public routes, the credential, the token's
    /// format and checksum, and the verifying cache. A refusal is to be
    /// answered with [`AuthenticateLayer::reject`].
    pub fn check_cached<B>(&self, request: &mut Request<B>) -> Result<Verdict, Denial> {
        self.config.check_cached(request)
    }

    /// Checks the output of a [`TokenLookup`] against this layer (audience,
    /// the token's networks) and hands the principal to `request`, as
    /// this layer's service does after a cache miss.
    pub fn admit<B>(
        &self,
        request: &mut Request<B>,
        verdict: Result<Principal, VerifyError>,
    ) -> Result<ExpiryHeader, Denial> {
        self.config.admit(request, verdict)
    }

    /// The response this layer's service refuses `request` with.
    pub fn reject<B, R>(&self, request: &Request<B>, denial: Denial) -> Response<GateBody<R>> {
        self.config.renderer.reject(request, denial)
    }
}

impl<St: TokenStore> Config<St> {
    fn check_cached<B>(&self, request: &mut Request<B>) -> Result<Verdict, Denial> {
        let hash = match self.first_step(request) {
            Step::Public => return Ok(Verdict::Public),
            Step::Refuse(denial) => return Err(denial),
            Step::Lookup(hash) => hash,
        };
        match self.verifier.verify_cached(&hash) {
            Some(verdict) => self.admit(request, verdict).map(Verdict::Admitted),
            None => {
                let verifier = self.verifier.clone();
                let timeout = self.lookup_timeout;
                Ok(Verdict::Lookup(TokenLookup {
                    future: Box::pin(async move {
                        match tokio::time::timeout(timeout, verifier.verify(&hash)).await {
                            Ok(verdict) => verdict,
                            Err(_) => Err(VerifyError::Store(StoreError::Timeout)),
                        }
                    }),
                }))
            }
        }
    }
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
        // Checked and hashed in place: no owned copy of the secret is made.
        let verdict = match self.format.check(&credential.token) {
            Ok(()) => Step::Lookup(self.hasher.hash_str(&credential.token)),
            Err(error) => Step::Refuse(Denial::InvalidToken(InvalidReason::Malformed(error))),
        };
        if credential.from_query {
            self.redact(request);
        }
        verdict
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
    pub(crate) fn admit<B>(
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
        if let AudienceCheck::Required(audience) = &self.audience
            && !principal.allows_audience(audience)
        {
            return Err(Denial::InvalidToken(InvalidReason::WrongAudience));
        }
        if !principal.allowed_networks().is_empty() {
            match request.extensions().get::<ClientIp>() {
                None => return Err(Denial::IpForbidden(IpReason::Unresolved)),
                Some(ip) if !principal.allows_ip(*ip) => {
                    return Err(Denial::InvalidToken(InvalidReason::OutsideNetworks));
                }
                Some(_) => {}
            }
        }
        if let Some(usage) = &self.usage {
            // One record a second per token: a busy token costs the
            // tracker's lock once a second, not once a request.
            let now = UNIX_EPOCH + Duration::from_nanos(self.clock.now_nanos());
            if principal.note_use(now) {
                usage.record(principal.token_id(), now);
            }
        }
        let expiry = self.expires_header.as_ref().and_then(|name| {
            let value = principal
                .expiry_header(|at| HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok())?;
            Some((name.clone(), value))
        });
        request.extensions_mut().insert(principal);
        Ok(ExpiryHeader(expiry))
    }
}
