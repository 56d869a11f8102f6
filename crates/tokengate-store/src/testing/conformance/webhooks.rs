//! Webhooks: subscriptions, the outbox a lifecycle writes, claims that
//! exclude each other, attempts, the log, removal.

use std::time::{Duration, SystemTime};

use crate::{
    Attempt, DeliveryState, EventType, Lifecycle, TokenAdmin, TokenSpec, TokenStore, Webhook,
};

pub(super) async fn webhooks_conformance<S: TokenStore + TokenAdmin>(lifecycle: &Lifecycle<S>) {
    let store = lifecycle.store();
    let all = Webhook::new("http://127.0.0.1:9/all", EventType::ALL, None).unwrap();
    let revoked = Webhook::new(
        "https://hooks.example/revoked",
        [EventType::Revoked],
        Some("a-secret-of-at-least-thirty-two-chars".into()),
    )
    .unwrap();
    store.add_webhook(&all).await.expect("webhooks kept");
    store.add_webhook(&revoked).await.unwrap();
    let listed = store.webhooks().await.unwrap();
    assert_eq!(listed.len(), 2);
    let kept = listed.iter().find(|w| w.id == revoked.id).unwrap();
    assert_eq!(kept.events, [EventType::Revoked]);
    assert_eq!(kept.secret, revoked.secret);
    assert_eq!(kept.url, "https://hooks.example/revoked");

    // Issue and revoke: three deliveries (issued to one, revoked to both).
    let issued = lifecycle
        .issue(
            TokenSpec::new("hooked", "team-h")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()]),
        )
        .await
        .unwrap();
    lifecycle.revoke(&issued.record.id).await.unwrap();
    let now = SystemTime::now() + Duration::from_secs(1);
    let first = store.claim_deliveries(now, "one", 10).await.unwrap();
    let second = store.claim_deliveries(now, "two", 10).await.unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(second.is_empty(), "claimed by one, not two: {second:?}");
    let kinds: Vec<_> = first
        .iter()
        .map(|d| (d.kind, d.webhook_id == all.id))
        .collect();
    assert!(kinds.contains(&(EventType::Issued, true)));
    assert!(kinds.contains(&(EventType::Revoked, true)));
    assert!(kinds.contains(&(EventType::Revoked, false)));
    let body: serde_json::Value = serde_json::from_str(&first[0].body).unwrap();
    assert_eq!(body["data"]["token_id"], issued.record.id.as_str());
    assert!(!first[0].body.contains(issued.token.expose_secret()));

    // One delivered, one to retry, one given up; the other claimer's
    // attempt does not count.
    let (a, b, c) = (&first[0], &first[1], &first[2]);
    let done = |state, next_at, status: Option<u16>, error: Option<&str>| Attempt {
        state,
        next_at,
        status,
        error: error.map(str::to_owned),
    };
    assert!(
        !store
            .finish_delivery(
                a.id,
                "two",
                &done(DeliveryState::Delivered, now, Some(200), None)
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_delivery(
                a.id,
                "one",
                &done(DeliveryState::Delivered, now, Some(204), None)
            )
            .await
            .unwrap()
    );
    let later = now + Duration::from_secs(10);
    let retry = done(DeliveryState::Pending, later, Some(500), Some("HTTP 500"));
    assert!(store.finish_delivery(b.id, "one", &retry).await.unwrap());
    let gave_up = done(DeliveryState::Failed, now, None, Some("connection refused"));
    assert!(store.finish_delivery(c.id, "one", &gave_up).await.unwrap());
    assert!(
        store
            .claim_deliveries(now, "two", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.claim_deliveries(later, "two", 10).await.unwrap();
    assert_eq!(again.len(), 1, "the retry, when due");
    assert_eq!(again[0].id, b.id);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_status, Some(500));

    let log = store.deliveries(false, 10).await.unwrap();
    assert_eq!(log.len(), 3);
    assert!(log[0].id > log[2].id, "newest first");
    let failed = store.deliveries(true, 10).await.unwrap();
    let failed_ids: Vec<i64> = failed.iter().map(|d| d.id).collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed_ids.contains(&b.id) && failed_ids.contains(&c.id));

    // An event that happens once per key is written once, however many
    // servers notice it.
    let once = crate::WebhookEvent::once(EventType::Expiring, &issued.record, now, "k1", &[]);
    assert_eq!(
        store.enqueue_event(&once).await.unwrap(),
        1,
        "to the one that wants it"
    );
    assert_eq!(store.enqueue_event(&once).await.unwrap(), 0, "once");

    // Removing a webhook fails what it had pending.
    lifecycle.disable(&issued.record.id).await.ok();
    assert!(store.remove_webhook(&all.id).await.unwrap());
    assert!(!store.remove_webhook(&all.id).await.unwrap());
    assert_eq!(store.webhooks().await.unwrap().len(), 1);
    let log = store.deliveries(false, 10).await.unwrap();
    let b_now = log.iter().find(|d| d.id == b.id).unwrap();
    assert_eq!(b_now.state, DeliveryState::Failed);
    assert_eq!(b_now.last_error.as_deref(), Some("webhook removed"));
    assert!(store.remove_webhook(&revoked.id).await.unwrap());

    // The log is kept a while: what is done and older goes.
    let all_done = store.deliveries(false, 100).await.unwrap();
    assert!(
        all_done.iter().all(|d| d.state != DeliveryState::Pending),
        "{all_done:?}"
    );
    let far = SystemTime::now() + Duration::from_secs(86_400);
    let gone = store.prune_deliveries(far).await.unwrap();
    assert_eq!(gone, all_done.len() as u64);
    assert!(store.deliveries(false, 100).await.unwrap().is_empty());
}
