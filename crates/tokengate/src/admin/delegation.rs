//! Least privilege for the admin API itself: who may manage which tokens.
//!
//! A token with [`ADMIN_SCOPE`](super::ADMIN_SCOPE) is root: it manages
//! every token. A token with [`DELEGATE_SCOPE`](super::DELEGATE_SCOPE)
//! instead manages only tokens it could have made itself: every scope of
//! theirs one it holds (exactly, or as `resource:*`), every audience one of
//! its own, and no `tokengate:` scope at all, so it can neither mint an
//! admin or delegate token nor change its own. A token outside its reach
//! is answered as if it did not exist (404), so a delegate cannot probe
//! other teams' ids; what it asks to hand out beyond its own is 403.

use axum::http::StatusCode;
use tokengate_core::{Audience, Principal, Scope, ScopeSet, TokenRecord};

use super::{ADMIN_SCOPE, Problem};

/// The resource of the scopes only root may hand out.
const RESERVED: &str = "tokengate";

/// What the caller may manage.
#[derive(Debug, Clone)]
pub(crate) enum Authority {
    /// Every token (an admin token, or no principal: the router mounted
    /// without authentication, whose embedder decided who calls).
    Root,
    /// Tokens within these scopes and audiences.
    Delegate {
        scopes: ScopeSet,
        audiences: Vec<Audience>,
    },
}

impl Authority {
    /// The authority of the request's principal.
    pub(crate) fn of(principal: Option<&Principal>) -> Self {
        let Some(principal) = principal else {
            return Self::Root;
        };
        if principal.scopes().iter().any(|s| s.as_str() == ADMIN_SCOPE) {
            return Self::Root;
        }
        Self::Delegate {
            scopes: principal
                .scopes()
                .iter()
                .filter(|s| s.resource() != RESERVED)
                .cloned()
                .collect(),
            audiences: principal.audiences().to_vec(),
        }
    }

    /// Whether the caller may hand out `scope`.
    pub(crate) fn grants_scope(&self, scope: &Scope) -> bool {
        match self {
            Self::Root => true,
            Self::Delegate { scopes, .. } => {
                scope.resource() != RESERVED
                    && (scopes.contains(scope)
                        || Scope::from_parts(scope.resource(), "*")
                            .is_ok_and(|any| scopes.contains(&any)))
            }
        }
    }

    /// Whether the caller may hand out `audience`.
    pub(crate) fn grants_audience(&self, audience: &Audience) -> bool {
        match self {
            Self::Root => true,
            Self::Delegate { audiences, .. } => audiences.contains(audience),
        }
    }

    /// Whether the caller may see and manage `record`.
    pub(crate) fn covers(&self, record: &TokenRecord) -> bool {
        record.scopes.iter().all(|s| self.grants_scope(s))
            && record.audiences.iter().all(|a| self.grants_audience(a))
    }

    /// 403 unless the caller may hand out every one of `scopes` and
    /// `audiences`.
    pub(crate) fn may_hand_out<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a Scope>,
        audiences: impl IntoIterator<Item = &'a Audience>,
    ) -> Result<(), Problem> {
        if let Some(scope) = scopes.into_iter().find(|s| !self.grants_scope(s)) {
            return Err(beyond(&format!("scope {scope}")));
        }
        if let Some(audience) = audiences.into_iter().find(|a| !self.grants_audience(a)) {
            return Err(beyond(&format!("audience {audience}")));
        }
        Ok(())
    }
}

fn beyond(what: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        format!(
            "{what} is beyond this delegated admin token: it hands out only its own scopes \
             and audiences, and never a tokengate: scope"
        ),
    )
}
