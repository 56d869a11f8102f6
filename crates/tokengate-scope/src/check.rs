//! The decision: do the principal's scopes meet the route's requirement?

use std::convert::Infallible;

use http::Request;
use tokengate_check::{Check, NoWait, Verdict};
use tokengate_core::{Denial, Principal};

use crate::layer::EnforceScopeLayer;
use crate::policy::ScopeLookup;
use crate::requirement::Requirement;

/// Public routes pass; otherwise a principal is needed (401), a rule must
/// cover the request (403), and the rule must be met (403).
impl<B, P: ScopeLookup> Check<B> for EnforceScopeLayer<P> {
    type Admit = ();
    type Wait = NoWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
        match self.decide(request) {
            Ok(()) => Verdict::Admit(()),
            Err(denial) => Verdict::Refuse(self.renderer.refuse(request, denial)),
        }
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}

impl<P: ScopeLookup> EnforceScopeLayer<P> {
    fn decide<B>(&self, request: &Request<B>) -> Result<(), Denial> {
        if tracing::enabled!(target: "tokengate", tracing::Level::DEBUG)
            && let Some(route) = self.lookup.route(request.uri().path())
        {
            // The request's `tokengate.check` span, entered around the check.
            tracing::Span::current().record("http.route", route);
        }
        let requirement = self
            .lookup
            .requirement(request.method(), request.uri().path());
        if matches!(requirement, Some(Requirement::Public)) {
            return Ok(());
        }
        let principal = request
            .extensions()
            .get::<Principal>()
            .ok_or(Denial::MissingToken)?;
        requirement
            .ok_or(Denial::Unmapped)?
            .evaluate(principal.scopes(), &self.rules)
            .map_err(|missing| Denial::InsufficientScope { missing })
    }
}
