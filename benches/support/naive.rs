//! The stack one would write by hand, as a peer for the benches: SHA-256
//! of the bearer token, a moka lookup of its scopes, governor's keyed
//! limiter, a linear scan of the deny CIDRs, and a `tracing::info!` as the
//! audit record. Shared by `benches/stack.rs` (in process) and the
//! `bench-notes` server of `benches/e2e.sh` (end to end).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokengate::check::{Check, CheckService, NoWait, Refusal, Verdict};
use tokengate::core::ClientIp;

/// Token hash to the token's scopes.
pub(crate) type Tokens = moka::sync::Cache<[u8; 32], Arc<Vec<String>>>;

/// The hand-written decisions, run in front of an inner service by
/// tokengate's generic [`CheckService`] (the service and its future are
/// not what the baseline measures).
#[derive(Clone)]
pub(crate) struct Naive {
    pub(crate) tokens: Tokens,
    pub(crate) limiter: Arc<governor::DefaultKeyedRateLimiter<[u8; 32]>>,
    pub(crate) deny: Arc<Vec<IpNet>>,
}

impl Naive {
    /// The hand-written stack around `inner`.
    pub(crate) fn around<S>(self, inner: S) -> CheckService<Naive, S> {
        CheckService::new(self, inner)
    }

    fn decide<B>(&self, request: &Request<B>) -> Result<(), StatusCode> {
        let ip = ClientIp::of(request.extensions()).map(|c| c.addr());
        if ip.is_none_or(|ip| self.deny.iter().any(|net| net.contains(&ip))) {
            return Err(StatusCode::FORBIDDEN);
        }
        let token = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(StatusCode::UNAUTHORIZED)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let scopes = self.tokens.get(&hash).ok_or(StatusCode::UNAUTHORIZED)?;
        if self.limiter.check_key(&hash).is_err() {
            return Err(StatusCode::TOO_MANY_REQUESTS);
        }
        if !scopes.iter().any(|s| s == "notes:read") {
            return Err(StatusCode::FORBIDDEN);
        }
        tracing::info!(
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            client.address = ?ip,
            "audit"
        );
        Ok(())
    }
}

impl<B> Check<B> for Naive {
    type Admit = ();
    type Wait = NoWait;

    fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
        match self.decide(request) {
            Ok(()) => Verdict::Admit(()),
            Err(status) => {
                let mut refused = Response::new(Bytes::new());
                *refused.status_mut() = status;
                Verdict::Refuse(Refusal::new(refused))
            }
        }
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}

/// The scopes of `token` as the naive stack keys them.
pub(crate) fn remember(tokens: &Tokens, token: &str, scopes: Vec<String>) {
    tokens.insert(Sha256::digest(token.as_bytes()).into(), Arc::new(scopes));
}
