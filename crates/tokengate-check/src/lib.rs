//! One request decision, and the one service that runs any of them.
//!
//! Every tokengate layer is a [`Check`]: it looks at the request (and may
//! add to its extensions) and answers with a [`Verdict`]:
//!
//! - **admit**, with an [`Admit`] value that adds what the layer owes the
//!   response (a header, say) once the inner service answered;
//! - **refuse**, with a rendered [`Refusal`]: the inner service is not called;
//! - **wait**, with a future (a store lookup on a cache miss, a remote rate
//!   state); its output goes back to [`Check::resume`], which decides again.
//!
//! [`CheckService`] runs a check in front of an inner service and
//! [`CheckLayer`] makes it a `tower` layer. [`Chain`] runs two checks in
//! order as one, exactly as the two layers stacked would: the second only
//! sees requests the first admitted, and the first's response headers go on
//! whatever the second answers, refusals included. A whole gate is a chain
//! of checks run by one service, with one future and one body wrapper.
//!
//! # Example: a check that requires a header
//!
//! ```
//! use std::convert::{Infallible};
//! use http::{Request, Response, StatusCode};
//! use tokengate_check::{Check, CheckLayer, NoWait, Renderer, Verdict};
//! use tokengate_core::{Denial, MalformedReason};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! /// Refuses requests without an `x-tenant` header.
//! #[derive(Clone, Default)]
//! struct RequireTenant {
//!     renderer: Renderer,
//! }
//!
//! impl<B> Check<B> for RequireTenant {
//!     type Admit = ();
//!     type Wait = NoWait;
//!
//!     fn check(&self, request: &mut Request<B>) -> Verdict<(), NoWait> {
//!         if request.headers().contains_key("x-tenant") {
//!             Verdict::Admit(())
//!         } else {
//!             let denial = Denial::MalformedRequest(MalformedReason::MissingRequiredHeader);
//!             Verdict::Refuse(self.renderer.refuse(request, denial))
//!         }
//!     }
//!
//!     fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
//!         match waited {}
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let service = ServiceBuilder::new()
//!     .layer(CheckLayer::new(RequireTenant::default()))
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//!
//! let refused = service.clone().oneshot(Request::new(())).await?;
//! assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
//! let admitted = service
//!     .oneshot(Request::get("/").header("x-tenant", "a").body(())?)
//!     .await?;
//! assert_eq!(admitted.status(), StatusCode::OK);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod body;
mod chain;
mod future;
mod observe;
mod refusal;
mod render;
mod service;
mod shield;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

pub use body::CheckBody;
pub use chain::{Chain, ChainWait, ChainWaited};
pub use future::CheckFuture;
pub use observe::describe_metrics;
pub use refusal::Refusal;
pub use render::{
    ProblemJson, Realm, RealmError, RenderDenial, Renderer, is_grpc, refusal_closes_connection,
};
pub use service::{CheckLayer, CheckService};
pub use shield::{Shield, ShieldWait, ShieldWaited, Then};

/// What a [`Check`] answers for one request.
#[derive(Debug)]
pub enum Verdict<A, W> {
    /// Let the request through; `A` adds what the check owes the response.
    Admit(A),
    /// Answer with this refusal; the inner service is not called.
    Refuse(Refusal),
    /// Decide when `W` completes, in [`Check::resume`].
    Wait(W),
}

/// What an admitting check adds to the response, whatever the inner
/// service answers (and to a later check's refusal).
pub trait Admit {
    /// Adds it to `response`.
    fn apply<B>(self, response: &mut Response<B>);
}

impl Admit for () {
    #[inline]
    fn apply<B>(self, _: &mut Response<B>) {}
}

impl<A: Admit> Admit for Option<A> {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some(admit) = self {
            admit.apply(response);
        }
    }
}

/// The first check's and the second's: the second (inner) applies first, so
/// the first (outer) wins where both set one header, as stacked layers do.
impl<A: Admit, Z: Admit> Admit for (A, Z) {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        self.1.apply(response);
        self.0.apply(response);
    }
}

/// One decision on a request, made before the inner service is called.
///
/// `check` runs on every request and should answer without waiting where it
/// can; `resume` takes the output of a [`Verdict::Wait`] future and
/// decides again (it may wait once more). A check that never waits uses
/// [`NoWait`] and `match waited {}` in `resume`.
///
/// A wait may be polled once inside `check` and then parked while other
/// checks decide (a [`Shield`] waits for its guard first). So a wait must
/// not hold anything other requests need while it is parked: a shared
/// connection being made, a lock. Start such work in a task of its own and
/// wait for its result, as the Redis rate state makes its connection.
pub trait Check<B> {
    /// What an admitted request's response gets from this check.
    type Admit: Admit;
    /// What the check waits for, when it cannot decide at once.
    type Wait: Future;

    /// Decides `request`.
    fn check(&self, request: &mut Request<B>) -> Verdict<Self::Admit, Self::Wait>;

    /// Decides `request` again with what the check waited for.
    fn resume(
        &self,
        request: &mut Request<B>,
        waited: <Self::Wait as Future>::Output,
    ) -> Verdict<Self::Admit, Self::Wait>;
}

/// A shared check: a whole gate behind one pointer, so cloning the service
/// that runs it costs one reference count, not one per check.
impl<B, C: Check<B>> Check<B> for Arc<C> {
    type Admit = C::Admit;
    type Wait = C::Wait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<Self::Admit, Self::Wait> {
        (**self).check(request)
    }

    #[inline(always)]
    fn resume(
        &self,
        request: &mut Request<B>,
        waited: <Self::Wait as Future>::Output,
    ) -> Verdict<Self::Admit, Self::Wait> {
        (**self).resume(request, waited)
    }
}

/// The check that admits everything: the end of a chain with nothing more
/// to add.
impl<B> Check<B> for () {
    type Admit = ();
    type Wait = NoWait;

    #[inline]
    fn check(&self, _: &mut Request<B>) -> Verdict<(), NoWait> {
        Verdict::Admit(())
    }

    fn resume(&self, _: &mut Request<B>, waited: Infallible) -> Verdict<(), NoWait> {
        match waited {}
    }
}

/// The wait of a check that never waits: it has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWait {}

impl Future for NoWait {
    type Output = Infallible;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Infallible> {
        match *self {}
    }
}

#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod tests;
