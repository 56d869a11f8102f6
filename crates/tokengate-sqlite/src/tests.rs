use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tokengate_cache::{CacheConfig, CachedStore, VerifyError};
use tokengate_core::{InvalidReason, TokenHasher};
use tokengate_store::{Expiry, Lifecycle, TokenAdmin, TokenStore};

use super::*;
use tokengate_sql::testing::spec;
use tokengate_sql::{from_millis as time, millis};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-sqlite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tokens.db")
}

#[tokio::test]
async fn records_round_trip_and_survive_reopening() {
    let path = temp_db("roundtrip");
    let store = SqliteStore::create(&path).unwrap();
    let hasher = TokenHasher::new(store.pepper().unwrap());
    let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
    let issued = lifecycle.issue(spec()).await.unwrap();
    drop(lifecycle);
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let hasher = TokenHasher::new(store.pepper().unwrap());
    let found = store
        .find_by_hash(&hasher.hash(&issued.token))
        .await
        .unwrap()
        .unwrap();
    let mut expected = issued.record.clone();
    // Times are stored with millisecond precision.
    expected.created_at = time(millis(expected.created_at));
    expected.expires_at = expected
        .expires_at
        .map(|t| tokengate_sql::Dialect::SQLITE.round_up(t));
    assert_eq!(found, expected);
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert_eq!(
        found.metadata,
        BTreeMap::from([
            ("quote".to_owned(), "it's \"fine\"".to_owned()),
            ("team".to_owned(), "a".to_owned())
        ])
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
    let a = SqliteStore::create(&path).unwrap().pepper().unwrap();
    let b = SqliteStore::open(&path).unwrap().pepper().unwrap();
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
    let server_store = SqliteStore::create(&path).unwrap();
    let hasher = TokenHasher::new(server_store.pepper().unwrap());
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

/// The admin contract itself is the conformance suite's; here, what the
/// change feed records of it.
#[tokio::test]
async fn a_rotation_is_one_token_change_in_the_feed() {
    let path = temp_db("admin");
    let store = SqliteStore::create(&path).unwrap();
    let hasher = TokenHasher::new(store.pepper().unwrap());
    let lifecycle = Lifecycle::new(store.clone(), hasher);
    let issued = lifecycle.issue(spec()).await.unwrap();
    lifecycle
        .rotate(&issued.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .record_usage(&[(issued.record.id.clone(), std::time::SystemTime::now())])
        .await
        .unwrap();
    // One token change (the rotation; usage is no change); the pepper's
    // first record is announced too.
    let changes = store.changes_since(0).await.unwrap();
    let tokens = changes
        .iter()
        .filter(|(_, event)| matches!(event, tokengate_store::FeedEvent::Token { .. }))
        .count();
    assert_eq!(tokens, 1, "{changes:?}");
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let path = temp_db("newer");
    drop(SqliteStore::create(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("version 99 is newer"), "{err}");
}

async fn store_with_a_token(name: &str) -> (PathBuf, tokengate_store::IssuedToken) {
    let path = temp_db(name);
    let store = SqliteStore::create(&path).unwrap();
    let lifecycle = Lifecycle::new(store.clone(), TokenHasher::new(store.pepper().unwrap()));
    let issued = lifecycle.issue(spec()).await.unwrap();
    (path, issued)
}

#[tokio::test]
async fn a_lost_pepper_file_is_an_error_naming_it_never_a_new_pepper() {
    let (path, _) = store_with_a_token("lost-pepper").await;
    std::fs::remove_file(pepper_path(&path)).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let err = store.pepper().unwrap_err().to_string();
    assert!(
        err.contains(&pepper_path(&path).display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("is missing") && err.contains("restore"),
        "{err}"
    );
    assert!(!pepper_path(&path).exists(), "no new pepper was created");
}

#[tokio::test]
async fn a_different_pepper_is_refused_with_its_source_named() {
    let (path, _) = store_with_a_token("other-pepper").await;
    let other = tokengate_core::Pepper::generate(tokengate_core::KeyId::new(1));
    std::fs::write(pepper_path(&path), other.expose_hex().as_bytes()).unwrap();
    let err = SqliteStore::open(&path)
        .unwrap()
        .pepper()
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not the one"), "{err}");
    assert!(
        err.contains(&pepper_path(&path).display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_database_that_recorded_its_pepper_still_needs_it() {
    let path = temp_db("empty-recorded");
    SqliteStore::create(&path).unwrap().pepper().unwrap();
    std::fs::remove_file(pepper_path(&path)).unwrap();
    assert!(SqliteStore::open(&path).unwrap().pepper().is_err());
}

#[test]
fn opening_a_missing_database_fails_naming_it_and_creates_nothing() {
    let path = temp_db("missing");
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.is_missing());
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists());
    assert!(!pepper_path(&path).exists());
}

#[test]
fn eight_openers_of_a_fresh_database_at_once_all_succeed_with_one_pepper() {
    let path = temp_db("concurrent");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let openers: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let store = SqliteStore::create(&path).map_err(|e| e.to_string())?;
                let pepper = store.pepper().map_err(|e| e.to_string())?;
                Ok::<_, String>(pepper.expose_hex().to_string())
            })
        })
        .collect();
    let peppers: Vec<String> = openers
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(peppers.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn a_one_second_token_is_stored_alive_and_expires_no_earlier_than_issued() {
    let path = temp_db("rounding");
    let store = SqliteStore::create(&path).unwrap();
    let lifecycle = Lifecycle::new(store.clone(), TokenHasher::new(store.pepper().unwrap()));
    for _ in 0..20 {
        let issued = lifecycle
            .issue(spec().expiry(Expiry::After(Duration::from_secs(1))))
            .await
            .unwrap();
        let stored = store.get(&issued.record.id).await.unwrap().unwrap();
        assert!(stored.expires_at >= issued.record.expires_at);
        assert_eq!(
            stored.status(issued.record.created_at),
            tokengate_core::TokenStatus::Active
        );
    }
}

#[tokio::test]
async fn the_scope_catalogue_collects_registered_scopes_across_openers() {
    let path = temp_db("catalogue");
    let store = SqliteStore::create(&path).unwrap();
    assert!(store.scope_catalogue().await.unwrap().is_empty());
    store
        .register_scopes(&"notes:read notes:write".parse().unwrap())
        .await
        .unwrap();
    let other = SqliteStore::open(&path).unwrap();
    other
        .register_scopes(&"notes:read notes:admin".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.scope_catalogue().await.unwrap().to_string(),
        "notes:admin notes:read notes:write"
    );
}

#[tokio::test]
async fn the_sqlite_store_passes_the_store_conformance_suite() {
    let path = temp_db("conformance");
    tokengate_store::testing::store_conformance(SqliteStore::create(&path).unwrap()).await;
}

#[tokio::test]
async fn an_unreadable_row_is_an_error_naming_its_column() {
    let path = temp_db("unreadable");
    let store = SqliteStore::create(&path).unwrap();
    let lifecycle = Lifecycle::new(store.clone(), TokenHasher::new(store.pepper().unwrap()));
    let raw = rusqlite::Connection::open(&path).unwrap();
    let execute = |sql: String| {
        raw.execute(&sql, []).unwrap();
        std::future::ready(())
    };
    tokengate_sql::testing::unreadable_rows_name_their_column(
        &lifecycle,
        spec(),
        tokengate_sql::Dialect::SQLITE,
        execute,
    )
    .await;
}
