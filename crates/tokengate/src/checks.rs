//! The gate's six decisions after audit, run by one service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokengate_authenticate::{AuthenticateLayer, ExpiryHeader, TokenLookup, Verdict};
use tokengate_core::{GateBody, TokenStore, fail_closed, take_refusal};
use tokengate_ipfilter::{ClientIpLayer, IpFilterLayer};
use tokengate_rate::{RateByTokenLayer, RateHeaders};
use tokengate_scope::{EnforceScopeLayer, ScopeLookup};
use tower::Service;

/// The layers a [`GateChecks`] runs, in their order.
pub(crate) struct Layers<St, P> {
    pub(crate) client_ip: ClientIpLayer,
    pub(crate) ip_filter: IpFilterLayer,
    pub(crate) ip_rate: RateByTokenLayer,
    pub(crate) authenticate: AuthenticateLayer<St>,
    pub(crate) token_rate: RateByTokenLayer,
    pub(crate) scope: EnforceScopeLayer<P>,
}

impl<St, P> Clone for Layers<St, P> {
    fn clone(&self) -> Self {
        Self {
            client_ip: self.client_ip.clone(),
            ip_filter: self.ip_filter.clone(),
            ip_rate: self.ip_rate.clone(),
            authenticate: self.authenticate.clone(),
            token_rate: self.token_rate.clone(),
            scope: self.scope.clone(),
        }
    }
}

/// Every layer of a [`Gate`](crate::Gate) but audit, as one service:
/// client IP, IP filter, per-IP limit, authenticate, per-token limit and
/// scopes, then `S`.
///
/// The six layers stacked would wrap each request in six services, six
/// nested futures and six body wrappers, moving the request and the
/// response through each. This service runs the same decisions (each
/// layer's own: `resolve`, `check`, `check_cached`, `admit`) in order on
/// one request, with one future and one body wrapper, and sets on the
/// response exactly the headers the stacked layers would set, refusals
/// included. Only a cache miss waits: the store lookup, then the rest.
pub struct GateChecks<S, St, P> {
    inner: S,
    layers: Arc<Layers<St, P>>,
}

impl<S, St, P> GateChecks<S, St, P> {
    pub(crate) fn new(inner: S, layers: Arc<Layers<St, P>>) -> Self {
        Self { inner, layers }
    }
}

impl<S: Clone, St, P> Clone for GateChecks<S, St, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layers: Arc::clone(&self.layers),
        }
    }
}

impl<S: fmt::Debug, St, P> fmt::Debug for GateChecks<S, St, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateChecks")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The headers the admitting layers set on the response, whatever it is.
#[derive(Default)]
struct Headers {
    ip_rate: RateHeaders,
    expiry: ExpiryHeader,
    token_rate: RateHeaders,
}

impl Headers {
    /// Sets them in the order the stacked layers would: innermost first,
    /// so an outer layer's value wins where two set one header.
    fn apply<B>(self, response: &mut Response<B>) {
        let headers = response.headers_mut();
        self.token_rate.apply(headers);
        self.expiry.apply(headers);
        self.ip_rate.apply(headers);
    }
}

/// A refusal, boxed: the cold path, kept out of the future's size.
type Refusal<ResBody> = Box<Response<GateBody<ResBody>>>;

/// `response`, a layer's refusal, with the headers of the layers that
/// admitted the request before the refusing one.
fn refuse<ResBody>(
    mut response: Response<GateBody<ResBody>>,
    headers: Headers,
) -> Refusal<ResBody> {
    headers.apply(&mut response);
    Box::new(response)
}

impl<St: TokenStore, P: ScopeLookup> Layers<St, P> {
    /// The decisions before authentication (no layer before them sets a
    /// header, so their refusals go as rendered).
    fn before<ReqBody, ResBody>(
        &self,
        request: &mut Request<ReqBody>,
        headers: &mut Headers,
    ) -> Result<(), Refusal<ResBody>> {
        if let Err(denial) = self.client_ip.resolve(request) {
            return Err(Box::new(self.client_ip.reject(request, denial)));
        }
        if let Err(denial) = self.ip_filter.check(request) {
            return Err(Box::new(self.ip_filter.reject(request, denial)));
        }
        match self.ip_rate.check(request) {
            Ok(rate) => {
                headers.ip_rate = rate;
                Ok(())
            }
            Err(denial) => Err(Box::new(self.ip_rate.reject(request, denial))),
        }
    }

    /// The decisions after authentication.
    fn after<ReqBody, ResBody>(
        &self,
        request: &Request<ReqBody>,
        headers: &mut Headers,
    ) -> Result<(), Refusal<ResBody>> {
        match self.token_rate.check(request) {
            Ok(rate) => headers.token_rate = rate,
            Err(denial) => {
                let admitted = std::mem::take(headers);
                return Err(refuse(self.token_rate.reject(request, denial), admitted));
            }
        }
        if let Err(denial) = self.scope.check(request) {
            let admitted = std::mem::take(headers);
            return Err(refuse(self.scope.reject(request, denial), admitted));
        }
        Ok(())
    }
}

impl<S, St, P, ReqBody, ResBody> Service<Request<ReqBody>> for GateChecks<S, St, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: TokenStore,
    P: ScopeLookup,
    ReqBody: Send + 'static,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, P, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layers = &*self.layers;
        let mut headers = Headers::default();
        if let Err(refusal) = layers.before(&mut request, &mut headers) {
            return ResponseFuture::done(refusal);
        }
        match layers.authenticate.check_cached(&mut request) {
            Ok(Verdict::Public) => {}
            Ok(Verdict::Admitted(expiry)) => headers.expiry = expiry,
            Ok(Verdict::Lookup(lookup)) => {
                // Clone and swap: the service that was polled ready goes
                // with the request; this service keeps a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture::lookup(Box::new(Pending {
                    lookup,
                    request,
                    inner,
                    layers: Arc::clone(&self.layers),
                    headers,
                }));
            }
            Err(denial) => {
                let authenticate = &layers.authenticate;
                return ResponseFuture::done(refuse(
                    authenticate.reject(&request, denial),
                    headers,
                ));
            }
        }
        match layers.after(&request, &mut headers) {
            Ok(()) => ResponseFuture::forward(self.inner.call(request), headers),
            Err(refusal) => ResponseFuture::done(refusal),
        }
    }
}

/// A request waiting for the token store, with what it needs afterwards.
struct Pending<S, St, P, ReqBody> {
    lookup: TokenLookup,
    request: Request<ReqBody>,
    inner: S,
    layers: Arc<Layers<St, P>>,
    headers: Headers,
}

pin_project! {
    /// The response future of [`GateChecks`].
    pub struct ResponseFuture<S, St, P, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, St, P, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, St, P, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Forward {
            #[pin]
            future: S::Future,
            headers: Headers,
        },
        // A cache miss. Boxed: only misses pay for the request and the
        // service it holds.
        Lookup {
            pending: Option<Box<Pending<S, St, P, ReqBody>>>,
        },
        // A refusal. Boxed: refusals are the cold path.
        Done {
            response: Option<Refusal<ResBody>>,
        },
    }
}

impl<S, St, P, ReqBody, ResBody> ResponseFuture<S, St, P, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn forward(future: S::Future, headers: Headers) -> Self {
        Self {
            kind: Kind::Forward { future, headers },
        }
    }

    fn lookup(pending: Box<Pending<S, St, P, ReqBody>>) -> Self {
        Self {
            kind: Kind::Lookup {
                pending: Some(pending),
            },
        }
    }

    fn done(response: Refusal<ResBody>) -> Self {
        Self {
            kind: Kind::Done {
                response: Some(response),
            },
        }
    }
}

impl<S, St, P, ReqBody, ResBody> Future for ResponseFuture<S, St, P, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: TokenStore,
    P: ScopeLookup,
{
    type Output = Result<Response<GateBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Forward { future, headers } => {
                    let mut response = ready!(future.poll(cx))?.map(GateBody::new);
                    std::mem::take(headers).apply(&mut response);
                    return Poll::Ready(Ok(response));
                }
                KindProj::Done { response } => return Poll::Ready(Ok(take_refusal(response))),
                KindProj::Lookup { pending } => {
                    let Some(waiting) = pending.as_mut() else {
                        // Polled again after completion: fail closed.
                        return Poll::Ready(Ok(fail_closed()));
                    };
                    let verdict = ready!(Pin::new(&mut waiting.lookup).poll(cx));
                    match pending.take().map(|boxed| *boxed) {
                        Some(Pending {
                            mut request,
                            mut inner,
                            layers,
                            mut headers,
                            ..
                        }) => match layers.authenticate.admit(&mut request, verdict) {
                            Ok(expiry) => {
                                headers.expiry = expiry;
                                match layers.after(&request, &mut headers) {
                                    Ok(()) => Kind::Forward {
                                        future: inner.call(request),
                                        headers,
                                    },
                                    Err(refusal) => Kind::Done {
                                        response: Some(refusal),
                                    },
                                }
                            }
                            Err(denial) => Kind::Done {
                                response: Some(refuse(
                                    layers.authenticate.reject(&request, denial),
                                    headers,
                                )),
                            },
                        },
                        None => Kind::Done { response: None },
                    }
                }
            };
            kind.set(next);
        }
    }
}

impl<S, St, P, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, St, P, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
