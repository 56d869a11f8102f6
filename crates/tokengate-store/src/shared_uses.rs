//! A counter shared in front of the store for usage-limited tokens.

use std::time::Duration;

use tokengate_core::TokenId;

/// Where a shared counter keeps a usage-limited token's leased uses: the
/// token, its count's generation and the refill window. Uses leased under
/// another generation or window are not this key's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UseKey {
    /// The token.
    pub token: TokenId,
    /// [`Uses::generation`](tokengate_core::Uses::generation).
    pub generation: u64,
    /// [`UseLimit::window`](tokengate_core::UseLimit::window).
    pub window: u64,
}

/// A lease's answer to a spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSpend {
    /// One use spent from the lease; `left` uses remain (in the lease and,
    /// as last seen, in the store).
    Spent {
        /// The uses left.
        left: u64,
    },
    /// The lease holds no use. From [`SharedUses::spend`]: take more from
    /// the store, then [`grant`](SharedUses::grant) or
    /// [`settle`](SharedUses::settle). From `settle`: none is left
    /// anywhere.
    Empty,
    /// From [`SharedUses::settle`]: the lease is empty but another request
    /// is taking uses from the store for it; ask again shortly.
    Pending,
}

/// A [`SharedUses`] answer, later.
pub type UsesFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, SharedUsesError>> + Send>>;

/// A shared counter in front of the store for usage-limited tokens (the
/// Redis rate state's [`uses`](https://docs.rs/tokengate-redis)): it holds
/// leases of uses taken from the store in batches, and spends them one at
/// a time, atomically, for every instance. The store stays the truth: a
/// use is only ever spent once, from a lease or from the store, so a
/// token never admits more than its count; uses leased and not spent
/// before their key expires (or Redis loses them) are lost, never
/// doubled.
///
/// The protocol, per request: [`spend`](Self::spend); when the lease is
/// empty the caller has become a refiller (the counter counts it), takes
/// uses from the store, and either [`grant`](Self::grant)s them (keeping
/// one) or, when the store had none, [`settle`](Self::settle)s, which
/// spends a use another refiller granted meanwhile, says `Pending` while
/// refills are still in flight, and `Empty` only when none is left
/// anywhere: so a burst is refused only once every use was spent.
///
/// A future of this trait may be dropped before it answers (its request's
/// [`SharedDeadline`](tokengate_core::SharedDeadline) passed, and the request spent
/// in the store instead): a spend whose answer was never received must be
/// given back when it lands, or that request would spend twice; a grant
/// must still land, or the uses taken for it are lost.
pub trait SharedUses: Send + Sync + 'static {
    /// How many uses to take from the store when a lease is empty.
    fn lease_size(&self) -> u64;

    /// How long the counter may be waited for: a request's calls to it
    /// share one [`SharedDeadline`](tokengate_core::SharedDeadline) started from it.
    fn wait_budget(&self) -> Duration;

    /// Spends one use of `key`'s lease; when it is empty, counts the
    /// caller as a refiller (the lease kept for `keep`) and answers
    /// `Empty`.
    fn spend(&self, key: &UseKey, keep: Duration) -> UsesFuture<LeaseSpend>;

    /// A refiller's `uses`, just taken from the store (which has `behind`
    /// left): adds them to `key`'s lease, kept for `keep` (until the
    /// refill window ends), and ends the refill.
    fn grant(&self, key: &UseKey, uses: u64, behind: u64, keep: Duration) -> UsesFuture<()>;

    /// A refiller that found the store empty (`ended`: this ends its
    /// refill; `false` when asking again): spends a use granted meanwhile,
    /// or says whether other refills are still in flight.
    fn settle(&self, key: &UseKey, ended: bool) -> UsesFuture<LeaseSpend>;

    /// A use of `key`'s token was spent in the store directly (the counter
    /// did not answer in time), which then had `behind` left: the lease's
    /// later answers count from it.
    fn note(&self, key: &UseKey, behind: u64) -> UsesFuture<()> {
        let _ = (key, behind);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A shared counter that did not answer (in time).
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared use counter unavailable: {0}")]
pub struct SharedUsesError(pub std::sync::Arc<str>);
