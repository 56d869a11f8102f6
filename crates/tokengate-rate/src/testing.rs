//! Test support: a rate state that answers later, as a shared backend does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crate::state::{Charge, MemoryRateState, Outcome, RateState, RateStateError};

/// In-memory rate state whose every answer is pending once before it is
/// ready (the waker is woken at once), so the layers' waiting path runs
/// as it would against a remote store. [`fail`](Self::fail) makes it
/// answer with a backend error instead.
#[derive(Debug, Clone, Default)]
pub struct PendingRateState {
    inner: MemoryRateState,
    failing: Arc<AtomicBool>,
}

impl PendingRateState {
    /// A pending state over fresh in-memory state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers with a backend error from now on (`true`), or answers again.
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

/// The answer of a [`PendingRateState`]: pending on the first poll.
#[derive(Debug)]
pub struct Later {
    answer: Option<Result<Outcome, RateStateError>>,
    polled: bool,
}

impl Future for Later {
    type Output = Result<Outcome, RateStateError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.polled {
            self.polled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(
            self.answer
                .take()
                .unwrap_or_else(|| Err(RateStateError("polled after completion".into()))),
        )
    }
}

impl RateState for PendingRateState {
    type Future = Later;

    fn acquire(&self, charges: &[Charge], now: u64) -> Later {
        let answer = if self.failing.load(Ordering::SeqCst) {
            Err(RateStateError("backend down".into()))
        } else {
            Ok(self.inner.decide(charges, now))
        };
        Later {
            answer: Some(answer),
            polled: false,
        }
    }
}
