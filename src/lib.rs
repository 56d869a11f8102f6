//! Test support for tokengate's cross-crate integration tests and benches.
//!
//! This package is not published. Its `tests/` and `benches/` directories hold
//! the tests that span several crates and the criterion benches; this library
//! holds the few helpers they share.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` once and returns its output: for benches of paths that
/// must complete without waiting (cache hits, synchronous decisions).
///
/// # Panics
///
/// If the future is not ready at once: the path under measurement waited.
#[allow(clippy::panic, reason = "a bench whose measured path waits is wrong")]
pub fn ready_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the measured path must not wait"),
    }
}
