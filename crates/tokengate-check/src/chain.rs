//! Two checks run in order as one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Request;
use pin_project_lite::pin_project;

use super::refusal::Refusal;
use super::{Admit, Check, Verdict};

/// `first`, then `second` on the requests `first` admits: the two layers
/// stacked (`first` outside), as one check.
///
/// Its methods, and every layer's `check`, are `#[inline(always)]`: a
/// chain's verdict carries the admitted checks' headers (a few hundred
/// bytes for a Gate), and a chain inlined whole builds it in place where
/// one call per level would copy it at every level. A check of one's own
/// needs no attribute: in a Gate it runs innermost (`Gate::with_check`),
/// where only its own small verdict crosses the call. Measured
/// (`STACKS="gate-discard gate-own-check gate-own-check-inlined"
/// benches/instructions.sh`): a header check costs the Gate +108
/// instructions a request written plainly, +64 with the attribute, of
/// about 19,700.
///
/// The second check's refusal gets the first's response headers, as the
/// first layer's future would set them on it; on an admitted response the
/// second's apply first, so the first's win where both set one header.
#[derive(Debug, Clone, Default)]
pub struct Chain<A, Z> {
    first: A,
    second: Z,
}

impl<A, Z> Chain<A, Z> {
    /// `first`, then `second`.
    pub fn new(first: A, second: Z) -> Self {
        Self { first, second }
    }

    /// The first check.
    pub fn first(&self) -> &A {
        &self.first
    }

    /// The second check.
    pub fn second(&self) -> &Z {
        &self.second
    }
}

pin_project! {
    /// What a [`Chain`] waits for: the first check's wait, or the second's
    /// with what the first admitted.
    #[derive(Debug)]
    pub struct ChainWait<WA, WZ, AA> {
        #[pin]
        state: WaitState<WA, WZ, AA>,
    }
}

pin_project! {
    #[project = WaitStateProj]
    #[derive(Debug)]
    enum WaitState<WA, WZ, AA> {
        First { #[pin] wait: WA },
        Second { admitted: Option<AA>, #[pin] wait: WZ },
    }
}

impl<WA, WZ, AA> ChainWait<WA, WZ, AA> {
    fn first(wait: WA) -> Self {
        Self {
            state: WaitState::First { wait },
        }
    }

    fn second(admitted: AA, wait: WZ) -> Self {
        Self {
            state: WaitState::Second {
                admitted: Some(admitted),
                wait,
            },
        }
    }
}

/// The output of a [`ChainWait`].
#[derive(Debug)]
pub enum ChainWaited<OA, AA, OZ> {
    /// The first check's wait completed.
    First(OA),
    /// The second check's wait completed (`None` only if polled again after
    /// completing).
    Second(Option<AA>, OZ),
}

impl<WA: Future, WZ: Future, AA> Future for ChainWait<WA, WZ, AA> {
    type Output = ChainWaited<WA::Output, AA, WZ::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            WaitStateProj::First { wait } => Poll::Ready(ChainWaited::First(ready!(wait.poll(cx)))),
            WaitStateProj::Second { admitted, wait } => {
                let waited = ready!(wait.poll(cx));
                Poll::Ready(ChainWaited::Second(admitted.take(), waited))
            }
        }
    }
}

type Waits<B, A, Z> =
    ChainWait<<A as Check<B>>::Wait, <Z as Check<B>>::Wait, <A as Check<B>>::Admit>;

/// What a chain of `A` then `Z` answers.
type Both<B, A, Z> = Verdict<(<A as Check<B>>::Admit, <Z as Check<B>>::Admit), Waits<B, A, Z>>;

impl<A, Z> Chain<A, Z> {
    /// The first check admitted with `admitted`: the second decides.
    #[inline(always)]
    fn then<B>(&self, request: &mut Request<B>, admitted: A::Admit) -> Both<B, A, Z>
    where
        A: Check<B>,
        Z: Check<B>,
    {
        let second = self.second.check(request);
        Self::after_first(admitted, second)
    }

    #[inline(always)]
    fn after_first<B>(admitted: A::Admit, second: Verdict<Z::Admit, Z::Wait>) -> Both<B, A, Z>
    where
        A: Check<B>,
        Z: Check<B>,
    {
        match second {
            Verdict::Admit(admit) => Verdict::Admit((admitted, admit)),
            Verdict::Refuse(refusal) => Verdict::Refuse(with_headers(refusal, admitted)),
            Verdict::Wait(wait) => Verdict::Wait(ChainWait::second(admitted, wait)),
        }
    }

    #[inline(always)]
    fn after<B>(&self, request: &mut Request<B>, first: Verdict<A::Admit, A::Wait>) -> Both<B, A, Z>
    where
        A: Check<B>,
        Z: Check<B>,
    {
        match first {
            Verdict::Admit(admitted) => self.then(request, admitted),
            Verdict::Refuse(refusal) => Verdict::Refuse(refusal),
            Verdict::Wait(wait) => Verdict::Wait(ChainWait::first(wait)),
        }
    }
}

/// `refusal` with the headers of the check that admitted before the
/// refusing one.
fn with_headers(mut refusal: Refusal, admitted: impl Admit) -> Refusal {
    admitted.apply(refusal.response_mut());
    refusal
}

impl<B, A: Check<B>, Z: Check<B>> Check<B> for Chain<A, Z> {
    type Admit = (A::Admit, Z::Admit);
    type Wait = Waits<B, A, Z>;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<Self::Admit, Self::Wait> {
        let first = self.first.check(request);
        self.after(request, first)
    }

    fn resume(
        &self,
        request: &mut Request<B>,
        waited: <Self::Wait as Future>::Output,
    ) -> Verdict<Self::Admit, Self::Wait> {
        match waited {
            ChainWaited::First(waited) => {
                let first = self.first.resume(request, waited);
                self.after(request, first)
            }
            ChainWaited::Second(Some(admitted), waited) => {
                Self::after_first(admitted, self.second.resume(request, waited))
            }
            ChainWaited::Second(None, _) => Verdict::Refuse(Refusal::unavailable()),
        }
    }
}
