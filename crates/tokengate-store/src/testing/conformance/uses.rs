//! The conformance of usage-limited tokens: counts spent, reset, kept,
//! refilled, handed over and cleared alike on every store.

use super::*;

/// Usage-limited tokens: the count as issued, spent one at a time to
/// none, reset, kept by a new limit, refilled in a later window, handed
/// over by rotation, cleared with the limit.
/// Lowering a limit caps the count left (and starts a new generation, so
/// leased uses above it no longer count); raising it keeps the count; a
/// count a store cannot keep is refused, not stored as something else.
async fn lowering_a_limit_caps_the_count<S: TokenStore + TokenAdmin>(
    lifecycle: &Lifecycle<S>,
    id: &TokenId,
) {
    let limit = |n| UseLimit::new(std::num::NonZeroU64::new(n).unwrap());
    lifecycle
        .update(id, &TokenPatch::new().uses(Some(limit(100))))
        .await
        .unwrap();
    let full = lifecycle
        .reset_uses(id, Some(99))
        .await
        .unwrap()
        .uses
        .unwrap();
    assert_eq!(full.remaining, 99);
    let lowered = lifecycle
        .update(id, &TokenPatch::new().uses(Some(limit(3))))
        .await
        .unwrap()
        .uses
        .unwrap();
    assert_eq!((lowered.limit, lowered.remaining), (limit(3), 3));
    let stored = lifecycle.get(id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!(stored.remaining, 3, "the store caps the count too");
    assert!(
        stored.generation > full.generation,
        "a cap starts a new generation"
    );
    let raised = lifecycle
        .update(id, &TokenPatch::new().uses(Some(limit(50))))
        .await
        .unwrap()
        .uses
        .unwrap();
    assert_eq!(raised.remaining, 3, "raising keeps the count");
    assert_eq!(raised.generation, stored.generation);
    let stored = lifecycle.get(id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!((stored.limit, stored.remaining), (limit(50), 3));

    for (changes, field) in [
        (TokenPatch::new().uses(Some(limit(u64::MAX))), "uses"),
        (
            TokenPatch::new().uses(Some(
                limit(5).with_refill(
                    tokengate_core::Refill::new(
                        std::num::NonZeroU64::new(u64::MAX).unwrap(),
                        Duration::from_secs(60),
                    )
                    .unwrap(),
                ),
            )),
            "refill",
        ),
    ] {
        assert!(matches!(
            lifecycle.update(id, &changes).await,
            Err(LifecycleError::UsesOutOfRange { field: f, value: u64::MAX }) if f == field
        ));
    }
    assert!(matches!(
        lifecycle.reset_uses(id, Some(u64::MAX)).await,
        Err(LifecycleError::UsesOutOfRange {
            field: "remaining",
            ..
        })
    ));
    assert!(matches!(
        lifecycle
            .issue(reader("huge", "team-u").uses(limit(UseLimit::MAX + 1)))
            .await,
        Err(LifecycleError::UsesOutOfRange { field: "uses", .. })
    ));
    let stored = lifecycle.get(id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!(
        (stored.limit, stored.remaining),
        (limit(50), 3),
        "nothing changed"
    );
}

pub(super) async fn uses_conformance<S: TokenStore + TokenAdmin>(lifecycle: &Lifecycle<S>) {
    let store = lifecycle.store();
    let three = UseLimit::new(std::num::NonZeroU64::new(3).unwrap());
    let issued = lifecycle
        .issue(reader("metered", "team-u").uses(three))
        .await
        .unwrap();
    let id = issued.record.id.clone();
    let now = SystemTime::now();
    let found = store
        .find_by_hash(&lifecycle.hasher().hash(&issued.token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found.uses,
        Some(Uses::fresh(three, now)),
        "issued with every use"
    );
    let spend = three.spend_at(now);
    for left in [2, 1, 0] {
        assert_eq!(store.spend_use(&id, spend).await.unwrap(), Some(left));
    }
    assert_eq!(
        store.spend_use(&id, spend).await.unwrap(),
        None,
        "none left"
    );
    let spent = lifecycle.get(&id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!(spent.remaining, 0, "the count is stored");

    // A reset, to the limit or to a count given.
    let reset = lifecycle.reset_uses(&id, None).await.unwrap();
    assert_eq!(reset.uses.map(|u| u.remaining), Some(3));
    let reset = lifecycle.reset_uses(&id, Some(1)).await.unwrap();
    assert_eq!(reset.uses.map(|u| u.remaining), Some(1));
    assert_eq!(store.spend_use(&id, spend).await.unwrap(), Some(0));

    // A costly request spends its whole cost or nothing.
    lifecycle.reset_uses(&id, None).await.unwrap();
    assert_eq!(
        store.spend_use(&id, spend.costing(2)).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.spend_use(&id, spend.costing(2)).await.unwrap(),
        None,
        "one left, two asked"
    );
    let kept = lifecycle.get(&id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!(kept.remaining, 1, "a refused spend spends nothing");
    assert_eq!(store.spend_use(&id, spend).await.unwrap(), Some(0));

    // A new limit keeps the count; a refill in a later window sets it.
    let hourly =
        UseLimit::new(std::num::NonZeroU64::new(5).unwrap()).with_refill("4/1h".parse().unwrap());
    let changed = lifecycle
        .update(&id, &TokenPatch::new().uses(Some(hourly)))
        .await
        .unwrap();
    let uses = changed.uses.unwrap();
    assert_eq!((uses.limit, uses.remaining), (hourly, 0), "the count stays");
    assert_eq!(
        store.spend_use(&id, hourly.spend_at(now)).await.unwrap(),
        None
    );
    let next_hour = now + Duration::from_secs(3_600);
    assert_eq!(
        store
            .spend_use(&id, hourly.spend_at(next_hour))
            .await
            .unwrap(),
        Some(3),
        "refilled to 4, one spent"
    );

    // Rotation hands the count over; the old token keeps none, for good.
    let replacement = lifecycle
        .rotate(&id, Duration::from_secs(60))
        .await
        .unwrap();
    let new_id = replacement.record.id.clone();
    let handed = lifecycle.get(&new_id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!((handed.limit, handed.remaining), (hourly, 3));
    let old = lifecycle.get(&id).await.unwrap().unwrap().uses.unwrap();
    assert_eq!((old.remaining, old.window), (0, SPENT_FOR_GOOD));
    let far = now + Duration::from_secs(3_600 * 1_000);
    assert_eq!(
        store.spend_use(&id, hourly.spend_at(far)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .spend_use(&new_id, hourly.spend_at(next_hour))
            .await
            .unwrap(),
        Some(2)
    );

    // No limit: no count, nothing to spend or reset.
    let unlimited = lifecycle
        .update(&new_id, &TokenPatch::new().uses(None))
        .await
        .unwrap();
    assert_eq!(unlimited.uses, None);
    assert_eq!(store.spend_use(&new_id, spend).await.unwrap(), None);
    assert!(matches!(
        lifecycle.reset_uses(&new_id, None).await,
        Err(LifecycleError::NotUsageLimited { .. })
    ));
    // Limited again: all of the limit's uses.
    let again = lifecycle
        .update(&new_id, &TokenPatch::new().uses(Some(three)))
        .await
        .unwrap();
    assert_eq!(again.uses.map(|u| u.remaining), Some(3));
    lowering_a_limit_caps_the_count(lifecycle, &new_id).await;
    assert_eq!(
        store.spend_use(&TokenId::generate(), spend).await.unwrap(),
        None,
        "an unknown token has no uses"
    );
    assert!(matches!(
        store.reset_uses(&TokenId::generate(), 1, 0).await,
        Err(StoreError::NotFound(_))
    ));

    // Leases: up to `want` at once, never more than is left; a reset and
    // a rotation start a new generation.
    let five = UseLimit::new(std::num::NonZeroU64::new(5).unwrap());
    let leased = lifecycle
        .issue(reader("leased", "team-u").uses(five))
        .await
        .unwrap()
        .record;
    let spend = five.spend_at(now);
    let take = |want| store.take_uses(&leased.id, spend, want);
    assert_eq!(take(3).await.unwrap(), Taken { taken: 3, left: 2 });
    assert_eq!(take(3).await.unwrap(), Taken { taken: 2, left: 0 });
    assert_eq!(take(3).await.unwrap(), Taken::default(), "none left");
    assert_eq!(
        store
            .take_uses(&TokenId::generate(), spend, 3)
            .await
            .unwrap(),
        Taken::default()
    );
    let generation = |record: tokengate_core::TokenRecord| record.uses.unwrap().generation;
    let before = generation(lifecycle.get(&leased.id).await.unwrap().unwrap());
    let reset = lifecycle.reset_uses(&leased.id, None).await.unwrap();
    assert_eq!(generation(reset), before + 1, "a reset starts a generation");
    lifecycle
        .rotate(&leased.id, Duration::from_secs(60))
        .await
        .unwrap();
    let old = lifecycle.get(&leased.id).await.unwrap().unwrap();
    assert_eq!(generation(old), before + 2, "so does a hand-over");
}
