//! The owner-notification hook and its queue: the slow part of a report
//! (mail, chat, a ticket), run off the provider's request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokengate_core::TokenId;
use tokengate_store::LeakOutcome;
use tokio::sync::mpsc;

/// A live token reported leaked, as the owner-notification hook gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeakNotice {
    /// The token's id.
    pub token_id: TokenId,
    /// The token's owner.
    pub subject: String,
    /// The token's name.
    pub name: String,
    /// Who reported it: `github`, `gitlab`.
    pub reporter: &'static str,
    /// Where it leaked, as the provider said (a URL), if it said.
    pub source: Option<String>,
    /// What was done: revoked, disabled, or nothing
    /// ([`LeakOutcome::Notified`]).
    pub outcome: LeakOutcome,
}

/// Tells a leaked token's owner (mail, chat, a ticket): called once for
/// every live token a report names, off the report's request, one notice
/// at a time. Any `Fn(LeakNotice) -> impl Future<Output = ()>` is one.
pub trait NotifyOwner: Send + Sync + 'static {
    /// Tells the owner of `notice`'s token.
    fn notify(&self, notice: LeakNotice) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

impl<F, Fut> NotifyOwner for F
where
    F: Fn(LeakNotice) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn notify(&self, notice: LeakNotice) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(self(notice))
    }
}

/// The queue in front of the hook: bounded, so a flood of reports cannot
/// grow memory; a notice that finds it full is dropped, counted
/// ([`LEAK_NOTICES_DROPPED`](super::LEAK_NOTICES_DROPPED)) and logged with
/// its token id. The revocation and the audit record never wait for it.
pub(crate) struct Notifier {
    hook: Arc<dyn NotifyOwner>,
    capacity: usize,
    queue: OnceLock<mpsc::Sender<LeakNotice>>,
}

impl Notifier {
    pub(crate) fn new(hook: Arc<dyn NotifyOwner>, capacity: usize) -> Self {
        Self {
            hook,
            capacity: capacity.max(1),
            queue: OnceLock::new(),
        }
    }

    /// Queues `notice`; the worker starts with the first one (on the
    /// runtime of the request that brought it).
    pub(crate) fn send(&self, notice: LeakNotice) {
        let queue = self.queue.get_or_init(|| {
            let (sender, mut receiver) = mpsc::channel::<LeakNotice>(self.capacity);
            let hook = Arc::clone(&self.hook);
            tokio::spawn(async move {
                while let Some(notice) = receiver.recv().await {
                    hook.notify(notice).await;
                }
            });
            sender
        });
        if let Err(error) = queue.try_send(notice) {
            let notice = match error {
                mpsc::error::TrySendError::Full(notice)
                | mpsc::error::TrySendError::Closed(notice) => notice,
            };
            metrics::counter!(super::LEAK_NOTICES_DROPPED).increment(1);
            tracing::warn!(
                token_id = %notice.token_id,
                "leak notice dropped: the owner-notification queue is full"
            );
        }
    }
}
