use std::fmt;
use std::sync::Arc;

use tokengate_check::{CheckService, Renderer};
use tokengate_core::{CostFn, ScopeRules};
use tower::Layer;

use crate::policy::ScopeLookup;
use crate::requirement::{Requirement, RequirementError};

/// Checks the [`Principal`](tokengate_core::Principal)'s scopes against a
/// [`ScopeLookup`]: a [`ScopePolicy`](crate::ScopePolicy) table for a whole
/// stack, or one [`Requirement`] per route ([`RequireScope`]).
///
/// Runs after the authenticate layer. No principal in the request (the
/// layer is misplaced, or the route is public): 401. No rule for the
/// request: 403. Scopes missing: 403 `insufficient_scope` naming them.
pub struct EnforceScopeLayer<P> {
    pub(crate) lookup: Arc<P>,
    pub(crate) rules: Arc<ScopeRules>,
    pub(crate) renderer: Renderer,
}

/// The per-route form: `RequireScope::all(["notes:write"])?` as an axum
/// `route_layer`.
pub type RequireScope = EnforceScopeLayer<Requirement>;

impl<P> Clone for EnforceScopeLayer<P> {
    fn clone(&self) -> Self {
        Self {
            lookup: Arc::clone(&self.lookup),
            rules: Arc::clone(&self.rules),
            renderer: self.renderer.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for EnforceScopeLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforceScopeLayer")
            .field("lookup", &self.lookup)
            .field("rules", &self.rules)
            .field("renderer", &self.renderer)
            .finish()
    }
}

impl<P: ScopeLookup> EnforceScopeLayer<P> {
    /// Whether the policy declares `method` on `path` public
    /// ([`Requirement::Public`]): no token needed.
    pub fn is_public(&self, method: &http::Method, path: &str) -> bool {
        matches!(
            self.lookup.requirement(method, path),
            Some(Requirement::Public)
        )
    }

    /// The policy's costs as a function of the request, for the rate and
    /// use-limit layers; `None` when every request costs 1.
    pub fn cost_fn(&self) -> Option<CostFn> {
        let lookup = Arc::clone(&self.lookup);
        self.lookup.has_costs().then(|| {
            let cost: CostFn = Arc::new(move |method: &http::Method, uri: &http::Uri| {
                lookup.cost(method, uri.path())
            });
            cost
        })
    }

    /// Enforces `lookup` with exact scope matching ([`ScopeRules::exact`]).
    pub fn new(lookup: P) -> Self {
        Self {
            lookup: Arc::new(lookup),
            rules: Arc::new(ScopeRules::exact()),
            renderer: Renderer::default(),
        }
    }

    /// Uses `rules` for implications (e.g. [`ScopeRules::standard`]).
    pub fn rules(mut self, rules: ScopeRules) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    /// Renders rejections with `renderer`.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
}

impl EnforceScopeLayer<Requirement> {
    /// Requires every scope of `scopes`.
    pub fn all<I>(scopes: I) -> Result<Self, RequirementError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::new(Requirement::all(scopes)?))
    }

    /// Requires one scope of `scopes`.
    pub fn any<I>(scopes: I) -> Result<Self, RequirementError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::new(Requirement::any(scopes)?))
    }

    /// Requires only a valid token.
    pub fn authenticated() -> Self {
        Self::new(Requirement::Authenticated)
    }
}

impl<S, P> Layer<S> for EnforceScopeLayer<P> {
    type Service = EnforceScope<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService::named("scope", self.clone(), inner)
    }
}

/// The service [`EnforceScopeLayer`] makes.
pub type EnforceScope<S, P> = CheckService<EnforceScopeLayer<P>, S>;
