//! The one request extension for what the layers learn about a request.
//!
//! A [`RequestTrail`] holds the client address, the principal, the
//! denial and the rate state's fallback, each written once. The layers that need the client address read
//! it from here ([`ClientIp::of`]); the audit layer, which sits outermost
//! and never sees the extensions inner layers add, puts the trail in first,
//! keeps a handle and reads the rest once the response is done. Denials
//! additionally travel in the response's extensions. Without an audit layer
//! the client-address layer inserts the trail itself, and the principal and
//! denial notes are no-ops, so layers work alone. The verified
//! [`Principal`] is also its own extension, for handlers and extractors.
//!
//! The layer that puts the trail in may keep state of its own in the same
//! allocation ([`RequestTrail::with_attachment`]): the audit layer keeps
//! its record there, so a request costs one allocation for both.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use http::Extensions;

use crate::denial::{Denial, RateFallback};
use crate::principal::{ClientIp, Principal};

/// What the layers of one request decided. Cheap to clone; clones share it.
///
/// Each fact is written at most once: the first layer to note a principal,
/// client address or denial wins, so an inner layer cannot overwrite what an
/// outer one decided.
#[derive(Clone)]
pub struct RequestTrail {
    inner: Arc<Inner<dyn Any + Send + Sync>>,
}

struct Inner<X: ?Sized> {
    client_ip: OnceLock<ClientIp>,
    principal: OnceLock<Principal>,
    denial: OnceLock<Denial>,
    rate_fallback: OnceLock<RateFallback>,
    /// Set when the peer is a trusted proxy.
    peer_trusted: OnceLock<()>,
    /// What the layer that made the trail keeps beside it.
    attachment: X,
}

impl Default for RequestTrail {
    fn default() -> Self {
        Self::with_attachment(())
    }
}

impl RequestTrail {
    /// An empty trail.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty trail holding `attachment` in the same allocation, for the
    /// layer that makes the trail to keep its own per-request state in
    /// ([`attachment`](Self::attachment) reads it back through any handle).
    pub fn with_attachment<X: Any + Send + Sync>(attachment: X) -> Self {
        let inner: Arc<Inner<X>> = Arc::new(Inner {
            client_ip: OnceLock::new(),
            principal: OnceLock::new(),
            denial: OnceLock::new(),
            rate_fallback: OnceLock::new(),
            peer_trusted: OnceLock::new(),
            attachment,
        });
        Self { inner }
    }

    /// The trail's attachment, if it is an `X`
    /// ([`with_attachment`](Self::with_attachment)).
    pub fn attachment<X: Any>(&self) -> Option<&X> {
        (&self.inner.attachment as &dyn Any).downcast_ref()
    }

    /// Notes the client address in the trail found in `extensions`,
    /// inserting an empty trail first if there is none: the client address
    /// lives only here, so layers after the one that resolved it find it
    /// with [`ClientIp::of`] whether or not an audit layer put a trail in.
    pub fn note_client_ip(extensions: &mut Extensions, ip: ClientIp) {
        let trail = extensions.get_or_insert_default::<Self>();
        let _ = trail.inner.client_ip.set(ip);
    }

    /// Notes the verified principal in the trail found in `extensions`, if any.
    pub fn note_principal(extensions: &Extensions, principal: &Principal) {
        if let Some(trail) = extensions.get::<Self>() {
            let _ = trail.inner.principal.set(principal.clone());
        }
    }

    /// Notes a denial in the trail found in `extensions`, if any.
    pub fn note_denial(extensions: &Extensions, denial: &Denial) {
        if let Some(trail) = extensions.get::<Self>() {
            let _ = trail.inner.denial.set(denial.clone());
        }
    }

    /// Notes, in the trail found in `extensions` if any, that a shared
    /// rate state could not be reached and `fallback` decided the request
    /// (admitted; a refusal says so in its denial).
    pub fn note_rate_fallback(extensions: &Extensions, fallback: RateFallback) {
        if let Some(trail) = extensions.get::<Self>() {
            let _ = trail.inner.rate_fallback.set(fallback);
        }
    }

    /// Notes, in the trail found in `extensions` (inserted if there is
    /// none), that the request's peer is a trusted proxy: what it says in
    /// forwarding headers (`X-Forwarded-Proto`, `Client-Cert`, ...) may be
    /// believed. Only the client-IP layer, which knows the trusted
    /// proxies, notes it.
    pub fn note_peer_trusted(extensions: &mut Extensions) {
        let trail = extensions.get_or_insert_default::<Self>();
        let _ = trail.inner.peer_trusted.set(());
    }

    /// Whether the request's peer is a trusted proxy (`false` without the
    /// client-IP layer: no proxy is trusted then).
    pub fn peer_trusted(extensions: &Extensions) -> bool {
        extensions
            .get::<Self>()
            .is_some_and(|trail| trail.inner.peer_trusted.get().is_some())
    }

    /// The client address, if a layer resolved one.
    pub fn client_ip(&self) -> Option<ClientIp> {
        self.inner.client_ip.get().copied()
    }

    /// The principal, if a token was verified.
    pub fn principal(&self) -> Option<&Principal> {
        self.inner.principal.get()
    }

    /// The denial, if a layer refused the request.
    pub fn denial(&self) -> Option<&Denial> {
        self.inner.denial.get()
    }
}

impl ClientIp {
    /// The request's client address, as noted in its [`RequestTrail`] by
    /// the layer that resolved it (`ResolveClientIpLayer`), or `None`
    /// before that layer or without it.
    pub fn of(extensions: &Extensions) -> Option<Self> {
        extensions.get::<RequestTrail>()?.client_ip()
    }
}

/// What a request's trail holds once the request is done, taken out of it
/// by [`RequestTrail::into_facts`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TrailFacts {
    /// The client address, if a layer resolved one.
    pub client_ip: Option<ClientIp>,
    /// The principal, if a token was verified.
    pub principal: Option<Principal>,
    /// The denial, if a layer refused the request.
    pub denial: Option<Denial>,
    /// The rate state's fallback, if it admitted the request.
    pub rate_fallback: Option<RateFallback>,
}

impl RequestTrail {
    /// The facts noted so far, taken out of the trail: moved out when this
    /// is its last handle (the usual case once the request has been
    /// handled, and then the trail is freed here, on the caller's
    /// thread), cloned otherwise. Notes made through other handles later
    /// are not in them.
    pub fn into_facts(mut self) -> TrailFacts {
        self.take_facts()
    }

    /// The facts noted so far, as [`into_facts`](Self::into_facts) gives
    /// them, keeping the trail (and its attachment): moved out when this
    /// is its last handle, cloned otherwise.
    pub fn take_facts(&mut self) -> TrailFacts {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => TrailFacts {
                client_ip: inner.client_ip.take(),
                principal: inner.principal.take(),
                denial: inner.denial.take(),
                rate_fallback: inner.rate_fallback.take(),
            },
            None => {
                let shared = &self.inner;
                TrailFacts {
                    client_ip: shared.client_ip.get().copied(),
                    principal: shared.principal.get().cloned(),
                    denial: shared.denial.get().cloned(),
                    rate_fallback: shared.rate_fallback.get().copied(),
                }
            }
        }
    }
}

impl fmt::Debug for RequestTrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTrail")
            .field("client_ip", &self.client_ip())
            .field("principal", &self.principal().map(Principal::token_id))
            .field("denial", &self.denial())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_reach_the_trail_and_first_note_wins() {
        let trail = RequestTrail::new();
        let mut extensions = Extensions::new();
        extensions.insert(trail.clone());
        RequestTrail::note_denial(&extensions, &Denial::MissingToken);
        RequestTrail::note_denial(&extensions, &Denial::StoreUnavailable);
        let ip = ClientIp::new("192.0.2.1".parse().unwrap());
        RequestTrail::note_client_ip(&mut extensions, ip);
        RequestTrail::note_client_ip(&mut extensions, ClientIp::new("192.0.2.2".parse().unwrap()));
        assert_eq!(ClientIp::of(&extensions), Some(ip));
        assert_eq!(trail.denial(), Some(&Denial::MissingToken));
        assert_eq!(trail.client_ip(), Some(ip));
        assert!(trail.principal().is_none());
    }

    #[test]
    fn facts_come_out_of_the_last_handle_and_out_of_a_shared_one() {
        let trail = RequestTrail::new();
        let mut extensions = Extensions::new();
        extensions.insert(trail.clone());
        let ip = ClientIp::new("192.0.2.1".parse().unwrap());
        RequestTrail::note_client_ip(&mut extensions, ip);
        RequestTrail::note_denial(&extensions, &Denial::MissingToken);
        // Shared with the extensions: cloned out, the trail still holds them.
        let facts = trail.clone().into_facts();
        assert_eq!(facts.client_ip, Some(ip));
        assert_eq!(facts.denial, Some(Denial::MissingToken));
        assert!(facts.principal.is_none());
        assert_eq!(trail.denial(), Some(&Denial::MissingToken));
        // The last handle: moved out.
        drop(extensions);
        let facts = trail.into_facts();
        assert_eq!(facts.client_ip, Some(ip));
        assert_eq!(facts.denial, Some(Denial::MissingToken));
    }

    #[test]
    fn an_attachment_is_read_through_every_handle_and_kept_by_taking_facts() {
        let mut trail = RequestTrail::with_attachment(std::sync::Mutex::new(7u32));
        let mut extensions = Extensions::new();
        extensions.insert(trail.clone());
        let ip = ClientIp::new("192.0.2.1".parse().unwrap());
        RequestTrail::note_client_ip(&mut extensions, ip);
        let other = extensions.get::<RequestTrail>().unwrap();
        *other
            .attachment::<std::sync::Mutex<u32>>()
            .unwrap()
            .lock()
            .unwrap() += 1;
        assert!(
            other.attachment::<u32>().is_none(),
            "another type is not it"
        );
        assert!(
            RequestTrail::new()
                .attachment::<std::sync::Mutex<u32>>()
                .is_none()
        );
        drop(extensions);
        // The last handle: the facts move out, the attachment stays.
        let facts = trail.take_facts();
        assert_eq!(facts.client_ip, Some(ip));
        assert_eq!(trail.client_ip(), None, "moved out");
        let held = trail.attachment::<std::sync::Mutex<u32>>().unwrap();
        assert_eq!(*held.lock().unwrap(), 8);
    }

    #[test]
    fn noting_without_a_trail_does_nothing_but_a_client_address_inserts_one() {
        let mut extensions = Extensions::new();
        RequestTrail::note_denial(&extensions, &Denial::MissingToken);
        assert!(extensions.get::<RequestTrail>().is_none());
        assert_eq!(ClientIp::of(&extensions), None);
        let ip = ClientIp::new("192.0.2.9".parse().unwrap());
        RequestTrail::note_client_ip(&mut extensions, ip);
        assert_eq!(ClientIp::of(&extensions), Some(ip));
        // A denial noted after that reaches the inserted trail.
        RequestTrail::note_denial(&extensions, &Denial::MissingToken);
        let trail = extensions.get::<RequestTrail>().unwrap();
        assert_eq!(trail.denial(), Some(&Denial::MissingToken));
    }
}
