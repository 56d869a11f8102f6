use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tokengate_cache::CachedStore;
use tokengate_check::{CheckService, Renderer};
use tokengate_core::{
    Audience, CostFn, SharedClock, SlotKey, SystemClock, TokenFormat, TokenHasher,
};
use tokengate_store::SharedUses;
use tower::Layer;

use crate::credential::{QuerySource, Sources};
use crate::dpop::{Dpop, DpopState};
use crate::public::IsPublic;
use crate::usage::UsageTracker;

/// The default name of the response header that tells a client when its
/// token expires (an IMF-fixdate, like `Expires`).
pub const TOKEN_EXPIRES: HeaderName = HeaderName::from_static("token-expires");

/// How close to its expiry a token must be before admitted responses carry
/// the expiry header, by default: 7 days. A client has a week of
/// warnings to rotate; before that, the header's bytes are not sent.
pub const TOKEN_EXPIRES_WITHIN: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Which audiences the layer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AudienceRule {
    /// Tokens must list this audience.
    Required(Audience),
    /// Any token of the store, whatever its audiences (explicit opt-out).
    Any,
}

/// The token's expiry (nanoseconds since the epoch) and its header value,
/// made once per cached token.
pub(crate) static EXPIRY_VALUE: SlotKey<Option<(u64, http::HeaderValue)>> = SlotKey::new();

/// Gives this crate's kept values their slots, before any request.
fn register_slots() {
    EXPIRY_VALUE.register();
}

/// Verifies bearer tokens and puts the [`Principal`](tokengate_core::Principal)
/// into request extensions; refuses everything else with a
/// [`Denial`](tokengate_core::Denial) response.
///
/// See the [crate docs](crate) for the checks, in order, and an example.
pub struct AuthenticateLayer<St> {
    pub(crate) config: Arc<Config<St>>,
}

pub(crate) struct Config<St> {
    pub(crate) verifier: CachedStore<St>,
    pub(crate) hasher: TokenHasher,
    pub(crate) format: TokenFormat,
    pub(crate) audience: AudienceRule,
    pub(crate) sources: Sources,
    pub(crate) public: Option<Arc<dyn IsPublic>>,
    pub(crate) renderer: Renderer,
    pub(crate) clock: SharedClock,
    pub(crate) expires_header: Option<HeaderName>,
    /// Send the expiry header only this close to expiry (`None`: always).
    pub(crate) expires_within: Option<Duration>,
    pub(crate) usage: Option<UsageTracker>,
    /// Counts admitted requests whose token is near its expiry.
    pub(crate) near_expiry: metrics::Counter,
    pub(crate) lookup_timeout: Duration,
    pub(crate) uri_copies: Vec<UriCopy>,
    /// Where usage-limited tokens' uses are leased, if not only in the store.
    pub(crate) shared_uses: Option<Arc<dyn SharedUses>>,
    /// How DPoP proofs are checked (`None`: the `DPoP` scheme is not read).
    pub(crate) dpop: Option<Arc<DpopState>>,
    /// The uses a request spends (`None`: 1).
    pub(crate) cost: Option<CostFn>,
    /// Put the uses' part of the request's [`Meter`](tokengate_core::Meter) in it.
    pub(crate) late_charges: bool,
}

/// Finds a copy of the request's URI that a framework keeps in the
/// request's extensions (axum's `OriginalUri`, say), for
/// [`AuthenticateLayer::redact_uri_copy`].
pub type UriCopy = fn(&mut http::Extensions) -> Option<&mut http::Uri>;

impl<St> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self {
            verifier: self.verifier.clone(),
            hasher: self.hasher.clone(),
            format: self.format.clone(),
            audience: self.audience.clone(),
            sources: self.sources.clone(),
            public: self.public.clone(),
            renderer: self.renderer.clone(),
            clock: Arc::clone(&self.clock),
            expires_header: self.expires_header.clone(),
            expires_within: self.expires_within,
            usage: self.usage.clone(),
            near_expiry: self.near_expiry.clone(),
            lookup_timeout: self.lookup_timeout,
            uri_copies: self.uri_copies.clone(),
            shared_uses: self.shared_uses.clone(),
            dpop: self.dpop.clone(),
            cost: self.cost.clone(),
            late_charges: self.late_charges,
        }
    }
}

impl<St> Clone for AuthenticateLayer<St> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<St> fmt::Debug for AuthenticateLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("AuthenticateLayer")
            .field("format", &c.format)
            .field("audience", &c.audience)
            .field("sources", &c.sources)
            .field("public", &c.public.is_some())
            .field("renderer", &c.renderer)
            .field("expires_header", &c.expires_header)
            .field("expires_within", &c.expires_within)
            .field("lookup_timeout", &c.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl<St> AuthenticateLayer<St> {
    /// A layer verifying `tg_` tokens through `verifier`, hashed with
    /// `hasher`, for the service named `audience`.
    ///
    /// Defaults: credentials only from `Authorization: Bearer`, no public
    /// routes, problem+json rejections in realm `tokengate`, the system
    /// clock, a `token-expires` response header in a token's last
    /// [7 days](TOKEN_EXPIRES_WITHIN), store lookups bounded by 3 seconds.
    pub fn new(verifier: CachedStore<St>, hasher: TokenHasher, audience: Audience) -> Self {
        register_slots();
        Self {
            config: Arc::new(Config {
                verifier,
                hasher,
                format: TokenFormat::default(),
                audience: AudienceRule::Required(audience),
                sources: Sources::default(),
                public: None,
                renderer: Renderer::default().dpop_challenge(Some(&Dpop::new().algs_text())),
                clock: SystemClock::shared(),
                expires_header: Some(TOKEN_EXPIRES),
                expires_within: Some(TOKEN_EXPIRES_WITHIN),
                usage: None,
                near_expiry: metrics::counter!(tokengate_core::metric_names::NEAR_EXPIRY),
                lookup_timeout: Duration::from_secs(3),
                uri_copies: Vec::new(),
                shared_uses: None,
                dpop: Some(Arc::new(Dpop::new().build())),
                cost: None,
                late_charges: false,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config<St>)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Accepts tokens whatever audiences they list. Segmentation is then up
    /// to you: prefer one audience per service.
    pub fn accept_any_audience(self) -> Self {
        self.with(|c| c.audience = AudienceRule::Any)
    }

    /// Accepts tokens of `format` (e.g. a custom prefix).
    pub fn format(self, format: TokenFormat) -> Self {
        self.with(|c| c.format = format)
    }

    /// Also reads the bare token from header `name` (e.g. `x-api-key`).
    pub fn header(self, name: HeaderName) -> Self {
        self.with(|c| c.sources.header = Some(name))
    }

    /// Also reads the token from query parameter `name`. Off by default:
    /// URLs end up in logs and browser history.
    ///
    /// When on, the parameter's value is replaced by `REDACTED` in the
    /// request's URI before the request goes on, so no inner layer or
    /// handler reads it from `Request::uri`. What this layer alone does
    /// **not** reach is a copy of the URI made before it ran: axum's router
    /// keeps one (`OriginalUri`) for every handler and logging layer, and
    /// that copy still holds the token unless it is named with
    /// [`redact_uri_copy`](Self::redact_uri_copy)
    /// (`tokengate::axum::original_uri`). The `tokengate` facade's `Gate`
    /// and `Deployment::authenticate` name axum's copy themselves under the
    /// `axum` feature; a layer built here with `AuthenticateLayer::new`
    /// does not know which framework it runs in.
    pub fn query_param(self, name: &str) -> Self {
        self.with(|c| c.sources.query = QuerySource::Accepted(name.into()))
    }

    /// Also redacts the token parameter from the copy of the URI that
    /// `copy` finds in the request's extensions. A framework may copy the
    /// URI before this layer runs (axum's router keeps `OriginalUri` for
    /// handlers and logging layers); every copy must lose the token, not
    /// only `Request::uri`. The `tokengate` facade's `Gate` adds axum's
    /// copy itself under its `axum` feature; with this layer alone, pass
    /// `tokengate::axum::original_uri`.
    pub fn redact_uri_copy(self, copy: UriCopy) -> Self {
        self.with(|c| c.uri_copies.push(copy))
    }

    /// Lets requests that `public` accepts pass without a credential.
    pub fn public(self, public: impl IsPublic) -> Self {
        let public: Arc<dyn IsPublic> = Arc::new(public);
        self.with(|c| c.public = Some(public))
    }

    /// Lets requests that `public` accepts pass too, besides those the
    /// routes set with [`public`](Self::public) accept.
    pub fn also_public(self, public: impl IsPublic) -> Self {
        let Some(earlier) = self.config.public.clone() else {
            return self.public(public);
        };
        self.public(move |method: &http::Method, uri: &http::Uri| {
            earlier.is_public(method, uri) || public.is_public(method, uri)
        })
    }

    /// Renders rejections with `renderer` (its `DPoP` challenge names the
    /// algorithms this layer accepts).
    pub fn renderer(self, renderer: Renderer) -> Self {
        self.with(|c| {
            let algs = c.dpop.as_ref().map(|d| d.options.algs_text());
            c.renderer = renderer.dpop_challenge(algs.as_deref());
        })
    }

    /// Checks DPoP proofs as `dpop` says (see [`Dpop`] for the checks).
    /// On by default with [`Dpop::new`]: a DPoP-bound token is accepted
    /// with its proof wherever this layer runs.
    pub fn dpop(self, dpop: Dpop) -> Self {
        let algs = dpop.algs_text();
        self.with(|c| {
            c.dpop = Some(Arc::new(dpop.build()));
            c.sources.dpop = true;
            c.renderer = c.renderer.clone().dpop_challenge(Some(&algs));
        })
    }

    /// Reads no `Authorization: DPoP` credential: a DPoP-bound token is
    /// then refused everywhere this layer runs (as a bearer token it is
    /// `dpop_bound_as_bearer`). Certificate-bound tokens are still checked.
    pub fn no_dpop(self) -> Self {
        self.with(|c| {
            c.dpop = None;
            c.sources.dpop = false;
            c.renderer = c.renderer.clone().dpop_challenge(None);
        })
    }

    /// The DPoP settings in force, if DPoP is read.
    pub fn dpop_settings(&self) -> Option<&Dpop> {
        self.config.dpop.as_deref().map(|d| &d.options)
    }

    /// Reads time from `clock` (expiry checks; the cache has its own).
    pub fn clock(self, clock: SharedClock) -> Self {
        self.with(|c| c.clock = clock)
    }

    /// Names the response header carrying the token's expiry, or turns it
    /// off with `None`.
    pub fn expires_header(self, name: Option<HeaderName>) -> Self {
        self.with(|c| c.expires_header = name)
    }

    /// Sends the expiry header only once the token expires within
    /// `window` ([7 days](TOKEN_EXPIRES_WITHIN) by default), or on every
    /// admitted response of an expiring token with `None`. Every byte a
    /// header adds is copied through the kernel on both sides; a client
    /// needs the expiry only when it is time to rotate.
    pub fn expires_header_within(self, window: Option<Duration>) -> Self {
        self.with(|c| c.expires_within = window)
    }

    /// Records each token's use in `tracker` (`last_used_at`, written behind).
    pub fn usage(self, tracker: UsageTracker) -> Self {
        self.with(|c| c.usage = Some(tracker))
    }

    /// Bounds a store lookup on a cache miss; past it the request gets 503.
    pub fn lookup_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.lookup_timeout = timeout)
    }

    /// Spends usage-limited tokens' uses from leases in `counter` (the
    /// Redis rate state's, shared by every instance), taking a batch from
    /// the store when a lease is empty: one store write per batch instead
    /// of per request. The store stays the count: a token never admits
    /// more than its uses; when the counter cannot answer, uses are spent
    /// in the store directly. See [`SharedUses`].
    pub fn shared_uses(self, counter: Arc<dyn SharedUses>) -> Self {
        self.with(|c| c.shared_uses = Some(counter))
    }

    /// Spends `cost(method, uri)` uses of a usage-limited token per
    /// request instead of one (see [`tokengate_core::cost`]): all of them
    /// in one atomic step of the store, or none and the request refused
    /// (`usage_exhausted`). A cost of 0 spends nothing. With a
    /// [shared counter](Self::shared_uses), a request costing more than
    /// one spends in the store directly (exact; uses leased to the counter
    /// stay there for requests of cost 1).
    pub fn cost_fn(self, cost: Option<CostFn>) -> Self {
        self.with(|c| c.cost = cost)
    }

    /// Lets handlers spend more uses after the fact: every admitted
    /// request of a usage-limited token gets the uses' part of the
    /// request's [`Meter`](tokengate_core::Meter) (in the store, in one
    /// atomic step, all or nothing: `usage_exhausted` when fewer are left).
    /// Off by default.
    pub fn late_charges(self, on: bool) -> Self {
        self.with(|c| c.late_charges = on)
    }
}

/// Stacked alone, the layer also spends the uses of usage-limited tokens
/// ([`UseLimitLayer`]) right after verifying them, so a limit holds
/// wherever the layer is used; a later layer's refusal has then spent the
/// use already (the Gate spends it after every other check instead).
impl<S, St> Layer<S> for AuthenticateLayer<St> {
    type Service = Authenticate<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("authenticate", self.clone(), inner)
    }
}

/// The service [`AuthenticateLayer`] makes: verification, then the spend
/// of a usage-limited token's use.
pub type Authenticate<S, St> = CheckService<AuthenticateLayer<St>, S>;

/// The authenticate layer's verification alone, without the spend of a
/// usage-limited token's use: for a chain that spends it elsewhere (the
/// Gate spends it last, with [`AuthenticateLayer::use_limit`]).
pub struct VerifyToken<St> {
    pub(crate) config: Arc<Config<St>>,
}

impl<St> Clone for VerifyToken<St> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<St> fmt::Debug for VerifyToken<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyToken").finish_non_exhaustive()
    }
}

/// Spends one use of a usage-limited token in the store, for every request
/// it admits: a token with `N` uses admits exactly `N` requests however
/// many instances and requests race (the store's step is atomic), then is
/// refused with [`Denial::UsageExhausted`](tokengate_core::Denial::UsageExhausted) until its next refill (429 and
/// `Retry-After`) or for good (403). An admitted response carries the
/// count left in `token-uses-remaining`. A token without a usage limit
/// costs one extension lookup and passes.
///
/// The store is the only count (no lease is kept here), so each admitted
/// request of a usage-limited token is one write to the store, and when
/// the store cannot answer within the authenticate layer's
/// [lookup timeout](AuthenticateLayer::lookup_timeout) the request is
/// refused with 503: a use is never granted uncounted (fail closed).
///
/// Made by [`AuthenticateLayer::use_limit`] and placed after every other
/// check, so a request refused for its scope, rate or address spends
/// nothing; the Gate puts it last. Stacked alone, [`AuthenticateLayer`]
/// spends the use itself, right after verifying the token.
pub struct UseLimitLayer<St> {
    pub(crate) config: Arc<Config<St>>,
}

impl<St> Clone for UseLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<St> fmt::Debug for UseLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UseLimitLayer")
            .field("timeout", &self.config.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl<St> AuthenticateLayer<St> {
    /// The verification alone ([`VerifyToken`]), for a chain that spends
    /// usage-limited tokens' uses elsewhere.
    pub fn verify_token(&self) -> VerifyToken<St> {
        VerifyToken {
            config: Arc::clone(&self.config),
        }
    }

    /// The check that spends the uses of usage-limited tokens, through this
    /// layer's store, clock, renderer and lookup timeout ([`UseLimitLayer`]).
    pub fn use_limit(&self) -> UseLimitLayer<St> {
        UseLimitLayer {
            config: Arc::clone(&self.config),
        }
    }
}

impl<S, St> Layer<S> for UseLimitLayer<St> {
    type Service = CheckService<UseLimitLayer<St>, S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("uses", self.clone(), inner)
    }
}
