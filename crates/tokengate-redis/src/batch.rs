//! Concurrent requests' charges, decided in one script call.
//!
//! Each [`RedisRateState`](crate::RedisRateState) has one batcher task.
//! A request hands its charges to it and waits for its own answer, within
//! its own deadline. The batcher keeps one call in flight: while Redis
//! answers a call, the requests that arrive meanwhile queue, and the next
//! call takes all of them (up to [`MOST`]). (Two calls in flight, tried
//! under the end-to-end bench, served no more requests: the machine's
//! cores, not the wait, were the limit.) Under load a call decides many
//! requests; an idle instance's lone request still goes at once. The
//! script decides a batch's requests one after another, each
//! all-then-commit, so a batch answers exactly as separate calls would.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use tokengate_rate::{Charge, Outcome, RateStateError};
use tokio::sync::{mpsc, oneshot};

/// The most requests one call decides: a call runs on Redis's one thread,
/// so a batch is kept short enough (well under a millisecond of Lua) not
/// to hold up the server's other clients.
pub(crate) const MOST: usize = 128;

/// What decides a batch: the state's one script call.
pub(crate) trait Decide: Send + Sync + 'static {
    /// Decides every request of `batch` by `until`, its answers pushed to
    /// `buffers.answers` in the batch's order.
    fn decide(
        &self,
        batch: &[Waiting],
        until: Instant,
        buffers: &mut Buffers,
    ) -> impl Future<Output = Result<(), RateStateError>> + Send;
}

/// One request waiting for its answer.
pub(crate) struct Waiting {
    /// Its charges (shared with the request, which needs them for a
    /// fallback).
    pub(crate) charges: Arc<[Charge]>,
    /// When the request stops waiting.
    pub(crate) until: Instant,
    /// Where its answer goes.
    pub(crate) answer: oneshot::Sender<Result<Outcome, RateStateError>>,
}

/// The way to the batcher task, started on first use and again if it has
/// stopped (the runtime it ran on has ended).
#[derive(Default)]
pub(crate) struct Queue {
    sender: Mutex<Option<mpsc::UnboundedSender<Waiting>>>,
}

impl Queue {
    /// Hands `waiting` to the batcher deciding with `shared`. Outside a
    /// tokio runtime there can be none: the request is answered with an
    /// error (and gets the state's fallback).
    pub(crate) fn push<D: Decide>(&self, shared: &Arc<D>, waiting: Waiting) {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = match &*sender {
            Some(running) => match running.send(waiting) {
                Ok(()) => return,
                Err(mpsc::error::SendError(waiting)) => waiting,
            },
            None => waiting,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let error = RateStateError("no tokio runtime to reach redis from".into());
            let _ = waiting.answer.send(Err(error));
            return;
        };
        let (started, queue) = mpsc::unbounded_channel();
        runtime.spawn(run(Arc::downgrade(shared), queue));
        // The receiver is alive: the task was just given it.
        let _ = started.send(waiting);
        *sender = Some(started);
    }
}

/// The batcher: takes what is queued, decides it in one call, answers
/// each request; ends when its state is dropped.
async fn run<D: Decide>(shared: Weak<D>, mut queue: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(MOST);
    let mut buffers = Buffers::default();
    while queue.recv_many(&mut batch, MOST).await > 0 {
        // A request that stopped waiting (past its deadline, so decided by
        // the fallback, or dropped) is not charged.
        batch.retain(|waiting: &Waiting| !waiting.answer.is_closed());
        let Some(until) = batch.iter().map(|waiting| waiting.until).max() else {
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.decide(&batch, until, &mut buffers).await {
            Ok(()) => {
                for (waiting, answer) in batch.drain(..).zip(buffers.answers.drain(..)) {
                    let _ = waiting.answer.send(Ok(answer));
                }
            }
            Err(error) => {
                for waiting in batch.drain(..) {
                    let _ = waiting.answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// What a call is built in, kept from call to call so that building one
/// allocates nothing once they have grown.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The command.
    pub(crate) command: redis::Cmd,
    /// One key at a time.
    pub(crate) key: String,
    /// The answers, one a request in the batch's order.
    pub(crate) answers: Vec<Outcome>,
}
