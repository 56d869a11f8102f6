//! One suite every token store passes: memory, SQLite and PostgreSQL run
//! it against a fresh, empty store of their own.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test suite: a broken expectation panics, naming it"
)]

use std::time::{Duration, SystemTime};

mod usage;
mod uses;
mod webhooks;
use usage::usage_conformance;
use uses::uses_conformance;
use webhooks::webhooks_conformance;

use crate::{
    Expiry, Lifecycle, LifecycleError, StoreError, TokenAdmin, TokenPatch, TokenSpec, TokenStore,
};
use tokengate_core::Taken;
use tokengate_core::{Binding, Thumbprint};
use tokengate_core::{KeyId, TokenHasher};
use tokengate_core::{Pepper, TokenId};
use tokengate_core::{RateQuota, TokenStatus};
use tokengate_core::{SPENT_FOR_GOOD, UseLimit, Uses};

/// Runs the admin contract against `store` (fresh and empty): issue and
/// find, update (every changeable field, the identity kept), disable and
/// enable, revoke (and no change after it), unknown ids.
///
/// # Panics
///
/// On the first broken expectation, naming it.
pub async fn store_conformance<S: TokenStore + TokenAdmin>(store: S) {
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [9; 32]).unwrap());
    let lifecycle = Lifecycle::new(store, hasher.clone());
    uses_conformance(&lifecycle).await;
    usage_conformance(lifecycle.store()).await;
    webhooks_conformance(&lifecycle).await;
    query_conformance(&lifecycle).await;
    version_conformance(&lifecycle).await;
    admin_conformance(&lifecycle).await;
    let day = Duration::from_secs(86_400);
    let issued = lifecycle
        .issue(
            TokenSpec::new("ci", "team-a")
                .scopes([
                    "notes:read".parse().unwrap(),
                    "notes:write".parse().unwrap(),
                ])
                .audiences(["notes".parse().unwrap()])
                .expiry(Expiry::After(30 * day))
                .metadata("env", "prod"),
        )
        .await
        .unwrap();
    let id = issued.record.id.clone();
    let hash = hasher.hash(&issued.token);
    let found = lifecycle
        .store()
        .find_by_hash(&hash)
        .await
        .unwrap()
        .expect("issued, found");
    assert_eq!(found.id, id, "find_by_hash finds the issued token");
    assert_eq!(found.disabled_at, None);

    // Every changeable field at once; the identity stays.
    let quota = RateQuota::new(
        std::num::NonZeroU32::new(5).unwrap(),
        Duration::from_secs(60),
        std::num::NonZeroU32::new(2).unwrap(),
    )
    .unwrap();
    let daily = RateQuota::new(
        std::num::NonZeroU32::new(1_000).unwrap(),
        Duration::from_secs(86_400),
        std::num::NonZeroU32::new(50).unwrap(),
    )
    .unwrap();
    let changes = TokenPatch::new()
        .name("ci-renamed")
        .remove_scope("notes:write".parse().unwrap())
        .add_scope("notes:list".parse().unwrap())
        .audiences(["notes".parse().unwrap(), "billing".parse().unwrap()])
        .expiry(Expiry::After(7 * day))
        .allowed_networks(["10.0.0.0/8".parse().unwrap()])
        .rate_quotas([quota, daily])
        .binding(Some(Binding::Dpop(Thumbprint::new([3; 32]))))
        .set_metadata("team", "a")
        .remove_metadata("env");
    let before = SystemTime::now();
    let updated = lifecycle.update(&id, &changes).await.unwrap();
    let stored = lifecycle
        .store()
        .find_by_hash(&hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated, stored, "update returns what is stored");
    assert_eq!(stored.id, id);
    assert_eq!(stored.hash, hash, "the secret stays");
    assert_eq!(stored.subject, "team-a");
    assert_eq!(stored.name, "ci-renamed");
    assert_eq!(stored.scopes.to_string(), "notes:list notes:read");
    assert_eq!(stored.audiences.len(), 2);
    let expires = stored.expires_at.unwrap();
    assert!(expires >= before + 7 * day - Duration::from_secs(1) && expires < before + 8 * day);
    assert_eq!(
        stored.allowed_networks,
        ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(
        stored.rate_quotas,
        [quota, daily],
        "several quotas, in order"
    );
    assert_eq!(
        stored.binding,
        Some(Binding::Dpop(Thumbprint::new([3; 32]))),
        "a binding is stored"
    );
    assert_eq!(stored.metadata.get("team").map(String::as_str), Some("a"));
    assert!(!stored.metadata.contains_key("env"));
    // Stores keep times at their own precision (milliseconds, microseconds).
    let created = issued.record.created_at;
    assert!(
        created
            .duration_since(stored.created_at)
            .unwrap_or_default()
            < Duration::from_millis(1),
        "the creation time stays"
    );

    // A quota dropped, networks opened again.
    let opened = lifecycle
        .update(
            &id,
            &TokenPatch::new()
                .rate_quota(None)
                .allowed_networks([])
                .binding(Some(Binding::Certificate(Thumbprint::new([4; 32])))),
        )
        .await
        .unwrap();
    assert_eq!(opened.rate_quotas, []);
    // Too many: refused, nothing changed; the same twice is kept once.
    let many = (1..=6).map(|n| {
        let count = std::num::NonZeroU32::new(n).unwrap();
        RateQuota::new(count, Duration::from_secs(60), count).unwrap()
    });
    assert!(matches!(
        lifecycle
            .update(&id, &TokenPatch::new().rate_quotas(many))
            .await,
        Err(LifecycleError::RateQuotas { .. })
    ));
    let twice = TokenPatch::new().rate_quotas([quota, quota]);
    let once = lifecycle.update(&id, &twice).await.unwrap();
    assert_eq!(once.rate_quotas, [quota]);
    let dropped = TokenPatch::new().rate_quotas([]);
    assert_eq!(
        lifecycle.update(&id, &dropped).await.unwrap().rate_quotas,
        []
    );
    assert_eq!(
        opened.binding,
        Some(Binding::Certificate(Thumbprint::new([4; 32]))),
        "a binding is replaced"
    );
    let unbound = lifecycle
        .update(&id, &TokenPatch::new().binding(None))
        .await
        .unwrap();
    assert_eq!(unbound.binding, None, "a binding is removed");
    // Issued bound, and a rotation keeps the binding.
    let bound = lifecycle
        .issue(
            TokenSpec::new("bound", "team-a")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()])
                .binding(Binding::Dpop(Thumbprint::new([6; 32]))),
        )
        .await
        .unwrap();
    let stored_bound = lifecycle.get(&bound.record.id).await.unwrap().unwrap();
    assert_eq!(
        stored_bound.binding,
        Some(Binding::Dpop(Thumbprint::new([6; 32])))
    );
    let rotated = lifecycle
        .rotate(&bound.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rotated.record.binding, stored_bound.binding);
    assert!(opened.allowed_networks.is_empty());

    // Past the policy's maximum: refused, nothing changed.
    let too_long = lifecycle
        .update(&id, &TokenPatch::new().expiry(Expiry::After(365 * day)))
        .await;
    assert!(
        matches!(too_long, Err(LifecycleError::LifetimeTooLong { .. })),
        "{too_long:?}"
    );
    assert_eq!(
        lifecycle.get(&id).await.unwrap().unwrap().expires_at,
        stored.expires_at
    );

    // Disable, again (the first time stays), enable.
    let disabled = lifecycle.disable(&id).await.unwrap();
    let at = disabled.disabled_at.expect("disabled");
    assert_eq!(disabled.status(SystemTime::now()), TokenStatus::Disabled);
    let again = lifecycle.disable(&id).await.unwrap();
    assert_eq!(again.disabled_at, Some(at));
    let found = lifecycle
        .store()
        .find_by_hash(&hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.disabled_at, Some(at), "find_by_hash sees the disable");
    let enabled = lifecycle.enable(&id).await.unwrap();
    assert_eq!(enabled.disabled_at, None);
    assert_eq!(enabled.status(SystemTime::now()), TokenStatus::Active);

    // A pepper rotation's lazy migration: moved to the new hash once.
    let rotated = TokenHasher::new(Pepper::new(KeyId::new(2), [8; 32]).unwrap());
    let new_hash = rotated.hash(&issued.token);
    let store = lifecycle.store();
    store.rehash(&id, &hash, new_hash).await.unwrap();
    assert_eq!(
        store.find_by_hash(&new_hash).await.unwrap().map(|r| r.hash),
        Some(new_hash)
    );
    assert!(
        store.find_by_hash(&hash).await.unwrap().is_none(),
        "the old hash is gone"
    );
    store.rehash(&id, &hash, new_hash).await.unwrap();
    assert_eq!(
        lifecycle.get(&id).await.unwrap().unwrap().hash,
        new_hash,
        "a second move does nothing"
    );

    // Revoked: no more changes.
    lifecycle.revoke(&id).await.unwrap();
    let after = lifecycle.update(&id, &TokenPatch::new().name("late")).await;
    assert!(
        matches!(after, Err(LifecycleError::NotChangeable { .. })),
        "{after:?}"
    );
    assert!(matches!(
        lifecycle.enable(&id).await,
        Err(LifecycleError::NotChangeable { .. })
    ));

    // Unknown ids.
    let unknown = TokenId::generate();
    assert!(matches!(
        lifecycle.disable(&unknown).await,
        Err(LifecycleError::Store(StoreError::NotFound(_)))
    ));
    let mut ghost = stored.clone();
    ghost.id = unknown;
    assert!(matches!(
        lifecycle.store().update(ghost, SystemTime::now()).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Failures name what failed (an unknown id, a taken id); a rotation
/// names the token it replaces and keeps the old one for its grace; the
/// latest use of a batch wins, and an earlier one never moves it back;
/// revoking twice keeps the first time; the scope catalogue collects
/// every scope registered, in order.
async fn admin_conformance<S: TokenStore + TokenAdmin>(lifecycle: &Lifecycle<S>) {
    let store = lifecycle.store();
    let before = store.list().await.unwrap().len();
    let issued = lifecycle
        .issue(
            TokenSpec::new("admin", "team-c")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()]),
        )
        .await
        .unwrap();
    let unknown = TokenId::generate();
    assert!(matches!(
        store.revoke(&unknown, SystemTime::now()).await,
        Err(StoreError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        store
            .rotate(&unknown, SystemTime::now(), issued.record.clone())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.insert(issued.record.clone()).await,
        Err(StoreError::Conflict(_))
    ));

    // Rotation: the new token names the old; the old keeps working for the grace.
    let rotated = lifecycle
        .rotate(&issued.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        rotated.record.rotated_from.as_ref(),
        Some(&issued.record.id)
    );
    let old = store.get(&issued.record.id).await.unwrap().unwrap();
    let left = old
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(61),
        "the old token keeps its grace: {left:?}"
    );
    assert_eq!(store.list().await.unwrap().len(), before + 2);

    // Usage: the latest time of a batch wins, an earlier one never moves it back.
    let early = SystemTime::now() - Duration::from_secs(600);
    let late = SystemTime::now();
    let id = issued.record.id.clone();
    store
        .record_usage(&[
            (id.clone(), late),
            (id.clone(), early),
            (unknown.clone(), late),
        ])
        .await
        .unwrap();
    store.record_usage(&[(id.clone(), early)]).await.unwrap();
    let used = store.get(&id).await.unwrap().unwrap().last_used_at.unwrap();
    assert!(used.duration_since(late).unwrap_or_default() < Duration::from_millis(1));
    assert!(late.duration_since(used).unwrap_or_default() < Duration::from_millis(1));

    // Revoking twice keeps the first time.
    let first = store.revoke(&id, SystemTime::now()).await.unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    let second = store.revoke(&id, later).await.unwrap();
    assert_eq!(first.revoked_at, second.revoked_at);

    // The scope catalogue.
    store
        .register_scopes(&"notes:read notes:write".parse().unwrap())
        .await
        .unwrap();
    store
        .register_scopes(&"notes:read admin:all".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.scope_catalogue().await.unwrap().to_string(),
        "admin:all notes:read notes:write"
    );
}

/// The store's own selection ([`TokenAdmin::query`]) agrees with
/// [`TokenQuery::apply`] over [`TokenAdmin::list`] for every filter, page
/// and combination.
async fn query_conformance<S: TokenStore + TokenAdmin>(lifecycle: &Lifecycle<S>) {
    use crate::TokenQuery;
    let day = Duration::from_secs(86_400);
    let mut ids = Vec::new();
    for (i, days) in [1, 2, 40, 60, 5].into_iter().enumerate() {
        let subject = if i % 2 == 0 { "paged-a" } else { "paged-b" };
        let issued = lifecycle
            .issue(reader(format!("page-{i}"), subject).expiry(Expiry::After(days * day)))
            .await
            .unwrap();
        ids.push(issued.record.id);
    }
    lifecycle.disable(&ids[1]).await.unwrap();
    lifecycle.revoke(&ids[3]).await.unwrap();
    let queries = [
        TokenQuery::new(),
        TokenQuery::new().subject("paged-a"),
        TokenQuery::new().subject("nobody"),
        TokenQuery::new().status(TokenStatus::Active),
        TokenQuery::new().status(TokenStatus::Disabled),
        TokenQuery::new().status(TokenStatus::Revoked),
        TokenQuery::new().status(TokenStatus::Expired),
        TokenQuery::new().expiring_within(3 * day),
        TokenQuery::new().expiring_within(Duration::MAX),
        TokenQuery::new().limit(2),
        TokenQuery::new().limit(0),
        TokenQuery::new().after(ids[1].clone()),
        TokenQuery::new().after(TokenId::generate()),
        TokenQuery::new()
            .subject("paged-a")
            .status(TokenStatus::Active)
            .after(ids[0].clone())
            .limit(1),
    ];
    let now = SystemTime::now();
    let all = lifecycle.store().list().await.unwrap();
    for query in queries {
        let expected: Vec<TokenId> = query
            .apply(all.clone(), now)
            .into_iter()
            .map(|r| r.id)
            .collect();
        let selected: Vec<TokenId> = lifecycle
            .store()
            .query(&query, now)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(selected, expected, "{query:?}");
    }
    let page = TokenQuery::new().subject("paged-a").limit(2);
    let first = lifecycle.list_matching(&page).await.unwrap();
    assert_eq!(first.len(), 2, "a page of two");
    // Tokens made in one millisecond are ordered by id: which of the
    // three comes first is the store's order, not the issue order.
    assert!(first.iter().all(|r| r.subject == "paged-a"));
}

/// Both futures, polled in turn until both are done (their awaits
/// interleave, as two admins' requests do).
async fn both<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    use std::task::Poll;
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut first, mut second) = (None, None);
    std::future::poll_fn(|cx| {
        if first.is_none()
            && let Poll::Ready(out) = a.as_mut().poll(cx)
        {
            first = Some(out);
        }
        if second.is_none()
            && let Poll::Ready(out) = b.as_mut().poll(cx)
        {
            second = Some(out);
        }
        if first.is_some() && second.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (first, second) {
        (Some(first), Some(second)) => (first, second),
        _ => unreachable!("both are done"),
    }
}

/// An update writes only over the version it read: a stale one is
/// refused, and two changes made at once both hold.
async fn version_conformance<S: TokenStore + TokenAdmin>(lifecycle: &Lifecycle<S>) {
    let issued = lifecycle
        .issue(reader("versioned", "team-v"))
        .await
        .unwrap()
        .record;
    assert_eq!(issued.version, 0);
    let stale = lifecycle.get(&issued.id).await.unwrap().unwrap();
    let renamed = lifecycle
        .update(&issued.id, &TokenPatch::new().name("renamed"))
        .await
        .unwrap();
    assert_eq!(renamed.version, 1, "an update is a version");
    let mut overwrite = stale;
    overwrite.name = "lost".into();
    assert!(
        matches!(
            lifecycle.store().update(overwrite, SystemTime::now()).await,
            Err(StoreError::Stale(_))
        ),
        "a write over a stale version is refused"
    );
    let (a, b) = both(
        lifecycle.update(
            &issued.id,
            &TokenPatch::new().add_scope("notes:write".parse().unwrap()),
        ),
        lifecycle.update(
            &issued.id,
            &TokenPatch::new().add_scope("notes:list".parse().unwrap()),
        ),
    )
    .await;
    a.unwrap();
    b.unwrap();
    let stored = lifecycle.get(&issued.id).await.unwrap().unwrap();
    assert_eq!(
        stored.scopes.to_string(),
        "notes:list notes:read notes:write",
        "neither change is lost"
    );
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.version, 3);
}

/// A token for `subject` that may read notes.
fn reader(name: impl Into<String>, subject: &str) -> TokenSpec {
    TokenSpec::new(name, subject)
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()])
}
