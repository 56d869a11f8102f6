//! Usage-limited tokens: one use spent in the store per admitted request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response};
use tokengate_core::metric_names::STORE_ERRORS;
use tokengate_core::{
    Admit, Check, Denial, Principal, StoreError, TOKEN_USES_REMAINING, TokenStore, UseLimit,
    Verdict,
};

use crate::layer::UseLimitLayer;

/// The count left after an admitted request, as `token-uses-remaining`.
#[derive(Debug, Clone, Default)]
pub struct UsesLeft(Option<u64>);

impl Admit for UsesLeft {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        if let Some(left) = self.0 {
            response
                .headers_mut()
                .insert(TOKEN_USES_REMAINING, HeaderValue::from(left));
        }
    }
}

/// The store's answer to a spend, with what it is read against.
#[derive(Debug)]
pub struct Spent {
    answer: Result<Option<u64>, StoreError>,
    limit: UseLimit,
    at: SystemTime,
}

/// A spend the store has not answered yet. Boxed: only usage-limited
/// tokens make one.
pub struct SpendWait(Pin<Box<dyn Future<Output = Spent> + Send>>);

impl Future for SpendWait {
    type Output = Spent;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Spent> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for SpendWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendWait").finish_non_exhaustive()
    }
}

impl<B, St: TokenStore> Check<B> for UseLimitLayer<St> {
    type Admit = UsesLeft;
    type Wait = SpendWait;

    #[inline(always)]
    fn check(&self, request: &mut Request<B>) -> Verdict<UsesLeft, SpendWait> {
        let Some(principal) = request.extensions().get::<Principal>() else {
            return Verdict::Admit(UsesLeft(None));
        };
        let Some(limit) = principal.use_limit() else {
            return Verdict::Admit(UsesLeft(None));
        };
        let config = &*self.config;
        let (limit, at) = (*limit, config.clock.now());
        let id = principal.token_id().clone();
        let store = config.verifier.clone();
        let timeout = config.lookup_timeout;
        Verdict::Wait(SpendWait(Box::pin(async move {
            let spend = store.spend_use(&id, limit.spend_at(at));
            let answer = match tokio::time::timeout(timeout, spend).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Timeout),
            };
            Spent { answer, limit, at }
        })))
    }

    fn resume(&self, request: &mut Request<B>, spent: Spent) -> Verdict<UsesLeft, SpendWait> {
        let denial = match spent.answer {
            Ok(Some(left)) => return Verdict::Admit(UsesLeft(Some(left))),
            Ok(None) => Denial::UsageExhausted {
                retry_after: spent.limit.next_refill(spent.at),
            },
            Err(error) => {
                let kind = if matches!(error, StoreError::Timeout) {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!(STORE_ERRORS, "kind" => kind).increment(1);
                tracing::warn!(%error, "cannot spend a use of a usage-limited token; refused");
                Denial::StoreUnavailable
            }
        };
        Verdict::Refuse(self.config.renderer.refuse(request, denial))
    }
}
