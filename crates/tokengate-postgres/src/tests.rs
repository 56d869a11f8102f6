//! Against a real PostgreSQL server (see [`crate::testing`]): each test
//! makes a database of its own and drops it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokengate_cache::{CacheConfig, CachedStore, VerifyError};
use tokengate_core::{InvalidReason, TokenHasher};
use tokengate_store::testing::Proxy;
use tokengate_store::{
    IssuedToken, Lifecycle, PepperSourceError, StoreError, TokenAdmin, TokenStore,
};

use super::*;
use crate::testing::{TestDatabase, with_database};
use tokengate_sql::testing::spec;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokengate-pg-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A store on a fresh database, its hasher (a pepper file in a temporary
/// folder), and the folder.
async fn open(db: &TestDatabase) -> (PostgresStore, TokenHasher, PathBuf) {
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let dir = temp_dir("pepper");
    let hasher = TokenHasher::new(store.pepper(Some(&dir.join("pepper"))).await.unwrap());
    (store, hasher, dir)
}

/// Microseconds, as PostgreSQL keeps them: created times truncated, expiry
/// rounded up.
fn as_stored(mut record: tokengate_core::TokenRecord) -> tokengate_core::TokenRecord {
    let micros = |t: SystemTime, up: bool| {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let rest = d.subsec_nanos() % 1_000;
        if rest == 0 {
            t
        } else if up {
            t + Duration::from_nanos(u64::from(1_000 - rest))
        } else {
            t - Duration::from_nanos(u64::from(rest))
        }
    };
    record.created_at = micros(record.created_at, false);
    record.expires_at = record.expires_at.map(|t| micros(t, true));
    record
}

#[tokio::test]
async fn records_round_trip_with_every_field() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (store, hasher, dir) = open(&db).await;
    let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
    let issued = lifecycle.issue(spec()).await.unwrap();
    let found = store
        .find_by_hash(&hasher.hash(&issued.token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, as_stored(issued.record.clone()));
    assert!(found.expires_at.unwrap() >= issued.record.expires_at.unwrap());
    assert_eq!(
        found.metadata,
        BTreeMap::from([
            ("quote".to_owned(), "it's \"fine\"".to_owned()),
            ("team".to_owned(), "a".to_owned())
        ])
    );
    assert_eq!(store.get(&issued.record.id).await.unwrap(), Some(found));
    assert_eq!(store.list().await.unwrap().len(), 1);
    let other = TokenHasher::new(tokengate_core::Pepper::generate(tokengate_store::FIRST_KEY));
    assert_eq!(
        store
            .find_by_hash(&other.hash(&issued.token))
            .await
            .unwrap(),
        None
    );

    // Only the keyed hash is kept: the token appears in no column.
    let client = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(client.1);
    let dump: String = client
        .0
        .query_one(
            "SELECT string_agg(t::text, ' ') FROM tokengate_tokens t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(issued.token.expose_secret()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn eight_instances_starting_at_once_migrate_once() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = db.url().to_owned();
        starts.spawn(async move { PostgresStore::connect(&url).await });
    }
    for store in starts.join_all().await {
        assert!(store.is_ok(), "{store:?}");
    }
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM tokengate_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=schema::VERSION).collect::<Vec<_>>());

    // A database from a newer build is refused, naming the versions.
    client
        .execute(
            "INSERT INTO tokengate_migrations (version) VALUES ($1)",
            &[&(schema::VERSION + 1)],
        )
        .await
        .unwrap();
    let error = PostgresStore::connect(db.url()).await.unwrap_err();
    assert!(
        error.to_string().contains("newer than this build"),
        "{error}"
    );
    assert!(error.to_string().contains(db.name()), "{error}");
}

#[tokio::test]
async fn the_pepper_is_checked_never_stored_and_its_source_named() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    // No source at all: an error saying where a pepper may come from.
    let error = store.pepper(None).await.unwrap_err();
    assert!(
        matches!(error, PepperSourceError::NotGiven { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("TOKENGATE_PEPPER"), "{error}");
    assert!(error.to_string().contains("--pepper-file"), "{error}");

    // A first start creates the file, private.
    let dir = temp_dir("pepper-check");
    let file = dir.join("pepper");
    let pepper = store.pepper(Some(&file)).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = PostgresStore::connect(db.url()).await.unwrap();
    let same = again.pepper(Some(&file)).await.unwrap();
    assert_eq!(
        TokenHasher::new(pepper.clone()).pepper_check(),
        TokenHasher::new(same).pepper_check()
    );
    Lifecycle::new(store.clone(), TokenHasher::new(pepper))
        .issue(spec())
        .await
        .unwrap();

    // Lost: an error naming the file, and no new pepper made.
    std::fs::remove_file(&file).unwrap();
    let error = store.pepper(Some(&file)).await.unwrap_err();
    assert!(
        matches!(error, PepperSourceError::Missing { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "{error}"
    );
    assert!(!file.exists());

    // Different: refused, naming where it came from.
    let other = tokengate_core::Pepper::generate(tokengate_store::FIRST_KEY);
    std::fs::write(&file, other.expose_hex().as_bytes()).unwrap();
    let error = store.pepper(Some(&file)).await.unwrap_err();
    assert!(
        matches!(error, PepperSourceError::Mismatch { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "{error}"
    );

    // The database holds a check value, never the pepper.
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let stored: String = client
        .query_one(
            "SELECT string_agg(check_value, ' ') FROM tokengate_peppers",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!stored.contains(other.expose_hex().as_str()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn errors_name_the_database_never_its_password() {
    let url = "postgres://app:hunter2@127.0.0.1:1/tokens";
    let error = PostgresStore::builder(url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("postgres://app@127.0.0.1:1/tokens"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let error = PostgresStore::connect("postgres://app:hunter2@[bad/tokens")
        .await
        .unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert_eq!(
        with_database("postgres://u@h:1/old?sslmode=disable", "new"),
        "postgres://u@h:1/new?sslmode=disable"
    );
}

/// Polls `verify` until it says revoked; how long that took.
async fn until_revoked<S: TokenStore>(
    cache: &CachedStore<S>,
    hash: &tokengate_core::TokenHash,
) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Err(VerifyError::Invalid(InvalidReason::Revoked)) = cache.verify(hash).await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

async fn wait_for(feed: &Feed, what: impl Fn(&FeedStatus) -> bool) -> FeedStatus {
    for _ in 0..500 {
        let status = feed.status();
        if what(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the feed never got there: {:?}", feed.status());
}

async fn issue_cached(
    lifecycle: &Lifecycle<PostgresStore>,
    cache: &CachedStore<PostgresStore>,
    hasher: &TokenHasher,
) -> (IssuedToken, tokengate_core::TokenHash) {
    let issued = lifecycle.issue(spec()).await.unwrap();
    let hash = hasher.hash(&issued.token);
    cache.verify(&hash).await.unwrap();
    (issued, hash)
}

#[tokio::test]
async fn revocations_and_rotations_reach_every_cache_when_they_commit() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (admin, hasher, dir) = open(&db).await;
    // Two instances: a pool, a cache and a feed each.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = PostgresStore::connect(db.url()).await.unwrap();
        let cache = CachedStore::new(
            store.clone(),
            CacheConfig::default().ttl(Duration::from_secs(3600)),
        );
        let feed = store.follow(cache.clone());
        wait_for(&feed, |s| s.connected).await;
        instances.push((cache, feed));
    }
    let lifecycle = Lifecycle::new(admin.clone(), hasher.clone());
    let (issued, hash) = issue_cached(&lifecycle, &instances[0].0, &hasher).await;
    instances[1].0.verify(&hash).await.unwrap();
    lifecycle.revoke(&issued.record.id).await.unwrap();
    for (cache, feed) in &instances {
        let took = until_revoked(cache, &hash).await;
        assert!(took.is_some(), "the revocation never reached an instance");
        assert_eq!(feed.status().events, 1);
    }

    // A rotation moves the old token's expiry: every cache sees the new one.
    let (issued, hash) = issue_cached(&lifecycle, &instances[1].0, &hasher).await;
    lifecycle
        .rotate(&issued.record.id, Duration::ZERO)
        .await
        .unwrap();
    for (cache, feed) in &instances {
        wait_for(feed, |s| s.events == 2).await;
        assert!(matches!(
            cache.verify(&hash).await,
            Err(VerifyError::Invalid(InvalidReason::Expired))
        ));
    }
    for (_, feed) in &instances {
        assert_eq!(feed.status().reconnects, 0);
        feed.stop();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_killed_feed_connection_reconnects_and_flushes_what_it_missed() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (store, hasher, dir) = open(&db).await;
    let cache = CachedStore::new(
        store.clone(),
        CacheConfig::default().ttl(Duration::from_secs(3600)),
    );
    let feed = store.follow(cache.clone());
    wait_for(&feed, |s| s.connected).await;
    let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
    let (issued, hash) = issue_cached(&lifecycle, &cache, &hasher).await;

    // Revoked behind the feed's back (no notification: as if sent while
    // the feed was down); the cache still serves its entry.
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE tokengate_tokens SET revoked_at = now() WHERE id = $1",
            &[&issued.record.id.as_str()],
        )
        .await
        .unwrap();
    assert!(
        cache.verify(&hash).await.is_ok(),
        "a cache hit, until the flush"
    );

    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&FEED_APPLICATION],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let status = wait_for(&feed, |s| s.reconnects == 1 && s.connected).await;
    assert_eq!(
        status.flushes, 2,
        "flushed at the first listen and after the reconnect"
    );
    assert!(matches!(
        cache.verify(&hash).await,
        Err(VerifyError::Invalid(InvalidReason::Revoked))
    ));

    // Listening again: the next revocation arrives as a notification.
    let (issued, hash) = issue_cached(&lifecycle, &cache, &hasher).await;
    lifecycle.revoke(&issued.record.id).await.unwrap();
    assert!(until_revoked(&cache, &hash).await.is_some());
    assert_eq!(feed.status().events, 1);
    feed.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn while_the_database_is_down_hits_hold_misses_fail_and_the_return_flushes() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (admin, hasher, dir) = open(&db).await;
    let mut proxy = Proxy::start(&db.target()).await;
    let url = db.url_via(&proxy.addr().to_string());
    let store = PostgresStore::builder(&url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let cache = CachedStore::new(
        store.clone(),
        CacheConfig::default().ttl(Duration::from_secs(3600)),
    );
    let feed = store.follow(cache.clone());
    wait_for(&feed, |s| s.connected).await;
    let lifecycle = Lifecycle::new(admin.clone(), hasher.clone());
    let (cached, cached_hash) = issue_cached(
        &Lifecycle::new(store.clone(), hasher.clone()),
        &cache,
        &hasher,
    )
    .await;
    let missed = lifecycle.issue(spec()).await.unwrap();

    proxy.cut();
    wait_for(&feed, |s| !s.connected).await;
    assert!(
        cache.verify(&cached_hash).await.is_ok(),
        "a hit keeps working"
    );
    let miss = cache.verify(&hasher.hash(&missed.token)).await;
    assert!(
        matches!(
            miss,
            Err(VerifyError::Store(
                StoreError::Unavailable(_) | StoreError::Timeout
            ))
        ),
        "{miss:?}"
    );
    // Revoked elsewhere while this instance cannot hear it.
    lifecycle.revoke(&cached.record.id).await.unwrap();
    assert!(
        cache.verify(&cached_hash).await.is_ok(),
        "still the cached grant"
    );

    proxy.restore().await;
    wait_for(&feed, |s| s.connected && s.reconnects == 1).await;
    assert!(matches!(
        cache.verify(&cached_hash).await,
        Err(VerifyError::Invalid(InvalidReason::Revoked))
    ));
    assert!(cache.verify(&hasher.hash(&missed.token)).await.is_ok());
    feed.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_store_answering_late_times_misses_out_while_hits_hold_and_recovers() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (admin, hasher, dir) = open(&db).await;
    let proxy = Proxy::start(&db.target()).await;
    let store = PostgresStore::builder(db.url_via(&proxy.addr().to_string()))
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let cache = CachedStore::new(
        store.clone(),
        CacheConfig::default().ttl(Duration::from_secs(3600)),
    );
    let (_, cached_hash) = issue_cached(
        &Lifecycle::new(store.clone(), hasher.clone()),
        &cache,
        &hasher,
    )
    .await;
    let missed = Lifecycle::new(admin, hasher.clone())
        .issue(spec())
        .await
        .unwrap();

    // Slower than the store's timeout: a miss is a timeout, a hit holds.
    proxy.set_latency(Duration::from_secs(1));
    let miss = cache.verify(&hasher.hash(&missed.token)).await;
    assert!(
        matches!(miss, Err(VerifyError::Store(StoreError::Timeout))),
        "{miss:?}"
    );
    assert!(cache.verify(&cached_hash).await.is_ok(), "a hit holds");

    proxy.set_latency(Duration::ZERO);
    let start = std::time::Instant::now();
    let miss = loop {
        // Connections still holding a late chunk drain first.
        let miss = cache.verify(&hasher.hash(&missed.token)).await;
        if miss.is_ok() || start.elapsed() > Duration::from_secs(10) {
            break miss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(miss.is_ok(), "{miss:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_postgres_store_passes_the_store_conformance_suite() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (store, _, _) = open(&db).await;
    tokengate_store::testing::store_conformance(store).await;
}

#[tokio::test]
async fn a_rotated_pepper_file_opens_with_both_peppers_once_the_database_records_the_new_one() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let dir = temp_dir("pepper-rotate");
    let file = dir.join("pepper");
    let first = store.pepper(Some(&file)).await.unwrap();
    let rotated = tokengate_store::PepperSource::found(Some(&file))
        .unwrap()
        .unwrap()
        .rotated(&store.recorded_peppers().await.unwrap());
    rotated.write(&file).unwrap();
    // Not recorded yet: refused, naming the key.
    let error = store.peppers(Some(&file)).await.unwrap_err().to_string();
    assert!(error.contains("(key k2)"), "{error}");
    store
        .record_pepper(rotated.pepper.id(), rotated.check_value())
        .await
        .unwrap();
    let peppers = store.peppers(Some(&file)).await.unwrap();
    assert_eq!(peppers.current.id(), tokengate_core::KeyId::new(2));
    assert_eq!(peppers.previous.len(), 1);
    let old = TokenHasher::new(first).pepper_check();
    assert_eq!(
        TokenHasher::new(peppers.previous[0].clone()).pepper_check(),
        old
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreadable_row_is_an_error_naming_its_column() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (store, hasher, _) = open(&db).await;
    let (raw, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let raw = &raw;
    tokengate_sql::testing::unreadable_rows_name_their_column(
        &Lifecycle::new(store, hasher),
        spec(),
        tokengate_sql::Dialect::POSTGRES,
        |sql: String| async move { raw.batch_execute(&sql).await.unwrap() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_flushing_usage_of_the_same_tokens_at_once_never_deadlock() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (store, hasher, dir) = open(&db).await;
    let lifecycle = Lifecycle::new(store.clone(), hasher);
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(lifecycle.issue(spec()).await.unwrap().record.id);
    }
    // Three instances' flushers, each with the same tokens in its own
    // order, over and over: a batch locking rows in the order it lists
    // them deadlocks with another (PostgreSQL then fails one of them).
    let flushers: Vec<_> = (0..3)
        .map(|f| {
            let store = store.clone();
            let mut mine = ids.clone();
            mine.rotate_left(f * 13);
            if f == 1 {
                mine.reverse();
            }
            tokio::spawn(async move {
                for round in 0..30_u64 {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + round);
                    let batch: Vec<_> = mine.iter().map(|id| (id.clone(), at)).collect();
                    store.record_usage(&batch).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for flusher in flushers {
        flusher.await.unwrap().unwrap();
    }
    let record = store.get(&ids[7]).await.unwrap().unwrap();
    assert_eq!(
        record.last_used_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_029))
    );
    std::fs::remove_dir_all(dir).unwrap();
}
