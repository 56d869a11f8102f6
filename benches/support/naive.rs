//! The stack one would write by hand, as a peer for the benches: SHA-256
//! of the bearer token, a moka lookup of its scopes, governor's keyed
//! limiter, a linear scan of the deny CIDRs, and a `tracing::info!` as the
//! audit record. Shared by `benches/stack.rs` (in process) and the
//! `bench-notes` server of `benches/e2e.sh` (end to end).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokengate::{ClientIp, Decided, GateBody};
use tower::Service;

/// Token hash to the token's scopes.
pub(crate) type Tokens = moka::sync::Cache<[u8; 32], Arc<Vec<String>>>;

/// The hand-written stack around `inner`.
#[derive(Clone)]
pub(crate) struct Naive<S> {
    pub(crate) inner: S,
    pub(crate) tokens: Tokens,
    pub(crate) limiter: Arc<governor::DefaultKeyedRateLimiter<[u8; 32]>>,
    pub(crate) deny: Arc<Vec<IpNet>>,
}

impl<S, B, RB> Service<Request<B>> for Naive<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<GateBody<RB>>;
    type Error = S::Error;
    type Future = Decided<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let refuse = |status: StatusCode| {
            let mut r = Response::new(GateBody::empty());
            *r.status_mut() = status;
            Decided::reject(r)
        };
        let ip = request.extensions().get::<ClientIp>().map(|c| c.addr());
        if ip.is_none_or(|ip| self.deny.iter().any(|net| net.contains(&ip))) {
            return refuse(StatusCode::FORBIDDEN);
        }
        let Some(token) = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return refuse(StatusCode::UNAUTHORIZED);
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(scopes) = self.tokens.get(&hash) else {
            return refuse(StatusCode::UNAUTHORIZED);
        };
        if self.limiter.check_key(&hash).is_err() {
            return refuse(StatusCode::TOO_MANY_REQUESTS);
        }
        if !scopes.iter().any(|s| s == "notes:read") {
            return refuse(StatusCode::FORBIDDEN);
        }
        tracing::info!(
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            client.address = ?ip,
            "audit"
        );
        Decided::forward(self.inner.call(request))
    }
}

/// The scopes of `token` as the naive stack keys them.
pub(crate) fn remember(tokens: &Tokens, token: &str, scopes: Vec<String>) {
    tokens.insert(Sha256::digest(token.as_bytes()).into(), Arc::new(scopes));
}
