//! A guard consulted only off the fast path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Request;
use pin_project_lite::pin_project;

use super::refusal::Refusal;
use super::{Check, Verdict};

/// `inner`, with `guard` consulted only when `inner` cannot admit at once:
/// before `inner` waits (a cache miss about to reach the store) and when it
/// refuses with a 4xx (a bad or missing token, a missing scope, a spent
/// quota). A request `inner` admits without waiting never touches `guard`.
///
/// The Gate shields authentication and the checks after it with the
/// per-client-IP limit this way: a flood of unknown or invalid tokens is
/// limited before it reaches the store and keeps being answered with 429,
/// while a request whose token the cache knows pays nothing for it.
///
/// - `inner` refuses with a 4xx: `guard` is charged; if it refuses, its
///   refusal (429) is the answer, else `inner`'s.
/// - `inner` must wait: `guard` decides first; if it refuses, `inner`'s
///   wait is dropped unpolled (the store is never asked), else it goes on.
///   A refusal after the wait is not charged again.
/// - `guard`'s admitted headers are dropped: a guard tells nothing to a
///   request it let through.
#[derive(Debug, Clone, Default)]
pub struct Shield<G, C> {
    guard: G,
    inner: C,
}

impl<G, C> Shield<G, C> {
    /// `inner`, shielded by `guard`.
    pub fn new(guard: G, inner: C) -> Self {
        Self { guard, inner }
    }

    /// The guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }

    /// The shielded check.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

/// What the guard's decision leads to once it admits.
#[derive(Debug)]
pub enum Then<W> {
    /// `inner` refused: its refusal stands.
    Refuse(Refusal),
    /// `inner` waits.
    Wait(W),
}

pin_project! {
    /// What a [`Shield`] waits for: the guard (then `inner`'s refusal or
    /// wait), or `inner`.
    #[derive(Debug)]
    pub struct ShieldWait<WG, WC> {
        #[pin]
        state: ShieldState<WG, WC>,
    }
}

pin_project! {
    #[project = ShieldStateProj]
    #[derive(Debug)]
    enum ShieldState<WG, WC> {
        Guard { #[pin] wait: WG, then: Option<Then<WC>> },
        Inner { #[pin] wait: WC },
    }
}

/// The output of a [`ShieldWait`].
#[derive(Debug)]
pub enum ShieldWaited<OG, WC, OC> {
    /// The guard answered (`None` only if polled again after completing).
    Guard(OG, Option<Then<WC>>),
    /// `inner` answered.
    Inner(OC),
}

impl<WG: Future, WC: Future> Future for ShieldWait<WG, WC> {
    type Output = ShieldWaited<WG::Output, WC, WC::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ShieldStateProj::Guard { wait, then } => {
                let waited = ready!(wait.poll(cx));
                Poll::Ready(ShieldWaited::Guard(waited, then.take()))
            }
            ShieldStateProj::Inner { wait } => {
                Poll::Ready(ShieldWaited::Inner(ready!(wait.poll(cx))))
            }
        }
    }
}

type Waits<B, G, C> = ShieldWait<<G as Check<B>>::Wait, <C as Check<B>>::Wait>;
type Answer<B, G, C> = Verdict<<C as Check<B>>::Admit, Waits<B, G, C>>;

fn is_client_error(refusal: &Refusal) -> bool {
    refusal
        .denial()
        .is_some_and(|denial| denial.status().is_client_error())
}

impl<G, C> Shield<G, C> {
    /// The guard's verdict on a request `inner` could not admit at once.
    #[inline(always)]
    fn guarded<B>(guard: Verdict<G::Admit, G::Wait>, then: Then<C::Wait>) -> Answer<B, G, C>
    where
        G: Check<B>,
        C: Check<B>,
    {
        match guard {
            Verdict::Refuse(refusal) => Verdict::Refuse(refusal),
            Verdict::Admit(_) => Self::go_on(then),
            Verdict::Wait(wait) => Verdict::Wait(ShieldWait {
                state: ShieldState::Guard {
                    wait,
                    then: Some(then),
                },
            }),
        }
    }

    #[inline(always)]
    fn go_on<B>(then: Then<C::Wait>) -> Answer<B, G, C>
    where
        G: Check<B>,
        C: Check<B>,
    {
        match then {
            Then::Refuse(refusal) => Verdict::Refuse(refusal),
            Then::Wait(wait) => Verdict::Wait(ShieldWait {
                state: ShieldState::Inner { wait },
            }),
        }
    }
}

impl<B, G: Check<B>, C: Check<B>> Check<B> for Shield<G, C> {
    type Admit = C::Admit;
    type Wait = Waits<B, G, C>;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<Self::Admit, Self::Wait> {
        match self.inner.check(request) {
            Verdict::Admit(admitted) => Verdict::Admit(admitted),
            Verdict::Refuse(refusal) if is_client_error(&refusal) => {
                let guard = self.guard.check(request);
                Self::guarded(guard, Then::Refuse(refusal))
            }
            Verdict::Refuse(refusal) => Verdict::Refuse(refusal),
            Verdict::Wait(wait) => {
                let guard = self.guard.check(request);
                Self::guarded(guard, Then::Wait(wait))
            }
        }
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        waited: <Self::Wait as Future>::Output,
    ) -> Verdict<Self::Admit, Self::Wait> {
        match waited {
            ShieldWaited::Guard(waited, Some(then)) => {
                let guard = self.guard.resume(request, waited);
                Self::guarded(guard, then)
            }
            ShieldWaited::Guard(_, None) => Verdict::Refuse(Refusal::unavailable()),
            // Charged before the wait: what `inner` decides now stands.
            ShieldWaited::Inner(waited) => match self.inner.resume(request, waited) {
                Verdict::Wait(wait) => Verdict::Wait(ShieldWait {
                    state: ShieldState::Inner { wait },
                }),
                Verdict::Admit(admitted) => Verdict::Admit(admitted),
                Verdict::Refuse(refusal) => Verdict::Refuse(refusal),
            },
        }
    }
}
