use super::*;
use tokengate_core::{Clock, TokenFormat};
use tokengate_store::{Expiry, TokenSpec};

const SEC: Duration = Duration::from_secs(1);

type Fixture = crate::testing::World;

fn fixture(config: CacheConfig) -> Fixture {
    Fixture::with_config(config)
}

fn spec() -> TokenSpec {
    TokenSpec::new("t", "owner")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()])
}

impl Fixture {
    async fn issue(&self, expiry: Expiry) -> (TokenHash, TokenId) {
        let issued = self.lifecycle.issue(spec().expiry(expiry)).await.unwrap();
        (
            self.lifecycle.hasher().hash(&issued.token),
            issued.record.id,
        )
    }

    fn random_hash(&self) -> TokenHash {
        self.lifecycle
            .hasher()
            .hash(&TokenFormat::default().generate())
    }
}

fn reason(result: Result<Principal, VerifyError>) -> InvalidReason {
    match result {
        Err(VerifyError::Invalid(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[tokio::test]
async fn hits_are_served_without_store_calls() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    for _ in 0..5 {
        assert_eq!(f.cache.verify(&hash).await.unwrap().token_id(), &id);
    }
    assert_eq!(f.probe.lookups(), 1);
}

#[tokio::test]
async fn revoke_through_the_cache_fails_the_very_next_lookup() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    f.lifecycle.revoke(&id).await.unwrap();
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_lookups_make_one_store_call() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.probe.hold_next_lookup();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.verify(&hash).await })
        })
        .collect();
    f.probe.held().await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    f.probe.release();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().token_id(), &id);
    }
    assert_eq!(f.probe.lookups(), 1);
}

#[tokio::test]
async fn verify_cached_answers_hits_and_defers_misses() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::After(10 * SEC)).await;
    assert!(
        f.cache.verify_cached(&hash).is_none(),
        "a miss needs the store"
    );
    f.cache.verify(&hash).await.unwrap();
    assert_eq!(
        f.cache.verify_cached(&hash).unwrap().unwrap().token_id(),
        &id
    );
    f.clock.advance(10 * SEC);
    assert_eq!(
        reason(f.cache.verify_cached(&hash).unwrap()),
        InvalidReason::Expired
    );
    let unknown = f.random_hash();
    f.cache.verify(&unknown).await.unwrap_err();
    assert_eq!(
        reason(f.cache.verify_cached(&unknown).unwrap()),
        InvalidReason::Unknown
    );
    assert_eq!(f.probe.lookups(), 2);
}

#[tokio::test]
async fn store_errors_are_not_cached() {
    let f = fixture(CacheConfig::default());
    let (hash, _) = f.issue(Expiry::Default).await;
    f.probe.set_failing(true);
    let err = f.cache.verify(&hash).await.unwrap_err();
    assert!(matches!(err, VerifyError::Store(StoreError::Timeout)));
    assert_eq!(err.to_denial(), Denial::StoreUnavailable);
    assert_eq!(
        err.to_denial().status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    f.probe.set_failing(false);
    f.cache.verify(&hash).await.unwrap();
    assert_eq!(f.probe.lookups(), 2);
}

#[tokio::test]
async fn unknown_hashes_are_remembered_for_the_negative_ttl() {
    let f = fixture(CacheConfig::default().negative_ttl(10 * SEC));
    let hash = f.random_hash();
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Unknown);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Unknown);
    assert_eq!(f.probe.lookups(), 1);
    f.clock.advance(10 * SEC);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Unknown);
    assert_eq!(f.probe.lookups(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_tokens_stays_within_the_negative_bound() {
    let f = fixture(CacheConfig::default().max_negative_entries(500));
    for _ in 0..5_000 {
        let hash = f.random_hash();
        assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Unknown);
    }
    let stats = f.cache.stats();
    assert!(stats.negative_entries <= 500, "{stats:?}");
    assert_eq!(stats.entries, 0);
    let (hash, id) = f.issue(Expiry::Default).await;
    assert_eq!(f.cache.verify(&hash).await.unwrap().token_id(), &id);
}

#[tokio::test]
async fn expiry_is_honoured_mid_ttl() {
    let f = fixture(CacheConfig::default().ttl(60 * SEC));
    let (hash, _) = f.issue(Expiry::After(10 * SEC)).await;
    f.cache.verify(&hash).await.unwrap();
    f.clock.advance(9 * SEC);
    f.cache.verify(&hash).await.unwrap();
    f.clock.advance(SEC);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Expired);
    assert_eq!(
        f.probe.lookups(),
        1,
        "expiry was judged on the cached entry"
    );
}

#[tokio::test]
async fn ttl_counts_from_insertion_and_bounds_revocations_made_elsewhere() {
    let f = fixture(CacheConfig::default().ttl(30 * SEC));
    let (hash, id) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    // Another process revokes straight in the store; no event reaches us.
    f.probe.inner().revoke(&id, f.clock.now()).await.unwrap();
    for _ in 0..3 {
        f.clock.advance(9 * SEC);
        f.cache.verify(&hash).await.unwrap();
    }
    assert_eq!(f.probe.lookups(), 1, "reads must not refresh the entry");
    f.clock.advance(3 * SEC);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
    assert_eq!(f.probe.lookups(), 2);
}

#[tokio::test]
async fn revocation_events_from_elsewhere_apply_at_once() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    f.probe.inner().revoke(&id, f.clock.now()).await.unwrap();
    f.cache.apply(&FeedEvent::Token { id, hash });
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
}

#[tokio::test]
async fn invalidate_by_id_finds_the_hash_in_the_store() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    f.probe.inner().revoke(&id, f.clock.now()).await.unwrap();
    f.cache.invalidate_id(&id).await.unwrap();
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
}

#[tokio::test]
async fn invalidate_by_id_with_the_store_down_forgets_everything() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    f.probe.inner().revoke(&id, f.clock.now()).await.unwrap();
    f.probe.set_failing(true);
    let err = f.cache.invalidate_id(&id).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout));
    f.probe.set_failing(false);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_racing_a_revocation_loses() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    f.probe.hold_next_lookup();
    let stale = {
        let cache = f.cache.clone();
        tokio::spawn(async move { cache.verify(&hash).await })
    };
    // The first lookup has read the unrevoked record and is held.
    f.probe.held().await;
    f.lifecycle.revoke(&id).await.unwrap();
    // A request after revoke() returned must not join the stale lookup.
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
    f.probe.release();
    // The stale lookup was concurrent with the revocation; it may answer
    // with what it read, but it must not put that answer in the cache.
    assert!(stale.await.unwrap().is_ok());
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Revoked);
}

#[tokio::test]
async fn a_clock_set_back_makes_entries_stale() {
    let f = fixture(CacheConfig::default());
    let (hash, _) = f.issue(Expiry::Default).await;
    f.cache.verify(&hash).await.unwrap();
    f.clock.set(f.clock.now() - 3600 * SEC);
    f.cache.verify(&hash).await.unwrap();
    assert_eq!(f.probe.lookups(), 2);
}

#[tokio::test]
async fn rotation_through_the_cache_keeps_both_tokens_during_grace() {
    let f = fixture(CacheConfig::default());
    let old = f.lifecycle.issue(spec()).await.unwrap();
    let old_hash = f.lifecycle.hasher().hash(&old.token);
    f.cache.verify(&old_hash).await.unwrap();
    let new = f.lifecycle.rotate(&old.record.id, 60 * SEC).await.unwrap();
    let new_hash = f.lifecycle.hasher().hash(&new.token);
    f.cache.verify(&old_hash).await.unwrap();
    f.cache.verify(&new_hash).await.unwrap();
    f.clock.advance(60 * SEC);
    assert_eq!(
        reason(f.cache.verify(&old_hash).await),
        InvalidReason::Expired
    );
    f.cache.verify(&new_hash).await.unwrap();
}

#[tokio::test]
async fn cancelled_lookups_leave_no_flight_behind() {
    let f = fixture(CacheConfig::default());
    let (hash, _) = f.issue(Expiry::Default).await;
    f.probe.hold_next_lookup();
    let cache = f.cache.clone();
    let task = tokio::spawn(async move { cache.verify(&hash).await });
    f.probe.held().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(lock(&f.cache.shared.flights).is_empty());
    f.cache.verify(&hash).await.unwrap();
}

#[tokio::test]
async fn many_valid_tokens_stay_within_the_bound_and_a_hot_token_stays_cached() {
    let f = fixture(CacheConfig::default().max_entries(8));
    let (hot, _) = f.issue(Expiry::Default).await;
    f.cache.verify(&hot).await.unwrap();
    for _ in 0..40 {
        let (hash, id) = f.issue(Expiry::Default).await;
        assert_eq!(f.cache.verify(&hash).await.unwrap().token_id(), &id);
        // The hot token is read between every newcomer: it keeps its slot.
        f.cache.verify(&hot).await.unwrap();
    }
    assert_eq!(f.cache.stats().entries, 8);
    assert_eq!(f.probe.lookups(), 41, "the hot token was looked up once");
}

#[tokio::test]
async fn expired_entries_make_room_before_live_ones() {
    let f = fixture(CacheConfig::default().max_entries(2));
    let (short, _) = f.issue(Expiry::After(5 * SEC)).await;
    let (long, _) = f.issue(Expiry::Default).await;
    f.cache.verify(&short).await.unwrap();
    f.cache.verify(&long).await.unwrap();
    f.clock.advance(6 * SEC);
    let (newcomer, _) = f.issue(Expiry::Default).await;
    f.cache.verify(&newcomer).await.unwrap();
    let lookups = f.probe.lookups();
    f.cache.verify(&long).await.unwrap();
    f.cache.verify(&newcomer).await.unwrap();
    assert_eq!(
        f.probe.lookups(),
        lookups,
        "both live tokens are still cached"
    );
    assert_eq!(reason(f.cache.verify(&short).await), InvalidReason::Expired);
}

#[tokio::test]
async fn the_cache_in_front_of_a_store_passes_the_store_conformance_suite() {
    let cache = CachedStore::new(tokengate_store::MemoryStore::new(), CacheConfig::default());
    tokengate_store::testing::store_conformance(cache).await;
}

#[tokio::test]
async fn a_disabled_token_is_refused_as_disabled_and_enabling_restores_it() {
    let f = fixture(CacheConfig::default());
    let (hash, id) = f.issue(Expiry::Default).await;
    assert_eq!(f.cache.verify(&hash).await.unwrap().token_id(), &id);
    f.lifecycle.disable(&id).await.unwrap();
    assert_eq!(reason(f.cache.verify(&hash).await), InvalidReason::Disabled);
    f.lifecycle.enable(&id).await.unwrap();
    assert_eq!(f.cache.verify(&hash).await.unwrap().token_id(), &id);
}
