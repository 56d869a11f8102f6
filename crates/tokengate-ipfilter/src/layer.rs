//! The two layers' configuration: who the client is, and which addresses
//! may come in.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use http::Extensions;
use tokengate_check::{CheckService, Renderer};
use tower::Layer;

use crate::forwarded::ForwardedHeader;
use crate::rules::IpRules;
use crate::set::{CidrError, IpSet};

/// The peer address of the connection, for servers that insert it
/// themselves (plain hyper: insert `PeerAddr(remote_addr)` into each
/// request's extensions when accepting the connection). axum and tonic
/// servers use [`ResolveClientIpLayer::peer_source`] with the facade's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the peer address from a request's extensions.
pub type PeerSource = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// Resolves the client address and notes it in the request's
/// [`RequestTrail`](tokengate_core::RequestTrail) for every later layer
/// (read it with [`ClientIp::of`](tokengate_core::ClientIp::of)).
///
/// The peer address is the client unless it is a trusted proxy; then the
/// forwarding header is walked right to left and the first untrusted
/// address is the client (see [`walk`](crate::forwarded::walk)). A request
/// whose trusted chain holds a malformed entry is refused with 403 (reason
/// `ip_unresolved`): fail closed. A request with no peer address at all is
/// the server's set-up, not the client's fault: it gets 500 (reason
/// `no_peer_address`), and the first one logs an error naming the fix.
#[derive(Clone)]
pub struct ResolveClientIpLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) trusted: IpSet,
    pub(crate) header: ForwardedHeader,
    pub(crate) peer: PeerSource,
    /// Whether `peer` was chosen by the user (not the default).
    pub(crate) peer_chosen: bool,
    pub(crate) renderer: Renderer,
    /// Whether a request without a peer address was logged already.
    pub(crate) told_no_peer: Arc<AtomicBool>,
}

impl fmt::Debug for ResolveClientIpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolveClientIpLayer")
            .field("trusted", &self.config.trusted)
            .field("header", &self.config.header)
            .finish_non_exhaustive()
    }
}

fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<PeerAddr>().map(|p| p.0.ip())
}

impl ResolveClientIpLayer {
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

impl Default for ResolveClientIpLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ResolveClientIpLayer {
    type Service = ResolveClientIp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("client_ip", self.clone(), inner)
    }
}

/// The service [`ResolveClientIpLayer`] makes.
pub type ResolveClientIp<S> = CheckService<ResolveClientIpLayer, S>;

/// Refuses requests whose [`ClientIp`](tokengate_core::ClientIp) the rules refuse (403, gRPC 7),
/// before any token work. A request without a client address is refused
/// (fail closed): put the client-IP layer first.
///
/// Clones share the rules; [`IpFilterLayer::replace`] swaps them for every
/// service at once, without a restart and without blocking requests.
#[derive(Clone)]
pub struct IpFilterLayer {
    pub(crate) rules: Arc<ArcSwap<IpRules>>,
    pub(crate) renderer: Renderer,
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

    /// Applies `rules` from the next request on, in every service made by
    /// this layer or its clones.
    pub fn replace(&self, rules: IpRules) {
        self.rules.store(Arc::new(rules));
    }
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("ip_filter", self.clone(), inner)
    }
}

/// The service [`IpFilterLayer`] makes.
pub type IpFilter<S> = CheckService<IpFilterLayer, S>;
