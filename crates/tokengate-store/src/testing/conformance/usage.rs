//! Per-token usage: batches add up (as several instances' would), the
//! latest client wins, reads start at an hour, ranking and pruning.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokengate_core::TokenId;

use crate::{ADMITTED, ClientSeen, TokenAdmin, UsageBatch, UsageCount, UsageTotal};

fn count(id: &TokenId, hour: u64, outcome: &'static str, count: u64) -> UsageCount {
    UsageCount {
        token_id: id.clone(),
        hour,
        outcome,
        count,
    }
}

fn seen(id: &TokenId, hour: u64, client: &str, at_ms: u64) -> ClientSeen {
    ClientSeen {
        token_id: id.clone(),
        hour,
        client: client.parse().unwrap(),
        at: UNIX_EPOCH + Duration::from_millis(at_ms),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(super) async fn usage_conformance<S: TokenAdmin>(store: &S) {
    let (a, b, c) = (
        TokenId::generate(),
        TokenId::generate(),
        TokenId::generate(),
    );
    // 1,800,000,000 is a multiple of 3600: the start of an hour.
    let h1 = 1_800_000_000;
    let h2 = h1 + 3600;
    // Two instances' batches for the same hours: they add up.
    let first = UsageBatch {
        counts: vec![
            count(&a, h1, ADMITTED, 5),
            count(&a, h1, "rate_limited", 2),
            count(&a, h2, ADMITTED, 1),
            count(&b, h1, "insufficient_scope", 4),
        ],
        clients: vec![seen(&a, h1, "203.0.113.9", h1 * 1000 + 50)],
    };
    let second = UsageBatch {
        counts: vec![
            count(&a, h1, ADMITTED, 3),
            count(&a, h1, "rate_limited", 1),
            count(&c, h2, ADMITTED, 2),
        ],
        // An earlier sighting from another instance does not win.
        clients: vec![
            seen(&a, h1, "198.51.100.1", h1 * 1000 + 10),
            seen(&a, h2, "2001:db8::7", h2 * 1000 + 1),
        ],
    };
    store.add_usage(&first).await.expect("usage added");
    store.add_usage(&second).await.expect("usage added");
    store
        .add_usage(&UsageBatch::default())
        .await
        .expect("an empty batch");

    let buckets = store.usage(&a, at(h1 + 1800)).await.unwrap();
    assert_eq!(
        buckets.len(),
        2,
        "from the hour holding `since`: {buckets:?}"
    );
    assert_eq!(buckets[0].start, at(h1));
    assert_eq!(buckets[0].admitted, 8, "both instances' admitted requests");
    assert_eq!(buckets[0].refused.get("rate_limited"), Some(&3));
    assert_eq!(buckets[0].refused.len(), 1);
    let latest: IpAddr = "203.0.113.9".parse().unwrap();
    assert_eq!(buckets[0].last_client, Some(latest), "the latest sighting");
    assert_eq!(buckets[1].start, at(h2));
    assert_eq!(buckets[1].admitted, 1);
    assert_eq!(buckets[1].last_client, Some("2001:db8::7".parse().unwrap()));
    assert!(store.usage(&a, at(h2 + 3600)).await.unwrap().is_empty());
    assert!(
        store
            .usage(&TokenId::generate(), at(0))
            .await
            .unwrap()
            .is_empty()
    );

    let top = store.top_usage(at(h1), 10).await.unwrap();
    let expect = |id: &TokenId, admitted, refused| UsageTotal {
        token_id: id.clone(),
        admitted,
        refused,
    };
    assert_eq!(
        top,
        [expect(&a, 9, 3), expect(&b, 0, 4), expect(&c, 2, 0)],
        "most requests first"
    );
    assert_eq!(store.top_usage(at(h1), 1).await.unwrap().len(), 1);
    assert_eq!(
        store.top_usage(at(h2), 10).await.unwrap(),
        [expect(&c, 2, 0), expect(&a, 1, 0)],
        "only the hours from `since` count"
    );

    let gone = store.prune_usage(at(h2)).await.unwrap();
    assert_eq!(gone, 3, "the first hour's rows of a and b");
    let buckets = store.usage(&a, at(0)).await.unwrap();
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0].start, at(h2));
    assert!(store.usage(&b, at(0)).await.unwrap().is_empty());
    assert_eq!(store.prune_usage(at(h2)).await.unwrap(), 0);
}
