use std::fmt;

use tokengate_core::{Scope, ScopeError, ScopeRules, ScopeSet};

/// What a route or gRPC method demands of the caller's token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// No token needed: the route is public (health checks, gRPC health).
    /// Declared explicitly, like every other requirement; pair it with the
    /// authenticate layer's public routes.
    Public,
    /// Any valid token, whatever its scopes (e.g. `GET /whoami`).
    Authenticated,
    /// Every one of these scopes.
    All(Vec<Scope>),
    /// At least one of these scopes.
    Any(Vec<Scope>),
}

impl Requirement {
    /// Every scope of `scopes` is required.
    pub fn all<I>(scopes: I) -> Result<Self, RequirementError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::All(parse_scopes(scopes)?))
    }

    /// One scope of `scopes` is enough.
    pub fn any<I>(scopes: I) -> Result<Self, RequirementError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::Any(parse_scopes(scopes)?))
    }

    /// The scopes this requirement names (none for `Public` and `Authenticated`).
    pub fn scopes(&self) -> &[Scope] {
        match self {
            Self::All(scopes) | Self::Any(scopes) => scopes,
            Self::Public | Self::Authenticated => &[],
        }
    }

    /// Whether scopes `held` satisfy the requirement under `rules`; if not,
    /// the scopes to ask for (for `Any`: all of its alternatives).
    pub fn evaluate(&self, held: &ScopeSet, rules: &ScopeRules) -> Result<(), Vec<Scope>> {
        match self {
            Self::Public | Self::Authenticated => Ok(()),
            Self::All(required) => {
                let missing = held.missing(required, rules);
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(missing)
                }
            }
            Self::Any(options) => {
                if options.iter().any(|scope| held.grants(scope, rules)) {
                    Ok(())
                } else {
                    Err(options.clone())
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |scopes: &[Scope], sep: &str| {
            scopes
                .iter()
                .map(Scope::as_str)
                .collect::<Vec<_>>()
                .join(sep)
        };
        match self {
            Self::Public => f.write_str("no token"),
            Self::Authenticated => f.write_str("any valid token"),
            Self::All(scopes) => f.write_str(&join(scopes, " and ")),
            Self::Any(scopes) => f.write_str(&join(scopes, " or ")),
        }
    }
}

fn parse_scopes<I>(scopes: I) -> Result<Vec<Scope>, RequirementError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let parsed = scopes
        .into_iter()
        .map(|s| s.as_ref().parse())
        .collect::<Result<Vec<Scope>, _>>()?;
    if parsed.is_empty() {
        return Err(RequirementError::Empty);
    }
    Ok(parsed)
}

/// A requirement that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// A malformed scope.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// No scope at all: say [`Requirement::Authenticated`] if any valid
    /// token will do.
    #[error(
        "a scope requirement needs at least one scope (use Requirement::Authenticated for any valid token)"
    )]
    Empty,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> ScopeSet {
        text.parse().unwrap()
    }

    #[test]
    fn all_lists_exactly_the_missing_scopes() {
        let req = Requirement::all(["notes:read", "notes:write"]).unwrap();
        assert_eq!(
            req.evaluate(&set("notes:read notes:write"), &ScopeRules::exact()),
            Ok(())
        );
        assert_eq!(
            req.evaluate(&set("notes:read"), &ScopeRules::exact()),
            Err(vec!["notes:write".parse().unwrap()])
        );
    }

    #[test]
    fn any_needs_one_and_names_every_option_otherwise() {
        let req = Requirement::any(["notes:admin", "notes:write"]).unwrap();
        assert_eq!(
            req.evaluate(&set("notes:write"), &ScopeRules::exact()),
            Ok(())
        );
        let missing = req
            .evaluate(&set("notes:read"), &ScopeRules::exact())
            .unwrap_err();
        assert_eq!(missing.len(), 2);
    }

    #[test]
    fn empty_and_malformed_requirements_are_config_errors() {
        assert_eq!(
            Requirement::all(Vec::<&str>::new()),
            Err(RequirementError::Empty)
        );
        let err = Requirement::any(["notes:read", "notes read"]).unwrap_err();
        assert!(err.to_string().contains("\"notes read\""), "{err}");
    }

    #[test]
    fn authenticated_accepts_an_empty_scope_set_but_all_does_not() {
        assert_eq!(
            Requirement::Authenticated.evaluate(&ScopeSet::empty(), &ScopeRules::standard()),
            Ok(())
        );
        let req = Requirement::all(["notes:read"]).unwrap();
        assert!(
            req.evaluate(&ScopeSet::empty(), &ScopeRules::standard())
                .is_err()
        );
    }

    #[test]
    fn displays_readably() {
        assert_eq!(
            Requirement::all(["a:b", "c:d"]).unwrap().to_string(),
            "a:b and c:d"
        );
        assert_eq!(
            Requirement::any(["a:b", "c:d"]).unwrap().to_string(),
            "a:b or c:d"
        );
    }
}
