//! The `Gate`: every layer in the one order that is right.

use std::fmt;
use std::sync::Arc;

use tokengate_audit::{Audit, AuditLayer, AuditSink, TracingSink};
use tokengate_authenticate::{AuthenticateLayer, UseLimitLayer, VerifyToken};
use tokengate_check::{Chain, CheckService, Shield};
use tokengate_core::{CostFn, RateQuota};
use tokengate_ipfilter::{IpFilterLayer, IpRules, ResolveClientIpLayer};
use tokengate_rate::{
    Limiter, MemoryRateState, MissingKey, RateConfigError, RateLimitLayer, RateState,
};
use tokengate_scope::{EnforceScopeLayer, ScopeLookup};
use tower::Layer;

/// Every check of a [`Gate`] after audit, in order: client IP, IP filter,
/// then authenticate, per-token rate limit, scopes and the checks added
/// with [`Gate::with_check`] (`X`), all shielded by the per-IP rate limit
/// ([`Shield`]: charged only on a cache miss or a 4xx refusal), and last
/// the spend of a usage-limited token's use (outside the shield: it is an
/// authenticated token's, limited by its own quota).
pub type GateCheck<St, P, R = MemoryRateState, X = ()> = Chain<
    ResolveClientIpLayer,
    Chain<
        IpFilterLayer,
        Chain<
            Shield<
                RateLimitLayer<R>,
                Chain<VerifyToken<St>, Chain<RateLimitLayer<R>, Chain<EnforceScopeLayer<P>, X>>>,
            >,
            UseLimitLayer<St>,
        >,
    >,
>;

/// The service a [`Gate`] wraps around `S`: audit, then every other check
/// ([`GateCheck`]) run by one [`CheckService`], then `S`.
pub type GateService<S, St, P, K = TracingSink, R = MemoryRateState, X = ()> =
    Audit<CheckService<Arc<GateCheck<St, P, R, X>>, S>, K>;

/// Composes the layer order (ARCHITECTURE.md) from one configuration, so it cannot be
/// got wrong:
///
/// ```text
/// request -> audit -> client IP -> IP filter -> rate per client IP
///         -> authenticate -> rate per token -> scopes -> your checks
///         -> a usage-limited token's use spent -> your service
/// ```
///
/// A usage-limited token spends its use last ([`UseLimitLayer`]), so a
/// request refused for any other reason spends nothing.
///
/// Every layer stays usable on its own, and each is a
/// [`Check`](tokengate_check::Check): the gate fixes their order and runs
/// the seven after audit as one [`Chain`] in one [`CheckService`], with one
/// future and one body wrapper instead of six. It decides each request as
/// the layers stacked in this order would, with one difference: the
/// per-client-IP limit is a [`Shield`], charged only where it protects
/// something. A request whose token the cache knows, and a public route,
/// never touch it; a cache miss is charged before it reaches the store
/// (and refused with 429, the store untouched, once the address has spent
/// its quota), and so is every 4xx refusal (bad or missing tokens, a
/// missing scope, a spent token quota), so a flood of invalid tokens is
/// still answered with 429. A check of your
/// own joins with [`with_check`](Gate::with_check); a rate state that
/// answers later (a shared one) with [`rate_state`](Gate::rate_state).
///
/// ```
/// use tokengate::{AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, MemoryStore, Pepper, ScopePolicy, TokenHasher};
/// use tokengate::core::KeyId;
///
/// # fn build() -> Result<(), Box<dyn std::error::Error>> {
/// let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
/// let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
/// let policy = ScopePolicy::builder().read_write("/notes", "notes").build()?;
/// let gate = Gate::new(
///     AuthenticateLayer::new(cache, hasher, "notes".parse()?),
///     EnforceScopeLayer::new(policy),
/// );
/// let _service = tower::ServiceBuilder::new().layer(gate).service(tower::service_fn(
///     |_: http::Request<String>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) },
/// ));
/// # Ok(()) }
/// # build().unwrap();
/// ```
///
/// What the Gate does by itself: it finds the connection's address
/// ([`connection_peer`]; a request without one is the server's set-up
/// and gets 500 with one logged error naming the fix), treats every route
/// the policy declares [`Requirement::Public`](tokengate_scope::Requirement::Public)
/// as public to authentication too (one declaration is enough), and with
/// the `axum` feature redacts a query token from axum's `OriginalUri`.
///
/// # Nested axum routers
///
/// A Gate sees the path where it sits. Inside `Router::nest("/api", ...)`,
/// requests reach it with the prefix stripped, so the policy names
/// `/notes`; on the outer router it sees `/api/notes`:
///
/// ```text
/// Router::new().nest("/api", notes.layer(gate))   // policy: "/notes"
/// Router::new().nest("/api", notes).layer(gate)   // policy: "/api/notes"
/// ```
///
/// A policy written with full paths for a Gate inside the nest matches
/// nothing and denies everything (403). Both placements are tested with a
/// real server in `tests/axum_auth.rs`.
pub struct Gate<St, P, K = TracingSink, R = MemoryRateState, X = ()> {
    audit: AuditLayer<K>,
    parts: Parts<St, P, R>,
    extra: X,
}

/// The Gate's checks, moved as a whole by every builder method that
/// changes a type parameter.
struct Parts<St, P, R> {
    client_ip: ResolveClientIpLayer,
    ip_filter: IpFilterLayer,
    ip_rate: RateLimitLayer<R>,
    authenticate: AuthenticateLayer<St>,
    token_rate: RateLimitLayer<R>,
    scope: EnforceScopeLayer<P>,
    /// The policy's route costs (`None`: every request costs 1), given to
    /// `authenticate`'s use limit and to `token_rate`.
    cost: Option<CostFn>,
    /// Whether handlers get a [`Meter`](tokengate_core::Meter).
    late_charges: bool,
}

impl<St, P, R> Clone for Parts<St, P, R> {
    fn clone(&self) -> Self {
        Self {
            client_ip: self.client_ip.clone(),
            ip_filter: self.ip_filter.clone(),
            ip_rate: self.ip_rate.clone(),
            authenticate: self.authenticate.clone(),
            token_rate: self.token_rate.clone(),
            scope: self.scope.clone(),
            cost: self.cost.clone(),
            late_charges: self.late_charges,
        }
    }
}

impl<St, P, K, R, X: Clone> Clone for Gate<St, P, K, R, X> {
    fn clone(&self) -> Self {
        Self {
            audit: self.audit.clone(),
            parts: self.parts.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl<St, P: fmt::Debug, K, R: fmt::Debug, X> fmt::Debug for Gate<St, P, K, R, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.parts;
        f.debug_struct("Gate")
            .field("audit", &self.audit)
            .field("client_ip", &p.client_ip)
            .field("ip_filter", &p.ip_filter)
            .field("ip_rate", &p.ip_rate)
            .field("authenticate", &p.authenticate)
            .field("token_rate", &p.token_rate)
            .field("scope", &p.scope)
            .finish_non_exhaustive()
    }
}

/// The connection's peer address wherever the server put it: the
/// [`PeerAddr`](tokengate_ipfilter::PeerAddr) extension (plain hyper), and
/// with the `axum` feature axum's `ConnectInfo<SocketAddr>` (served with
/// `into_make_service_with_connect_info`), with the `tonic` feature tonic's
/// `TcpConnectInfo`. The Gate reads client addresses with it unless told
/// otherwise, so no `.client_ip(...)` call is needed to run it.
pub fn connection_peer(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    if let Some(peer) = extensions.get::<tokengate_ipfilter::PeerAddr>() {
        return Some(peer.0.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(peer) = crate::axum::peer_addr(extensions) {
        return Some(peer);
    }
    #[cfg(feature = "tonic")]
    if let Some(peer) = crate::tonic::peer_addr(extensions) {
        return Some(peer);
    }
    None
}

fn quota(count: u32, secs: u64, burst: u32) -> RateQuota {
    let n = |v: u32| std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN);
    RateQuota::new(n(count), std::time::Duration::from_secs(secs), n(burst))
        .unwrap_or_else(|_| unreachable!("a one-second period is valid"))
}

impl<St, P: ScopeLookup> Gate<St, P, TracingSink> {
    /// A gate with `authenticate` and `scope`, and defaults for the rest:
    /// audit to `tracing`, the peer address as the client (no trusted
    /// proxy; the peer found by [`connection_peer`]), no IP rules, 100
    /// requests per second per client address (burst 200) before
    /// authentication, and 50 per second per token (burst 100) unless the
    /// token carries its own quota.
    pub fn new(authenticate: AuthenticateLayer<St>, scope: EnforceScopeLayer<P>) -> Self {
        // axum's router copies the URI before any layer runs: a token
        // accepted from the query must leave that copy too.
        #[cfg(feature = "axum")]
        let authenticate = authenticate.redact_uri_copy(crate::axum::original_uri);
        // One declaration is enough: what the policy calls public needs no
        // token either.
        let policy = scope.clone();
        let authenticate =
            authenticate.also_public(move |method: &http::Method, uri: &http::Uri| {
                policy.is_public(method, uri.path())
            });
        // A route's cost in the policy is charged to the token's quotas
        // and uses alike.
        let cost = scope.cost_fn();
        let authenticate = authenticate.cost_fn(cost.clone());
        Self {
            audit: AuditLayer::new(TracingSink),
            parts: Parts {
                client_ip: ResolveClientIpLayer::new().default_peer_source(connection_peer),
                ip_filter: IpFilterLayer::new(
                    IpRules::deny_list(Vec::<&str>::new())
                        .unwrap_or_else(|_| unreachable!("no rule to refuse")),
                ),
                // The per-token limiter's headers are the ones clients act on.
                ip_rate: RateLimitLayer::per_client_ip(quota(100, 1, 200)).success_headers(false),
                authenticate,
                // Public routes carry no token: skip them rather than refuse.
                token_rate: RateLimitLayer::per_token(quota(50, 1, 100))
                    .missing_key(MissingKey::Skip)
                    .cost_fn(cost.clone()),
                scope,
                cost,
                late_charges: false,
            },
            extra: (),
        }
    }
}

impl<St, P, K, R: RateState + Clone, X> Gate<St, P, K, R, X> {
    /// Limits requests per client address before authentication with
    /// `quota`, in the Gate's rate state (given before or after).
    pub fn pre_auth_quota(mut self, quota: RateQuota) -> Self {
        let limiter = [Limiter::per_client_ip(quota)];
        self.parts.ip_rate = match self.parts.ip_rate.with_limiters(limiter) {
            Ok(layer) => layer,
            Err(_) => unreachable!("one built-in limiter is a valid configuration"),
        };
        self
    }

    /// Replaces the per-token limiter (the token's own quota still wins);
    /// it keeps its state in the Gate's rate state (given before or after).
    pub fn token_rate(mut self, layer: RateLimitLayer) -> Self {
        let state = self.parts.token_rate.rate_state().clone();
        let layer = layer.state(state);
        // The policy's costs win over the layer's own.
        let layer = match &self.parts.cost {
            Some(cost) => layer.cost_fn(Some(cost.clone())),
            None => layer,
        };
        self.parts.token_rate = layer.late_charges(self.parts.late_charges);
        self
    }

    /// A per-token default `quota` and a per-owner `owner_quota`, checked
    /// together, in the Gate's rate state (given before or after).
    pub fn token_and_owner_quota(
        mut self,
        quota: RateQuota,
        owner_quota: RateQuota,
    ) -> Result<Self, RateConfigError> {
        let limiters = [Limiter::per_token(quota), Limiter::per_owner(owner_quota)];
        self.parts.token_rate = self.parts.token_rate.with_limiters(limiters)?;
        Ok(self)
    }

    /// Lets handlers charge more after the fact, where the cost is known
    /// only then: each request the Gate admits with a token carries a
    /// [`Meter`](tokengate_core::Meter) in its extensions, charging the
    /// same per-token and per-owner quotas and the same uses as the
    /// route's cost, all or nothing, with the same guarantees across
    /// instances. Off by default (it costs two small allocations per
    /// admitted request).
    pub fn late_charges(mut self) -> Self {
        self.parts.late_charges = true;
        self.parts.token_rate = self.parts.token_rate.late_charges(true);
        self.parts.authenticate = self.parts.authenticate.late_charges(true);
        self
    }

    /// Keeps both rate limits' state in `state` (a shared backend, say)
    /// instead of process memory; the quotas may come before or after.
    pub fn rate_state<R2: RateState + Clone>(self, state: R2) -> Gate<St, P, K, R2, X> {
        let p = self.parts;
        Gate {
            audit: self.audit,
            parts: Parts {
                client_ip: p.client_ip,
                ip_filter: p.ip_filter,
                ip_rate: p.ip_rate.state(state.clone()),
                authenticate: p.authenticate,
                token_rate: p.token_rate.state(state),
                scope: p.scope,
                cost: p.cost,
                late_charges: p.late_charges,
            },
            extra: self.extra,
        }
    }

    /// Reads time from `clock` in the rate layers (authenticate has its own setting).
    pub fn clock(mut self, clock: tokengate_core::SharedClock) -> Self {
        self.parts.ip_rate = self.parts.ip_rate.clock(clock.clone());
        self.parts.token_rate = self.parts.token_rate.clock(clock);
        self
    }
}

impl<St, P, K, R, X> Gate<St, P, K, R, X> {
    /// Audits into `sink`.
    pub fn audit<K2: AuditSink>(self, audit: AuditLayer<K2>) -> Gate<St, P, K2, R, X> {
        Gate {
            audit,
            parts: self.parts,
            extra: self.extra,
        }
    }

    /// Runs `check` after the scopes, before your service: a
    /// [`Check`](tokengate_check::Check) of your own (a required header,
    /// say), with the Gate's order, audit record and headers.
    pub fn with_check<C>(self, check: C) -> Gate<St, P, K, R, Chain<X, C>> {
        Gate {
            audit: self.audit,
            parts: self.parts,
            extra: Chain::new(self.extra, check),
        }
    }

    /// Spends usage-limited tokens' uses from leases in `counter` (e.g.
    /// [`RedisRateState::uses`](https://docs.rs/tokengate-redis)), one
    /// store write per lease instead of per request; see
    /// [`AuthenticateLayer::shared_uses`].
    pub fn shared_uses(mut self, counter: Arc<dyn tokengate_store::SharedUses>) -> Self {
        self.parts.authenticate = self.parts.authenticate.shared_uses(counter);
        self
    }

    /// Checks DPoP proofs as `dpop` says ([`AuthenticateLayer::dpop`]), or
    /// reads no DPoP with `None` ([`AuthenticateLayer::no_dpop`]).
    pub fn dpop(mut self, dpop: Option<crate::authenticate::Dpop>) -> Self {
        self.parts.authenticate = match dpop {
            Some(dpop) => self.parts.authenticate.dpop(dpop),
            None => self.parts.authenticate.no_dpop(),
        };
        self
    }

    /// Records DPoP proofs seen in `record` too (e.g.
    /// [`RedisRateState::replay`](https://docs.rs/tokengate-redis)), so a
    /// proof replayed at another instance is refused there; see
    /// [`Dpop::shared_replay`](crate::authenticate::Dpop::shared_replay). Nothing
    /// changes when the authenticate layer reads no DPoP.
    pub fn shared_replay(mut self, record: Arc<dyn tokengate_store::SharedReplay>) -> Self {
        if let Some(dpop) = self.parts.authenticate.dpop_settings().cloned() {
            self.parts.authenticate = self.parts.authenticate.dpop(dpop.shared_replay(record));
        }
        self
    }

    /// Resolves client addresses with `layer` (trusted proxies, peer
    /// source). Unless the layer chose a peer source, the Gate's own finds
    /// the connection's address ([`connection_peer`]).
    pub fn client_ip(mut self, layer: ResolveClientIpLayer) -> Self {
        self.parts.client_ip = layer.default_peer_source(connection_peer);
        self
    }

    /// Filters client addresses with `layer`.
    pub fn ip_filter(mut self, layer: IpFilterLayer) -> Self {
        self.parts.ip_filter = layer;
        self
    }

    /// The IP filter, to replace its rules at runtime.
    pub fn ip_filter_handle(&self) -> &IpFilterLayer {
        &self.parts.ip_filter
    }

    /// The checks after audit, in order, as one.
    pub fn checks(&self) -> GateCheck<St, P, R, X>
    where
        X: Clone,
    {
        let p = &self.parts;
        let shielded = Chain::new(
            p.authenticate.verify_token(),
            Chain::new(
                p.token_rate.clone(),
                Chain::new(p.scope.clone(), self.extra.clone()),
            ),
        );
        Chain::new(
            p.client_ip.clone(),
            Chain::new(
                p.ip_filter.clone(),
                Chain::new(
                    Shield::new(p.ip_rate.clone(), shielded),
                    p.authenticate.use_limit(),
                ),
            ),
        )
    }
}

impl<S, St, P, K, R, X: Clone> Layer<S> for Gate<St, P, K, R, X> {
    type Service = GateService<S, St, P, K, R, X>;

    fn layer(&self, inner: S) -> Self::Service {
        self.audit
            .layer(CheckService::named("gate", Arc::new(self.checks()), inner))
    }
}
