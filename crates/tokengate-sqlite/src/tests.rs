use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tokengate_core::{
    CacheConfig, CachedStore, Expiry, InvalidReason, Lifecycle, RateQuota, TokenAdmin, TokenHasher,
    TokenSpec, TokenStore, VerifyError,
};

use super::*;
use crate::store::{millis, time};
use tokengate_core::{StoreError, TokenId};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-sqlite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tokens.db")
}

fn spec() -> TokenSpec {
    TokenSpec::new("ci", "team-a")
        .scopes([
            "notes:read".parse().unwrap(),
            "notes:write".parse().unwrap(),
        ])
        .audiences(["notes".parse().unwrap()])
        .allowed_networks(["10.0.0.0/8".parse().unwrap()])
        .rate_quota(
            RateQuota::new(
                NonZeroU32::new(5).unwrap(),
                Duration::from_secs(60),
                NonZeroU32::new(2).unwrap(),
            )
            .unwrap(),
        )
        .metadata("team", "a")
        .expiry(Expiry::After(Duration::from_secs(3600)))
}

#[tokio::test]
async fn records_round_trip_and_survive_reopening() {
    let path = temp_db("roundtrip");
    let store = SqliteStore::open(&path).unwrap();
    let hasher = TokenHasher::new(load_pepper(&path).unwrap());
    let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
    let issued = lifecycle.issue(spec()).await.unwrap();
    drop(lifecycle);
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let hasher = TokenHasher::new(load_pepper(&path).unwrap());
    let found = store
        .find_by_hash(&hasher.hash(&issued.token))
        .await
        .unwrap()
        .unwrap();
    let mut expected = issued.record.clone();
    // Times are stored with millisecond precision.
    expected.created_at = time(millis(expected.created_at));
    expected.expires_at = expected.expires_at.map(|t| time(millis(t)));
    assert_eq!(found, expected);
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert_eq!(
        found.metadata,
        BTreeMap::from([("team".to_owned(), "a".to_owned())])
    );
    let text = std::fs::read(&path).unwrap();
    let secret = issued.token.expose_secret().as_bytes();
    assert!(
        !text.windows(secret.len()).any(|w| w == secret),
        "the token itself is never stored"
    );
}

#[tokio::test]
async fn the_pepper_file_is_private_and_shared_by_every_opener() {
    let path = temp_db("pepper");
    let a = load_pepper(&path).unwrap();
    let b = load_pepper(&path).unwrap();
    assert_eq!(a.expose_hex(), b.expose_hex());
    let mode = std::fs::metadata(pepper_path(&path))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn revocation_and_rotation_reach_a_cache_through_the_change_feed() {
    let path = temp_db("feed");
    let server_store = SqliteStore::open(&path).unwrap();
    let hasher = TokenHasher::new(load_pepper(&path).unwrap());
    let cache = CachedStore::new(
        server_store.clone(),
        CacheConfig::default().ttl(Duration::from_secs(3600)),
    );
    let follower = server_store.follow(cache.clone(), Duration::from_millis(20));

    // Another process: its own connection.
    let cli = Lifecycle::new(SqliteStore::open(&path).unwrap(), hasher.clone());
    let issued = cli.issue(spec()).await.unwrap();
    let hash = hasher.hash(&issued.token);
    cache.verify(&hash).await.unwrap();
    cli.revoke(&issued.record.id).await.unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if let Err(VerifyError::Invalid(InvalidReason::Revoked)) = cache.verify(&hash).await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the revocation never reached the cache");
    follower.abort();
}

#[tokio::test]
async fn admin_operations_fail_cleanly() {
    let path = temp_db("admin");
    let store = SqliteStore::open(&path).unwrap();
    let hasher = TokenHasher::new(load_pepper(&path).unwrap());
    let lifecycle = Lifecycle::new(store.clone(), hasher);
    let issued = lifecycle.issue(spec()).await.unwrap();
    let unknown = TokenId::generate();
    assert!(matches!(
        store.revoke(&unknown, std::time::SystemTime::now()).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.insert(issued.record.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    let rotated = lifecycle
        .rotate(&issued.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        rotated.record.rotated_from.as_ref(),
        Some(&issued.record.id)
    );
    store
        .record_usage(&[(issued.record.id.clone(), std::time::SystemTime::now())])
        .await
        .unwrap();
    assert!(
        store
            .get(&issued.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
    );
    assert_eq!(store.changes_since(0).await.unwrap().len(), 1);
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let path = temp_db("newer");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("version 99 is newer"), "{err}");
}
