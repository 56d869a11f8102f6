//! `ClientIpLayer`: who the client is, through trusted proxies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use tokengate_core::{ClientIp, Decided, Denial, GateBody, IpReason, Renderer, RequestTrail};
use tower::{Layer, Service};

use crate::forwarded::{ForwardedHeader, Walk, walk};
use crate::set::{CidrError, IpSet};

/// The peer address of the connection, for servers that insert it
/// themselves (plain hyper: insert `PeerAddr(remote_addr)` into each
/// request's extensions when accepting the connection). axum and tonic
/// servers use [`ClientIpLayer::peer_source`] with the facade's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the peer address from a request's extensions.
pub type PeerSource = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// Resolves the client address and inserts it as
/// [`ClientIp`](tokengate_core::ClientIp) for every later layer.
///
/// The peer address is the client unless it is a trusted proxy; then the
/// forwarding header is walked right to left and the first untrusted
/// address is the client (see [`walk`](crate::forwarded::walk)). A request
/// whose trusted chain holds a malformed entry is refused with 403 (reason
/// `ip_unresolved`): fail closed. A request with no peer address at all is
/// the server's set-up, not the client's fault: it gets 500 (reason
/// `no_peer_address`), and the first one logs an error naming the fix.
#[derive(Clone)]
pub struct ClientIpLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    trusted: IpSet,
    header: ForwardedHeader,
    peer: PeerSource,
    /// Whether `peer` was chosen by the user (not the default).
    peer_chosen: bool,
    renderer: Renderer,
    /// Whether a request without a peer address was logged already.
    told_no_peer: Arc<AtomicBool>,
}

impl fmt::Debug for ClientIpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIpLayer")
            .field("trusted", &self.config.trusted)
            .field("header", &self.config.header)
            .finish_non_exhaustive()
    }
}

fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<PeerAddr>().map(|p| p.0.ip())
}

impl ClientIpLayer {
    /// Trusts no proxy: the peer address is the client.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                trusted: IpSet::new(),
                header: ForwardedHeader::XForwardedFor,
                peer: Arc::new(peer_addr),
                peer_chosen: false,
                renderer: Renderer::default(),
                told_no_peer: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// Trusts the proxies in `networks` (CIDR text); the error names the
    /// first bad one.
    pub fn trusted_proxies<I>(networks: I) -> Result<Self, CidrError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let trusted = IpSet::parse(networks)?;
        Ok(Self::new().with(|c| c.trusted = trusted))
    }

    fn with(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// Reads the chain from `header` (default `X-Forwarded-For`).
    pub fn header(self, header: ForwardedHeader) -> Self {
        self.with(|c| c.header = header)
    }

    /// Reads the peer address with `source` (default: the [`PeerAddr`] extension).
    pub fn peer_source(
        self,
        source: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        let source: PeerSource = Arc::new(source);
        self.with(|c| {
            c.peer = source;
            c.peer_chosen = true;
        })
    }

    /// Reads the peer address with `source` unless [`peer_source`](Self::peer_source)
    /// chose one: for a composer (the facade's `Gate`) that knows where its
    /// framework keeps the connection's address.
    pub fn default_peer_source(
        self,
        source: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        if self.config.peer_chosen {
            return self;
        }
        let source: PeerSource = Arc::new(source);
        self.with(|c| c.peer = source)
    }

    /// Renders rejections with `renderer`.
    pub fn renderer(self, renderer: Renderer) -> Self {
        self.with(|c| c.renderer = renderer)
    }
}

impl Default for ClientIpLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ResolveClientIp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResolveClientIp {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`ClientIpLayer`] makes.
#[derive(Clone)]
pub struct ResolveClientIp<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ResolveClientIp<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolveClientIp")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResolveClientIp<S>
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match resolve(&self.config, &mut request) {
            Ok(_) => Decided::forward(self.inner.call(request)),
            Err(denial) => Decided::reject(self.config.renderer.reject(&request, denial)),
        }
    }
}

/// What the service decides: the address inserted and noted, or the
/// refusal of a request whose address cannot be resolved.
fn resolve<B>(config: &Config, request: &mut Request<B>) -> Result<ClientIp, Denial> {
    let resolved = (config.peer)(request.extensions())
        .map(|peer| walk(peer, &config.trusted, request.headers(), config.header));
    match resolved {
        Some(Walk::Client(addr)) => {
            let ip = ClientIp::new(addr);
            RequestTrail::note_client_ip(request.extensions(), ip);
            request.extensions_mut().insert(ip);
            Ok(ip)
        }
        Some(Walk::Malformed) => Err(Denial::IpForbidden(IpReason::Unresolved)),
        None => {
            if !config.told_no_peer.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "a request arrived without a peer address, so its client address cannot be \
                     determined; answering 500 until the server hands the connection's address to \
                     the layers: serve axum with `into_make_service_with_connect_info::<SocketAddr>()`, \
                     serve tonic over TCP (`TcpConnectInfo`), or insert `PeerAddr` into each request \
                     (plain hyper); or set `ClientIpLayer::peer_source` (logged once)"
                );
            }
            Err(Denial::NoPeerAddress)
        }
    }
}

impl ClientIpLayer {
    /// Decides `request` as this layer's service does, for a service that
    /// runs several layers' decisions itself (the facade's `Gate`): the
    /// client address, inserted as a [`ClientIp`] extension and noted in
    /// the request's trail, or the refusal to answer with
    /// [`ClientIpLayer::reject`].
    pub fn resolve<B>(&self, request: &mut Request<B>) -> Result<ClientIp, Denial> {
        resolve(&self.config, request)
    }

    /// The response this layer's service refuses `request` with.
    pub fn reject<B, R>(&self, request: &Request<B>, denial: Denial) -> Response<GateBody<R>> {
        self.config.renderer.reject(request, denial)
    }
}
