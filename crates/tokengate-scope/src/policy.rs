use std::fmt;

use http::Method;
use tokengate_core::{Scope, ScopeError, ScopeSet};

use crate::requirement::Requirement;

/// Finds the requirement of a request; `None` means no rule covers it,
/// and the request is denied.
pub trait ScopeLookup: Send + Sync + 'static {
    /// The requirement for `method` on `path`.
    fn requirement(&self, method: &Method, path: &str) -> Option<&Requirement>;

    /// The route template `path` matched (`/notes/{id}`), for the
    /// request span's `http.route`; `None` where the lookup has no
    /// templates. Asked only while the span is recorded.
    fn route(&self, _path: &str) -> Option<&str> {
        None
    }

    /// What a request of `method` on `path` costs (see
    /// [`tokengate_core::cost`]): 1 unless the lookup says otherwise.
    fn cost(&self, _method: &Method, _path: &str) -> u32 {
        1
    }

    /// Whether any request costs other than 1 (when not, the Gate asks
    /// [`cost`](Self::cost) nothing).
    fn has_costs(&self) -> bool {
        false
    }
}

/// A single requirement covers every request it guards (per-route use).
impl ScopeLookup for Requirement {
    fn requirement(&self, _: &Method, _: &str) -> Option<&Requirement> {
        Some(self)
    }
}

/// A declarative table: (methods, path pattern) → requirement, with gRPC
/// methods as paths (`/pkg.Service/Method`, always `POST`).
///
/// Patterns use axum 0.8's syntax: `/notes`, `/notes/{id}`,
/// `/files/{*rest}`; static segments win over parameters, parameters over
/// catch-alls, whatever the order of declaration. Matching is on the raw
/// path: `/notes/` is not `/notes`.
///
/// Paths are the ones the layer sees where it sits: inside axum's
/// `Router::nest("/api", ...)` the prefix is already stripped (write
/// `/notes`), on the outer router it is not (write `/api/notes`).
///
/// **Deny by default**: a path no pattern matches, or a method the matched
/// pattern does not declare, gets 403. `HEAD` follows the `GET` rule of its
/// pattern unless `HEAD` is declared itself; `OPTIONS` is covered only
/// where declared (or by [`read_write`](ScopePolicyBuilder::read_write) and
/// [`any_method`](ScopePolicyBuilder::any_method)).
///
/// ```
/// use http::Method;
/// use tokengate_scope::{Requirement, ScopeLookup, ScopePolicy};
///
/// let policy = ScopePolicy::builder()
///     .read_write("/notes", "notes")
///     .route([Method::DELETE], "/notes/{id}", Requirement::all(["notes:admin"])?)
///     .grpc_method("/notes.v1.Notes/ListNotes", Requirement::all(["notes:read"])?)
///     .build()?;
/// assert_eq!(
///     policy.requirement(&Method::POST, "/notes"),
///     Some(&Requirement::all(["notes:write"])?)
/// );
/// assert!(policy.requirement(&Method::GET, "/notes/7").is_none(), "GET /notes/{{id}} was not declared");
/// assert!(policy.requirement(&Method::GET, "/admin").is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ScopePolicy {
    router: matchit::Router<usize>,
    routes: Vec<RouteRules>,
    has_costs: bool,
}

#[derive(Debug, Clone)]
struct RouteRules {
    pattern: Box<str>,
    by_method: Vec<(Method, Requirement)>,
    other_methods: Option<Requirement>,
    /// Costs other than 1, by method (`None`: every other method).
    costs: Vec<(Option<Method>, u32)>,
}

/// The entry of `entries` for `method` (`HEAD` following `GET` unless
/// declared itself), else the one for every other method (`None`).
fn by_method<'a, T>(
    entries: &(impl Iterator<Item = (Option<&'a Method>, T)> + Clone),
    method: &Method,
) -> Option<T> {
    let find = |m: Option<&Method>| entries.clone().find(|(rule, _)| *rule == m).map(|(_, r)| r);
    find(Some(method))
        .or_else(|| {
            (method == Method::HEAD)
                .then(|| find(Some(&Method::GET)))
                .flatten()
        })
        .or_else(|| find(None))
}

impl RouteRules {
    fn lookup(&self, method: &Method) -> Option<&Requirement> {
        let declared = self.by_method.iter().map(|(m, r)| (Some(m), r));
        by_method(
            &declared.chain(self.other_methods.iter().map(|r| (None, r))),
            method,
        )
    }

    fn cost(&self, method: &Method) -> u32 {
        by_method(&self.costs.iter().map(|(m, c)| (m.as_ref(), *c)), method).unwrap_or(1)
    }
}

impl ScopePolicy {
    /// An empty builder.
    pub fn builder() -> ScopePolicyBuilder {
        ScopePolicyBuilder::default()
    }

    /// Every scope some rule of the policy asks for: what a server
    /// registers in its store's scope catalogue, so that issuance can
    /// refuse a scope no route would ever accept.
    pub fn scopes(&self) -> ScopeSet {
        self.routes
            .iter()
            .flat_map(|route| {
                route
                    .by_method
                    .iter()
                    .map(|(_, r)| r)
                    .chain(&route.other_methods)
            })
            .flat_map(Requirement::scopes)
            .cloned()
            .collect()
    }
}

impl ScopeLookup for ScopePolicy {
    fn requirement(&self, method: &Method, path: &str) -> Option<&Requirement> {
        let matched = self.router.at(path).ok()?;
        self.routes.get(*matched.value)?.lookup(method)
    }

    fn route(&self, path: &str) -> Option<&str> {
        let matched = self.router.at(path).ok()?;
        Some(&self.routes.get(*matched.value)?.pattern)
    }

    fn cost(&self, method: &Method, path: &str) -> u32 {
        if !self.has_costs {
            return 1;
        }
        self.router
            .at(path)
            .ok()
            .and_then(|matched| self.routes.get(*matched.value))
            .map_or(1, |route| route.cost(method))
    }

    fn has_costs(&self) -> bool {
        self.has_costs
    }
}

impl fmt::Debug for ScopePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopePolicy")
            .field("routes", &self.routes)
            .finish()
    }
}

/// Collects the rules of a [`ScopePolicy`]; [`build`](Self::build) checks
/// them all at once.
#[derive(Debug, Default)]
pub struct ScopePolicyBuilder {
    entries: Vec<(Option<Method>, String, Requirement)>,
    costs: Vec<(Option<Method>, String, u32)>,
    errors: Vec<PolicyError>,
}

const SAFE_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

impl ScopePolicyBuilder {
    /// `methods` on `pattern` need `requirement`.
    pub fn route(
        mut self,
        methods: impl IntoIterator<Item = Method>,
        pattern: &str,
        requirement: Requirement,
    ) -> Self {
        let methods: Vec<Method> = methods.into_iter().collect();
        if let Some((last, rest)) = methods.split_last() {
            for method in rest {
                let entry = (
                    Some(method.clone()),
                    pattern.to_owned(),
                    requirement.clone(),
                );
                self.entries.push(entry);
            }
            self.entries
                .push((Some(last.clone()), pattern.to_owned(), requirement));
        }
        self
    }

    /// Safe methods (`GET`, `HEAD`, `OPTIONS`) on `pattern` are public: no
    /// token needed (a health check, a landing page). The `Gate` lets
    /// them past authentication too, so this is the one place to say it.
    /// Other methods on `pattern` stay denied unless declared.
    pub fn public(self, pattern: &str) -> Self {
        self.route(SAFE_METHODS, pattern, Requirement::Public)
    }

    /// A request of `methods` on `pattern` (a pattern of this policy)
    /// costs `cost` (1 by default; see [`tokengate_core::cost`]): that
    /// much of the token's and owner's quotas and of a usage-limited
    /// token's uses. No method: every method of `pattern` without a cost
    /// of its own. `HEAD` costs what `GET` does unless given.
    ///
    /// ```
    /// use http::Method;
    /// use tokengate_scope::{Requirement, ScopeLookup, ScopePolicy};
    ///
    /// let policy = ScopePolicy::builder()
    ///     .read_write("/notes/export", "notes")
    ///     .public("/healthz")
    ///     .cost([Method::GET], "/notes/export", 10)
    ///     .cost([], "/healthz", 0)
    ///     .build()?;
    /// assert_eq!(policy.cost(&Method::GET, "/notes/export"), 10);
    /// assert_eq!(policy.cost(&Method::HEAD, "/notes/export"), 10);
    /// assert_eq!(policy.cost(&Method::POST, "/notes/export"), 1);
    /// assert_eq!(policy.cost(&Method::GET, "/healthz"), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cost(
        mut self,
        methods: impl IntoIterator<Item = Method>,
        pattern: &str,
        cost: u32,
    ) -> Self {
        let mut methods = methods.into_iter().peekable();
        if methods.peek().is_none() {
            self.costs.push((None, pattern.to_owned(), cost));
        }
        for method in methods {
            self.costs.push((Some(method), pattern.to_owned(), cost));
        }
        self
    }

    /// Every method on `pattern` not declared otherwise needs `requirement`.
    pub fn any_method(mut self, pattern: &str, requirement: Requirement) -> Self {
        self.entries.push((None, pattern.to_owned(), requirement));
        self
    }

    /// Safe methods (`GET`, `HEAD`, `OPTIONS`) on `pattern` need
    /// `<resource>:read`; every other method needs `<resource>:write`.
    pub fn read_write(self, pattern: &str, resource: &str) -> Self {
        match (
            Scope::from_parts(resource, "read"),
            Scope::from_parts(resource, "write"),
        ) {
            (Ok(read), Ok(write)) => self
                .route(SAFE_METHODS, pattern, Requirement::All(vec![read]))
                .any_method(pattern, Requirement::All(vec![write])),
            (Err(error), _) | (_, Err(error)) => self.fail(PolicyError::Scope(error)),
        }
    }

    /// The gRPC method `path` (`/package.Service/Method`) needs `requirement`.
    pub fn grpc_method(self, path: &str, requirement: Requirement) -> Self {
        let valid = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, method)| {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            });
        if !valid {
            return self.fail(PolicyError::GrpcPath {
                path: path.to_owned(),
            });
        }
        self.route([Method::POST], path, requirement)
    }

    /// Every method of the gRPC service `service` (`package.Service`) not
    /// declared otherwise needs `requirement`.
    pub fn grpc_service(self, service: &str, requirement: Requirement) -> Self {
        if service.is_empty() || service.contains('/') {
            return self.fail(PolicyError::GrpcPath {
                path: service.to_owned(),
            });
        }
        self.route(
            [Method::POST],
            &format!("/{service}/{{method}}"),
            requirement,
        )
    }

    fn fail(mut self, error: PolicyError) -> Self {
        self.errors.push(error);
        self
    }

    /// The policy, or the first rule that cannot be used.
    pub fn build(self) -> Result<ScopePolicy, PolicyError> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let mut router = matchit::Router::new();
        let mut routes: Vec<RouteRules> = Vec::new();
        for (method, pattern, requirement) in self.entries {
            let index = match routes.iter().position(|r| *r.pattern == *pattern) {
                Some(index) => index,
                None => {
                    router.insert(pattern.as_str(), routes.len()).map_err(|e| {
                        PolicyError::Pattern {
                            pattern: pattern.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    routes.push(RouteRules {
                        pattern: pattern.as_str().into(),
                        by_method: Vec::new(),
                        other_methods: None,
                        costs: Vec::new(),
                    });
                    routes.len() - 1
                }
            };
            routes[index].add(method, requirement, &pattern)?;
        }
        let has_costs = self.costs.iter().any(|(_, _, cost)| *cost != 1);
        for (method, pattern, cost) in self.costs {
            let Some(route) = routes.iter_mut().find(|r| *r.pattern == *pattern) else {
                return Err(PolicyError::CostWithoutRoute { pattern });
            };
            if route.costs.iter().any(|(m, _)| *m == method) {
                return Err(PolicyError::Duplicate {
                    pattern,
                    method: method.map_or_else(
                        || "the cost of any other method".to_owned(),
                        |m| format!("the cost of {m}"),
                    ),
                });
            }
            route.costs.push((method, cost));
        }
        Ok(ScopePolicy {
            router,
            routes,
            has_costs,
        })
    }
}

impl RouteRules {
    fn add(
        &mut self,
        method: Option<Method>,
        requirement: Requirement,
        pattern: &str,
    ) -> Result<(), PolicyError> {
        let taken = match &method {
            Some(method) => self.by_method.iter().any(|(m, _)| m == method),
            None => self.other_methods.is_some(),
        };
        if taken {
            return Err(PolicyError::Duplicate {
                pattern: pattern.to_owned(),
                method: method.map_or_else(|| "any other method".to_owned(), |m| m.to_string()),
            });
        }
        match method {
            Some(method) => self.by_method.push((method, requirement)),
            None => self.other_methods = Some(requirement),
        }
        Ok(())
    }
}

/// A policy rule that cannot be used. Names the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A path pattern the router refuses (bad syntax, or it conflicts with another).
    #[error("path pattern {pattern:?} cannot be used: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// The same method declared twice on one pattern.
    #[error("{method} on {pattern:?} is declared twice")]
    Duplicate {
        /// The pattern.
        pattern: String,
        /// The method.
        method: String,
    },
    /// A cost given for a pattern no rule declares.
    #[error("a cost is given for {pattern:?}, which no rule of the policy declares")]
    CostWithoutRoute {
        /// The pattern.
        pattern: String,
    },
    /// Not a gRPC method path (`/package.Service/Method`) or service name.
    #[error(
        "{path:?} is not a gRPC method path '/package.Service/Method' or service name 'package.Service'"
    )]
    GrpcPath {
        /// The refused path.
        path: String,
    },
    /// A resource name that makes no valid scope.
    #[error(transparent)]
    Scope(#[from] ScopeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(scope: &str) -> Requirement {
        Requirement::all([scope]).unwrap()
    }

    fn policy() -> ScopePolicy {
        ScopePolicy::builder()
            .read_write("/notes", "notes")
            .route([Method::GET], "/notes/{id}", all("notes:read"))
            .route([Method::DELETE], "/notes/{id}", all("notes:admin"))
            .route([Method::GET], "/notes/special", all("special:read"))
            .route([Method::GET], "/whoami", Requirement::Authenticated)
            .route(
                [Method::GET, Method::HEAD],
                "/files/{*rest}",
                all("files:read"),
            )
            .grpc_method("/notes.v1.Notes/ListNotes", all("notes:read"))
            .grpc_service("notes.v1.Admin", all("notes:admin"))
            .build()
            .unwrap()
    }

    #[test]
    fn read_write_splits_safe_and_unsafe_methods() {
        let p = policy();
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(p.requirement(&m, "/notes"), Some(&all("notes:read")), "{m}");
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert_eq!(
                p.requirement(&m, "/notes"),
                Some(&all("notes:write")),
                "{m}"
            );
        }
    }

    #[test]
    fn costs_follow_the_route_and_method_and_default_to_one() {
        let p = policy();
        assert!(!p.has_costs());
        assert_eq!(p.cost(&Method::GET, "/notes"), 1);
        let costly = ScopePolicy::builder()
            .read_write("/notes", "notes")
            .route([Method::GET], "/notes/{id}", all("notes:read"))
            .cost([Method::POST], "/notes", 5)
            .cost([], "/notes/{id}", 3)
            .cost([Method::GET], "/notes/{id}", 0)
            .build()
            .unwrap();
        assert!(costly.has_costs());
        assert_eq!(costly.cost(&Method::POST, "/notes"), 5);
        assert_eq!(costly.cost(&Method::GET, "/notes"), 1, "no cost given");
        assert_eq!(costly.cost(&Method::GET, "/notes/7"), 0);
        assert_eq!(
            costly.cost(&Method::HEAD, "/notes/7"),
            0,
            "HEAD follows GET"
        );
        assert_eq!(
            costly.cost(&Method::DELETE, "/notes/7"),
            3,
            "every other method"
        );
        assert_eq!(costly.cost(&Method::GET, "/elsewhere"), 1);
        assert_eq!(
            ScopePolicy::builder()
                .read_write("/notes", "notes")
                .cost([], "/nots", 2)
                .build()
                .unwrap_err(),
            PolicyError::CostWithoutRoute {
                pattern: "/nots".into()
            }
        );
        let twice = ScopePolicy::builder()
            .read_write("/notes", "notes")
            .cost([Method::GET], "/notes", 2)
            .cost([Method::GET], "/notes", 3)
            .build()
            .unwrap_err();
        assert_eq!(
            twice.to_string(),
            r#"the cost of GET on "/notes" is declared twice"#
        );
    }

    #[test]
    fn unmapped_paths_and_methods_are_none() {
        let p = policy();
        assert!(p.requirement(&Method::GET, "/admin").is_none());
        assert!(p.requirement(&Method::POST, "/notes/7").is_none());
        assert!(p.requirement(&Method::OPTIONS, "/notes/7").is_none());
        assert!(p.requirement(&Method::GET, "/notes/").is_none());
        assert!(p.requirement(&Method::GET, "").is_none());
        assert!(p.requirement(&Method::GET, "/NOTES").is_none());
    }

    #[test]
    fn head_follows_get_unless_declared() {
        let p = policy();
        assert_eq!(
            p.requirement(&Method::HEAD, "/notes/7"),
            Some(&all("notes:read"))
        );
        assert_eq!(
            p.requirement(&Method::HEAD, "/whoami"),
            Some(&Requirement::Authenticated)
        );
    }

    #[test]
    fn static_segments_win_over_parameters_whatever_the_order() {
        let p = policy();
        assert_eq!(
            p.requirement(&Method::GET, "/notes/special"),
            Some(&all("special:read"))
        );
        assert_eq!(
            p.requirement(&Method::GET, "/notes/other"),
            Some(&all("notes:read"))
        );
        assert_eq!(
            p.requirement(&Method::GET, "/files/a/b/c"),
            Some(&all("files:read"))
        );
    }

    #[test]
    fn grpc_methods_and_services_are_post_paths() {
        let p = policy();
        assert_eq!(
            p.requirement(&Method::POST, "/notes.v1.Notes/ListNotes"),
            Some(&all("notes:read"))
        );
        assert!(
            p.requirement(&Method::POST, "/notes.v1.Notes/CreateNote")
                .is_none()
        );
        assert!(
            p.requirement(&Method::GET, "/notes.v1.Notes/ListNotes")
                .is_none()
        );
        assert_eq!(
            p.requirement(&Method::POST, "/notes.v1.Admin/Purge"),
            Some(&all("notes:admin"))
        );
    }

    #[test]
    fn bad_rules_fail_at_build_naming_the_value() {
        let dup = ScopePolicy::builder()
            .route([Method::GET], "/a", all("a:read"))
            .route([Method::GET], "/a", all("a:write"))
            .build()
            .unwrap_err();
        assert_eq!(dup.to_string(), "GET on \"/a\" is declared twice");
        let conflict = ScopePolicy::builder()
            .route([Method::GET], "/a/{x}", all("a:read"))
            .route([Method::GET], "/a/{y}", all("a:read"))
            .build()
            .unwrap_err();
        assert!(conflict.to_string().contains("\"/a/{y}\""), "{conflict}");
        let grpc = ScopePolicy::builder()
            .grpc_method("notes.Notes/List", all("a:b"))
            .build()
            .unwrap_err();
        assert!(grpc.to_string().contains("\"notes.Notes/List\""), "{grpc}");
        let resource = ScopePolicy::builder()
            .read_write("/x", "bad resource")
            .build()
            .unwrap_err();
        assert!(resource.to_string().contains("bad resource"), "{resource}");
    }
}
