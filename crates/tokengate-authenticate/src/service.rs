use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderValue, Request, Response};
use tokengate_core::{
    ClientIp, Denial, GateBody, InvalidReason, IpReason, Principal, RequestTrail, StoreError,
    TokenHash, TokenStore, VerifyError,
};
use tower::Service;

use crate::credential::{QuerySource, redact_query};
use crate::future::ResponseFuture;
use crate::layer::{AudienceCheck, Config};

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

/// What the cheap, synchronous part of `call` decided.
enum Step {
    Public,
    Refuse(Denial),
    Lookup(TokenHash),
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
        let hash = match config.first_step(&mut request) {
            Step::Public => return ResponseFuture::forward(self.inner.call(request), None, None),
            Step::Refuse(denial) => {
                return ResponseFuture::reject(config.renderer.reject(&request, denial));
            }
            Step::Lookup(hash) => hash,
        };
        match config.verifier.verify_cached(&hash) {
            Some(verdict) => match config.admit(&mut request, verdict) {
                Ok(expires) => ResponseFuture::forward(
                    self.inner.call(request),
                    expires,
                    config.expires_header.clone(),
                ),
                Err(denial) => ResponseFuture::reject(config.renderer.reject(&request, denial)),
            },
            None => {
                // Clone and swap: the service that was polled ready goes with
                // the request; this service keeps a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let config = Arc::clone(&self.config);
                let lookup = {
                    let verifier = config.verifier.clone();
                    let timeout = config.lookup_timeout;
                    Box::pin(async move {
                        match tokio::time::timeout(timeout, verifier.verify(&hash)).await {
                            Ok(verdict) => verdict,
                            Err(_) => Err(VerifyError::Store(StoreError::Timeout)),
                        }
                    })
                };
                ResponseFuture::verify(lookup, request, inner, config)
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

    fn redact<B>(&self, request: &mut Request<B>) {
        if let QuerySource::Accepted(name) = &self.sources.query
            && let Some(uri) = redact_query(request.uri(), name)
        {
            *request.uri_mut() = uri;
        }
    }

    /// Checks a verified principal against this service (audience, the
    /// token's networks) and hands it to the request. Returns the token's
    /// expiry for the response header.
    pub(crate) fn admit<B>(
        &self,
        request: &mut Request<B>,
        verdict: Result<Principal, VerifyError>,
    ) -> Result<Option<HeaderValue>, Denial> {
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
                    return Err(Denial::IpForbidden(IpReason::OutsideTokenNetworks));
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
        let expires = match self.expires_header {
            Some(_) => principal
                .expiry_header(|at| HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()),
            None => None,
        };
        request.extensions_mut().insert(principal);
        Ok(expires)
    }
}
