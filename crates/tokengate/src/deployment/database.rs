//! Either token store, chosen by a `--db` value: a SQLite path or a
//! PostgreSQL URL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use tokengate_cache::CachedStore;
use tokengate_core::{KeyId, Peppers, TokenId};
#[cfg(feature = "postgres")]
use tokengate_postgres::PostgresStore;
use tokengate_sqlite::SqliteStore;
use tokengate_store::StoreError;
use tokio::task::JoinHandle;

use super::SetupError;

/// Where tokens live, as `--db` gives it: a `postgres://` (or
/// `postgresql://`) URL, or else the path of a SQLite file.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Database {
    /// A SQLite file; its pepper file sits beside it.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by every instance; the pepper comes
    /// from `TOKENGATE_PEPPER` or a pepper file given apart.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shown without a credential (see [`tokengate_store::redact_url`]).
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => path.display().fmt(f),
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => f.write_str(&tokengate_store::redact_url(url)),
        }
    }
}

/// A `postgres://` value in a build without the `postgres` feature.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is a PostgreSQL URL, but this build has no PostgreSQL support (feature `postgres`)")]
pub struct DatabaseError(String);

impl FromStr for Database {
    type Err = DatabaseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(Self::Postgres(text.to_owned()));
            #[cfg(not(feature = "postgres"))]
            return Err(DatabaseError(
                text.split('@').next_back().unwrap_or_default().to_owned(),
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }
}

impl Database {
    /// Opens the store and its pepper. `create` makes a missing SQLite file
    /// (and its pepper file); without it a missing file is an error naming
    /// it. `pepper_file` overrides where the pepper file is (for SQLite,
    /// `<db>.pepper` by default; PostgreSQL has no default: without it the
    /// pepper must be in `TOKENGATE_PEPPER`).
    pub async fn open(
        &self,
        create: bool,
        pepper_file: Option<&Path>,
    ) -> Result<(AnyStore, Peppers), SetupError> {
        match self {
            Self::Sqlite(path) => {
                let store = if create {
                    SqliteStore::create(path)?
                } else {
                    SqliteStore::open(path)?
                };
                if pepper_file.is_some() {
                    return Err(
                        "--pepper-file is for PostgreSQL; a SQLite database's pepper file is \
                         <db>.pepper (or TOKENGATE_PEPPER)"
                            .into(),
                    );
                }
                let peppers = store.peppers()?;
                Ok((AnyStore::Sqlite(store), peppers))
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => {
                let store = PostgresStore::connect(url).await?;
                let peppers = store.peppers(pepper_file).await?;
                Ok((AnyStore::Postgres(store), peppers))
            }
        }
    }
}

/// A token store of either kind, so that one server binary or CLI serves
/// both deployments. Only a cache miss reaches it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

/// Calls `$call` on whichever store `$self` holds.
macro_rules! each {
    ($self:expr, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call,
        }
    };
}

/// The SQL of whichever store this is, run by it: `TokenStore` and
/// `TokenAdmin` come from the shared SQL layer, as for each store alone,
/// so a new store method needs nothing here.
impl tokengate_sql::Backend for AnyStore {
    fn dialect(&self) -> tokengate_sql::Dialect {
        each!(self, s => s.dialect())
    }

    async fn run<T: Send + 'static>(&self, work: tokengate_sql::Work<T>) -> Result<T, StoreError> {
        each!(self, s => s.run(work).await)
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        each!(self, s => tokengate_sql::Backend::record_usage(s, used).await)
    }
}

tokengate_sql::sql_store!(AnyStore);

impl AnyStore {
    /// Records a new pepper's check value (`tokengate pepper rotate`).
    pub async fn record_pepper(&self, key: KeyId, check: String) -> Result<(), StoreError> {
        each!(self, s => s.record_pepper(key, check).await)
    }

    /// The key ids the database has recorded check values for, retired
    /// ones included.
    pub async fn recorded_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        each!(self, s => s.recorded_peppers().await)
    }

    /// The key ids of retired peppers.
    pub async fn retired_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        each!(self, s => s.retired_peppers().await)
    }

    /// Retires the pepper `key` (`tokengate pepper retire`): from the next
    /// lookup on no token under it verifies, on any instance, and every
    /// follower loads its peppers again.
    pub async fn retire_pepper(&self, key: KeyId) -> Result<(), StoreError> {
        each!(self, s => s.retire_pepper(key).await)
    }

    /// The peppers, read again from where [`Database::open`] read them
    /// (`TOKENGATE_PEPPER`, or the pepper file: `pepper_file`, or beside a
    /// SQLite database) and checked against what the database records
    /// now, retired ones left out: what a running server loads after a
    /// rotation or a retirement.
    pub async fn peppers(&self, pepper_file: Option<&Path>) -> Result<Peppers, SetupError> {
        match self {
            Self::Sqlite(store) => {
                // A SQLite database's pepper file is always beside it.
                let _ = pepper_file;
                let store = store.clone();
                Ok(tokio::task::spawn_blocking(move || store.peppers())
                    .await
                    .map_err(|e| format!("cannot read the peppers: {e}"))??)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Ok(store.peppers(pepper_file).await?),
        }
    }

    /// Applies every revocation and rotation, by any process, to `cache`:
    /// SQLite polls its change table every 250 ms; PostgreSQL listens and
    /// applies each change as it commits (see `tokengate_postgres::Feed`).
    pub fn follow<S: Send + Sync + 'static>(&self, cache: CachedStore<S>) -> JoinHandle<()> {
        self.follow_watched(cache).0
    }

    /// [`AnyStore::follow`], with a way to ask whether the feed is live.
    pub(crate) fn follow_watched<S: Send + Sync + 'static>(
        &self,
        cache: CachedStore<S>,
    ) -> (JoinHandle<()>, FeedHealth) {
        match self {
            Self::Sqlite(store) => (
                store.follow(cache, Duration::from_millis(250)),
                FeedHealth::Polling,
            ),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => {
                let feed = store.follow(cache);
                let watch = feed.watch();
                (feed.into_task(), FeedHealth::Listening(watch))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_db_value_is_a_path_unless_it_is_a_postgres_url() {
        assert_eq!(
            "./tokens.db".parse::<Database>().unwrap(),
            Database::Sqlite("./tokens.db".into())
        );
        assert_eq!(
            "postgres.db".parse::<Database>().unwrap(),
            Database::Sqlite("postgres.db".into())
        );
        let url = "postgres://app:hunter2@db:5432/tokens";
        #[cfg(feature = "postgres")]
        {
            let db: Database = url.parse().unwrap();
            assert_eq!(db, Database::Postgres(url.to_owned()));
            assert_eq!(db.to_string(), "postgres://app:REDACTED@db:5432/tokens");
            let query: Database = "postgres://app@db/tokens?password=hunter2&sslmode=require"
                .parse()
                .unwrap();
            assert_eq!(
                format!("{query} {query:?}"),
                "postgres://app@db/tokens?password=REDACTED&sslmode=require \
                 postgres://app@db/tokens?password=REDACTED&sslmode=require"
            );
            assert!(matches!(
                "POSTGRESQL://db/x".parse::<Database>().unwrap(),
                Database::Postgres(_)
            ));
        }
        #[cfg(not(feature = "postgres"))]
        {
            let error = url.parse::<Database>().unwrap_err().to_string();
            assert!(error.contains("feature `postgres`"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}

/// How a store's change feed can be asked whether it is live.
#[derive(Clone, Debug)]
pub(crate) enum FeedHealth {
    /// SQLite polls the file the store reads: live while the store is.
    Polling,
    /// PostgreSQL listens on a connection of its own.
    #[cfg(feature = "postgres")]
    Listening(tokengate_postgres::FeedWatch),
}
