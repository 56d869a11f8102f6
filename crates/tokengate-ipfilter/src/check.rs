//! The two decisions: resolve the client address, then filter it.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use http::Request;
use tokengate_check::{Check, NoWait, Verdict};
use tokengate_core::{ClientIp, Denial, IpReason, RequestTrail};

use crate::forwarded::{Walk, walk};
use crate::layer::{Config, IpFilterLayer, ResolveClientIpLayer};

/// Notes the client address in the request's [`RequestTrail`] (inserted if
/// absent), where later layers read it with [`ClientIp::of`], or refuses a request whose address cannot be
/// resolved.
impl<B> Check<B> for ResolveClientIpLayer {
    type Admit = ();
    type Wait = NoWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
        match resolve(&self.config, request) {
            Ok(()) => Verdict::Admit(()),
            Err(denial) => Verdict::Refuse(self.config.renderer.refuse(request, denial)),
        }
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}

fn resolve<B>(config: &Config, request: &mut Request<B>) -> Result<(), Denial> {
    let peer = (config.peer)(request.extensions());
    let resolved = peer.map(|peer| walk(peer, &config.trusted, request.headers(), config.header));
    match resolved {
        Some(Walk::Client(addr)) => {
            let ip = ClientIp::new(addr);
            let extensions = request.extensions_mut();
            RequestTrail::note_client_ip(extensions, ip);
            if !config.trusted.is_empty() && peer.is_some_and(|peer| config.trusted.contains(peer))
            {
                RequestTrail::note_peer_trusted(extensions);
            }
            Ok(())
        }
        Some(Walk::Malformed) => Err(Denial::IpForbidden(IpReason::Unresolved)),
        None => {
            if !config.told_no_peer.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "a request arrived without a peer address, so its client address cannot be \
                     determined; answering 500 until the server hands the connection's address to \
                     the layers: serve axum with `into_make_service_with_connect_info::<SocketAddr>()`, \
                     serve tonic over TCP (`TcpConnectInfo`), or insert `PeerAddr` into each request \
                     (plain hyper); or set `ResolveClientIpLayer::peer_source` (logged once)"
                );
            }
            Err(Denial::NoPeerAddress)
        }
    }
}

/// Refuses a request whose [`ClientIp`] the rules refuse, or that has none.
impl<B> Check<B> for IpFilterLayer {
    type Admit = ();
    type Wait = NoWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
        let decided = match ClientIp::of(request.extensions()) {
            Some(ip) => self.rules.load().decide(ip.addr()),
            None => Err(IpReason::Unresolved),
        };
        match decided {
            Ok(()) => Verdict::Admit(()),
            Err(reason) => {
                Verdict::Refuse(self.renderer.refuse(request, Denial::IpForbidden(reason)))
            }
        }
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}
