use std::time::Duration;

use super::spec::DAY;
use super::*;
use crate::{MemoryStore, TokenAdmin, TokenStore};
use tokengate_core::{Clock, ManualClock};
use tokengate_core::{KeyId, Pepper};

const HOUR: Duration = Duration::from_secs(3600);

fn setup() -> (Lifecycle<MemoryStore>, ManualClock) {
    let clock = ManualClock::new();
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [9u8; 32]).unwrap());
    let lifecycle = Lifecycle::new(MemoryStore::new(), hasher).with_clock(clock.shared());
    (lifecycle, clock)
}

fn spec() -> TokenSpec {
    TokenSpec::new("ci", "team-a")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()])
}

#[tokio::test]
async fn issued_token_is_found_by_its_hash_with_default_lifetime() {
    let (lc, clock) = setup();
    let issued = lc.issue(spec()).await.unwrap();
    assert_eq!(issued.record.expires_at, Some(clock.now() + 90 * DAY));
    let found = lc
        .store()
        .find_by_hash(&lc.hasher().hash(&issued.token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, issued.record);
    assert_eq!(lc.store().len(), 1);
}

#[tokio::test]
async fn policy_violations_are_refused_and_nothing_is_stored() {
    let (lc, clock) = setup();
    let too_long = lc
        .issue(spec().expiry(Expiry::After(91 * DAY)))
        .await
        .unwrap_err();
    assert!(
        matches!(too_long, LifecycleError::LifetimeTooLong { .. }),
        "{too_long}"
    );
    let never = lc.issue(spec().expiry(Expiry::Never)).await.unwrap_err();
    assert!(matches!(never, LifecycleError::NoExpiryNotAllowed));
    let past = lc
        .issue(spec().expiry(Expiry::At(clock.now() - HOUR)))
        .await
        .unwrap_err();
    assert!(matches!(past, LifecycleError::ExpiryNotInFuture));
    let now = lc
        .issue(spec().expiry(Expiry::At(clock.now())))
        .await
        .unwrap_err();
    assert!(matches!(now, LifecycleError::ExpiryNotInFuture));
    let no_aud = lc
        .issue(TokenSpec::new("ci", "team-a").scopes(["notes:read".parse().unwrap()]))
        .await
        .unwrap_err();
    assert!(matches!(no_aud, LifecycleError::NoAudience));
    let bad_name = lc
        .issue(TokenSpec::new("a\nb", "x").audiences(["n".parse().unwrap()]))
        .await;
    let err = bad_name.unwrap_err().to_string();
    assert!(err.contains(r#""a\nb""#), "{err}");
    let blank = lc
        .issue(TokenSpec::new("ci", "  ").audiences(["n".parse().unwrap()]))
        .await;
    assert!(matches!(
        blank,
        Err(LifecycleError::InvalidText {
            field: "subject",
            ..
        })
    ));
    assert!(lc.store().is_empty());
}

#[tokio::test]
async fn no_expiry_and_no_audience_need_explicit_opt_in() {
    let (lc, _) = setup();
    let lc = lc.with_policy(
        IssuancePolicy::default()
            .allow_no_expiry()
            .allow_no_audience()
            .allow_no_scope(),
    );
    let issued = lc
        .issue(TokenSpec::new("robot", "svc").expiry(Expiry::Never))
        .await
        .unwrap();
    assert_eq!(issued.record.expires_at, None);
    assert!(issued.record.audiences.is_empty());
}

#[tokio::test]
async fn scope_catalogue_refuses_undeclared_scopes_by_name() {
    let (lc, _) = setup();
    let lc = lc.with_policy(
        IssuancePolicy::default().scope_catalogue("notes:read notes:write".parse().unwrap()),
    );
    lc.issue(spec()).await.unwrap();
    let err = lc
        .issue(spec().scopes(["notes:delete".parse().unwrap()]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "scope notes:delete is not in the scope catalogue"
    );
    assert_eq!(lc.store().len(), 1);
    let err = lc
        .issue(spec().scopes(["Notes:Raed".parse().unwrap()]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "scope Notes:Raed is not in the scope catalogue (did you mean notes:read?)"
    );
}

#[tokio::test]
async fn max_lifetime_caps_default_lifetime() {
    let (lc, clock) = setup();
    let lc = lc.with_policy(IssuancePolicy::default().max_lifetime(7 * DAY));
    let issued = lc.issue(spec()).await.unwrap();
    assert_eq!(issued.record.expires_at, Some(clock.now() + 7 * DAY));
}

#[tokio::test]
async fn revoke_keeps_the_first_revocation_time() {
    let (lc, clock) = setup();
    let issued = lc.issue(spec()).await.unwrap();
    let first = lc.revoke(&issued.record.id).await.unwrap();
    assert_eq!(first.status(clock.now()), TokenStatus::Revoked);
    clock.advance(HOUR);
    let second = lc.revoke(&issued.record.id).await.unwrap();
    assert_eq!(second.revoked_at, first.revoked_at);
    let missing = lc.revoke(&TokenId::generate()).await.unwrap_err();
    assert!(matches!(
        missing,
        LifecycleError::Store(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn rotation_overlaps_for_the_grace_period_then_only_the_new_token_works() {
    let (lc, clock) = setup();
    let old = lc
        .issue(spec().expiry(Expiry::After(10 * DAY)))
        .await
        .unwrap();
    clock.advance(DAY);
    let new = lc.rotate(&old.record.id, HOUR).await.unwrap();
    assert_ne!(new.token, old.token);
    assert_eq!(new.record.rotated_from.as_ref(), Some(&old.record.id));
    assert_eq!(new.record.scopes, old.record.scopes);
    assert_eq!(new.record.audiences, old.record.audiences);
    assert_eq!(new.record.expires_at, Some(clock.now() + 10 * DAY));

    let stored_old = lc.get(&old.record.id).await.unwrap().unwrap();
    assert_eq!(stored_old.expires_at, Some(clock.now() + HOUR));
    assert_eq!(stored_old.status(clock.now()), TokenStatus::Active);
    clock.advance(HOUR);
    assert_eq!(stored_old.status(clock.now()), TokenStatus::Expired);
    assert_eq!(new.record.status(clock.now()), TokenStatus::Active);
}

#[tokio::test]
async fn grace_never_extends_an_earlier_expiry() {
    let (lc, clock) = setup();
    let old = lc.issue(spec().expiry(Expiry::After(HOUR))).await.unwrap();
    lc.rotate(&old.record.id, 5 * HOUR).await.unwrap();
    let stored = lc.get(&old.record.id).await.unwrap().unwrap();
    assert_eq!(stored.expires_at, Some(clock.now() + HOUR));
}

#[tokio::test]
async fn a_grace_past_the_clock_or_the_policy_is_refused_and_nothing_changes() {
    let (lc, _) = setup();
    let old = lc
        .issue(spec().expiry(Expiry::After(10 * DAY)))
        .await
        .unwrap();
    let id = old.record.id.clone();
    for grace in [
        Duration::MAX,
        humantime::parse_duration("300000000000y").unwrap(),
        91 * DAY,
    ] {
        let refused = lc.rotate(&id, grace).await.unwrap_err();
        assert!(
            matches!(refused, LifecycleError::GraceTooLong { requested, .. } if requested == grace),
            "{refused}"
        );
    }
    // Nothing was written: the old token keeps its expiry, and there is
    // no replacement.
    assert_eq!(lc.store().len(), 1);
    let kept = lc.get(&id).await.unwrap().unwrap();
    assert_eq!(kept.expires_at, old.record.expires_at);
    // The policy's longest lifetime is allowed (the old token's own expiry
    // still ends it first).
    lc.rotate(&id, 90 * DAY).await.unwrap();
    let ended = lc.get(&id).await.unwrap().unwrap();
    assert_eq!(ended.expires_at, old.record.expires_at);
}

#[tokio::test]
async fn revoked_expired_and_unknown_tokens_cannot_be_rotated() {
    let (lc, clock) = setup();
    let revoked = lc.issue(spec()).await.unwrap();
    lc.revoke(&revoked.record.id).await.unwrap();
    let err = lc.rotate(&revoked.record.id, HOUR).await.unwrap_err();
    assert!(matches!(
        err,
        LifecycleError::NotRotatable {
            status: TokenStatus::Revoked,
            ..
        }
    ));

    let expiring = lc.issue(spec().expiry(Expiry::After(HOUR))).await.unwrap();
    clock.advance(2 * HOUR);
    let err = lc.rotate(&expiring.record.id, HOUR).await.unwrap_err();
    assert!(matches!(
        err,
        LifecycleError::NotRotatable {
            status: TokenStatus::Expired,
            ..
        }
    ));

    let err = lc.rotate(&TokenId::generate(), HOUR).await.unwrap_err();
    assert!(matches!(
        err,
        LifecycleError::Store(StoreError::NotFound(_))
    ));
    assert_eq!(lc.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn list_is_ordered_by_creation() {
    let (lc, clock) = setup();
    let a = lc.issue(spec()).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let b = lc.issue(spec()).await.unwrap();
    let ids: Vec<_> = lc.list().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![a.record.id, b.record.id]);
}

#[tokio::test]
async fn usage_is_recorded_and_never_moves_backwards() {
    let (lc, clock) = setup();
    let issued = lc.issue(spec()).await.unwrap();
    let later = clock.now() + HOUR;
    lc.store()
        .record_usage(&[
            (issued.record.id.clone(), later),
            (TokenId::generate(), later),
        ])
        .await
        .unwrap();
    lc.store()
        .record_usage(&[(issued.record.id.clone(), clock.now())])
        .await
        .unwrap();
    let stored = lc.get(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(later));
}

#[tokio::test]
async fn a_token_with_no_scope_needs_explicit_opt_in() {
    let (lc, _) = setup();
    let err = lc
        .issue(TokenSpec::new("robot", "svc").audiences(["notes".parse().unwrap()]))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NoScope), "{err}");
    assert!(lc.store().is_empty());
}

#[tokio::test]
async fn lifetimes_under_a_second_are_refused_and_a_second_is_born_alive() {
    let (lc, _) = setup();
    for short in [
        Duration::from_nanos(1),
        Duration::from_micros(1),
        Duration::from_micros(500),
        Duration::from_millis(999),
    ] {
        let err = lc
            .issue(spec().expiry(Expiry::After(short)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LifecycleError::LifetimeTooShort { .. }),
            "{short:?}: {err}"
        );
    }
    assert!(lc.store().is_empty());
    let issued = lc
        .issue(spec().expiry(Expiry::After(Duration::from_secs(1))))
        .await
        .unwrap();
    assert_eq!(
        issued.record.status(issued.record.created_at),
        TokenStatus::Active
    );
}

#[tokio::test]
async fn rotating_a_token_without_expiry_keeps_it_without_expiry() {
    let (lc, _) = setup();
    let lc = lc.with_policy(IssuancePolicy::default().allow_no_expiry());
    let old = lc.issue(spec().expiry(Expiry::Never)).await.unwrap();
    // The policy of the rotating process need not allow new unexpiring tokens.
    let lc = lc.with_policy(IssuancePolicy::default());
    let new = lc
        .rotate(&old.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(new.record.expires_at, None);
    assert_eq!(new.record.scopes, old.record.scopes);
    let told = lc
        .rotate_with_expiry(
            &new.record.id,
            Duration::from_secs(60),
            Some(Expiry::After(Duration::from_secs(3600))),
        )
        .await
        .unwrap();
    assert!(told.record.expires_at.is_some());
}

#[tokio::test]
async fn the_memory_store_passes_the_store_conformance_suite() {
    crate::testing::store_conformance(MemoryStore::new()).await;
}
