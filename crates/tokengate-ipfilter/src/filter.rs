//! `IpFilterLayer`: global allow and deny sets, replaceable at runtime.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokengate_core::{ClientIp, Decided, Denial, GateBody, IpReason, Renderer};
use tower::{Layer, Service};

use crate::set::{CidrError, IpSet};

/// Which addresses pass. Deny always wins over allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRules {
    allow: Option<IpSet>,
    deny: IpSet,
}

impl IpRules {
    /// Every address passes except those in `deny`.
    pub fn deny_list<I>(deny: I) -> Result<Self, CidrError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self {
            allow: None,
            deny: IpSet::parse(deny)?,
        })
    }

    /// Only addresses in `allow` pass, and not those in `deny`. An empty
    /// allowlist lets nothing through.
    pub fn allow_list<A, D>(allow: A, deny: D) -> Result<Self, CidrError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        D: IntoIterator,
        D::Item: AsRef<str>,
    {
        Ok(Self {
            allow: Some(IpSet::parse(allow)?),
            deny: IpSet::parse(deny)?,
        })
    }

    /// The rules command-line flags describe: an allowlist when `allow`
    /// names any network, otherwise a deny list.
    pub fn from_lists<A, D>(allow: A, deny: D) -> Result<Self, CidrError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        D: IntoIterator,
        D::Item: AsRef<str>,
    {
        let allow: Vec<A::Item> = allow.into_iter().collect();
        if allow.is_empty() {
            Self::deny_list(deny)
        } else {
            Self::allow_list(allow, deny)
        }
    }

    /// Why `addr` is refused, if it is.
    pub fn check(&self, addr: IpAddr) -> Result<(), IpReason> {
        if self.deny.contains(addr) {
            return Err(IpReason::Denied);
        }
        match &self.allow {
            Some(allow) if !allow.contains(addr) => Err(IpReason::NotAllowed),
            _ => Ok(()),
        }
    }
}

/// Refuses requests whose [`ClientIp`] the rules refuse (403, gRPC 7),
/// before any token work. A request without a client address is refused
/// (fail closed): put the client-IP layer first.
///
/// Clones share the rules; [`IpFilterLayer::replace`] swaps them for every
/// service at once, without a restart and without blocking requests.
#[derive(Clone)]
pub struct IpFilterLayer {
    rules: Arc<ArcSwap<IpRules>>,
    renderer: Renderer,
}

impl fmt::Debug for IpFilterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpFilterLayer")
            .field("rules", &self.rules.load())
            .finish_non_exhaustive()
    }
}

impl IpFilterLayer {
    /// A filter applying `rules`.
    pub fn new(rules: IpRules) -> Self {
        Self {
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            renderer: Renderer::default(),
        }
    }

    /// Renders rejections with `renderer`.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Decides `request` as this layer's service does, for a service that
    /// runs several layers' decisions itself (the facade's `Gate`): the
    /// refusal to answer with [`IpFilterLayer::reject`], if any.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Denial> {
        match request.extensions().get::<ClientIp>() {
            Some(ip) => self.rules.load().check(ip.addr()),
            None => Err(IpReason::Unresolved),
        }
        .map_err(Denial::IpForbidden)
    }

    /// The response this layer's service refuses `request` with.
    pub fn reject<B, R>(&self, request: &Request<B>, denial: Denial) -> Response<GateBody<R>> {
        self.renderer.reject(request, denial)
    }

    /// Applies `rules` from the next request on, in every service made by
    /// this layer or its clones.
    pub fn replace(&self, rules: IpRules) {
        self.rules.store(Arc::new(rules));
    }
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IpFilter {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`IpFilterLayer`] makes.
#[derive(Clone)]
pub struct IpFilter<S> {
    inner: S,
    layer: IpFilterLayer,
}

impl<S: fmt::Debug> fmt::Debug for IpFilter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpFilter")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IpFilter<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = Decided<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.layer.check(&request) {
            Ok(()) => Decided::forward(self.inner.call(request)),
            Err(denial) => Decided::reject(self.layer.reject(&request, denial)),
        }
    }
}
