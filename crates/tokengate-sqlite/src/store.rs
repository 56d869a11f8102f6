use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, params};
use tokengate_core::{KeyId, Pepper, TokenHash, TokenRecord};
use tokengate_sql::{
    Backend, ChangeKind, Conn, Dialect, Kind, Row, RowError, Step, Unreadable, Value, Work,
    read_record, read_value,
};
use tokengate_store::{FeedConsumer, FeedEvent, StoreError};
use tokio::task::JoinHandle;

use crate::schema::{MigrateError, migrate};
use tokengate_core::Peppers;
use tokengate_sql::millis;
use tokengate_store::PepperSourceError;

/// A token store in a SQLite file. Clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open token database {}: {reason}", path.display())]
pub struct OpenError {
    path: PathBuf,
    reason: String,
    missing: bool,
}

impl OpenError {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file does not exist (and [`SqliteStore::open`] does not create one).
    pub fn is_missing(&self) -> bool {
        self.missing
    }
}

/// A row as the shared record mapping reads it.
struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl Row for SqliteRow<'_, '_> {
    /// Integers, text and blobs: what SQLite stores ([`Dialect::stored`]).
    fn value(&self, index: usize, kind: Kind) -> Result<Value, RowError> {
        Ok(match kind {
            Kind::Int => Value::Int(self.0.get(index)?),
            Kind::Bytes => Value::Bytes(self.0.get(index)?),
            _ => Value::Text(self.0.get(index)?),
        })
    }
}

/// A bound value as SQLite keeps it.
fn sqlite_value(value: Value) -> SqlValue {
    match Dialect::SQLITE.encode(value) {
        Value::Int(Some(n)) => SqlValue::Integer(n),
        Value::Text(Some(text)) => SqlValue::Text(text),
        Value::Bytes(Some(bytes)) => SqlValue::Blob(bytes),
        _ => SqlValue::Null,
    }
}

fn bind(values: Vec<Value>) -> rusqlite::ParamsFromIter<impl Iterator<Item = SqlValue>> {
    rusqlite::params_from_iter(values.into_iter().map(sqlite_value))
}

/// The records `sql` selects with `values`; an unreadable row is an
/// error naming its column.
fn records(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<TokenRecord>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(store_error)?;
    let rows = statement
        .query_map(bind(values), |row| {
            Ok(read_record(Dialect::SQLITE, &SqliteRow(row)))
        })
        .map_err(store_error)?;
    let mut found = Vec::new();
    for row in rows {
        found.push(row.map_err(store_error)?.map_err(StoreError::unavailable)?);
    }
    Ok(found)
}

/// A change-feed or catalogue value that does not parse: the database
/// was edited by hand or by a newer build.
fn corrupt(column: &'static str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(Unreadable::value(column, value)),
    )
}

fn record_change(
    conn: &Connection,
    r: &TokenRecord,
    kind: &str,
    at: SystemTime,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO changes (token_id, key_id, hash, kind, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            r.id.as_str(),
            i64::from(r.hash.key_id().get()),
            &r.hash.digest()[..],
            kind,
            millis(at)
        ],
    )
}

/// `attempt`, again every 10 ms for up to 5 s while SQLite says the
/// database is busy or locked.
fn retry_while_busy(mut attempt: impl FnMut() -> rusqlite::Result<()>) -> rusqlite::Result<()> {
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match attempt() {
            Err(rusqlite::Error::SqliteFailure(code, _))
                if matches!(
                    code.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn store_error(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, _) = &error
        && code.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict("id or hash");
    }
    StoreError::unavailable(error)
}

impl SqliteStore {
    /// Opens the existing database at `path` and brings its schema up to
    /// date. A missing file is an error naming the path: only
    /// [`SqliteStore::create`] makes a new database, so a command run from
    /// the wrong folder cannot silently start an empty token set.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        if !path.exists() {
            return Err(OpenError {
                path: path.to_owned(),
                reason: "no such file (a new database is made by `tokengate init` or \
                         `tokengate issue`, or by a server's first start)"
                    .to_owned(),
                missing: true,
            });
        }
        Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    /// Opens the database at `path`, creating it (and its schema) if it
    /// does not exist. Safe when several processes do it at once.
    pub fn create(path: &Path) -> Result<Self, OpenError> {
        Self::connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
    }

    fn connect(path: &Path, flags: OpenFlags) -> Result<Self, OpenError> {
        let error = |reason: String| OpenError {
            path: path.to_owned(),
            reason,
            missing: false,
        };
        let mut conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| error(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| error(e.to_string()))?;
        // Switching a fresh file to WAL takes an exclusive lock that
        // SQLite may refuse at once, busy timeout or not, while another
        // process opens the same new file: try again for up to 5 s.
        retry_while_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))
            .map_err(|e| error(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| error(e.to_string()))?;
        migrate(&mut conn).map_err(|e: MigrateError| error(e.to_string()))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// The pepper this database's tokens are hashed under, from
    /// `TOKENGATE_PEPPER` (hex) or the pepper file beside the database
    /// ([`pepper_path`](crate::pepper_path)), checked against the check
    /// value the database recorded when its pepper was first used.
    ///
    /// A pepper file is created (mode 0600) only for a database that holds
    /// no token and has recorded no pepper yet. A missing or different
    /// pepper is an error naming its source and what to do: without the
    /// right pepper no stored token can be verified, and starting over
    /// silently would make every issued token fail as unknown.
    pub fn pepper(&self) -> Result<Pepper, PepperSourceError> {
        self.peppers().map(|peppers| peppers.current)
    }

    /// The current pepper and those rotated out (see
    /// [`SqliteStore::pepper`]; the file holds one per line), for
    /// [`Peppers::hasher`](tokengate_core::Peppers::hasher).
    pub fn peppers(&self) -> Result<Peppers, PepperSourceError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        crate::pepper::resolve(&conn, &self.path)
    }

    /// Records a new pepper's check value (`tokengate pepper rotate`).
    pub async fn record_pepper(&self, key: KeyId, check: String) -> Result<(), StoreError> {
        self.with(move |c| crate::pepper::record(c, key, &check).map_err(store_error))
            .await
    }

    /// The key ids the database has recorded check values for, retired
    /// ones included (an id is never used twice).
    pub async fn recorded_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        self.with(|c| {
            let mut keys: Vec<KeyId> = crate::pepper::recorded_checks(c)
                .map_err(store_error)?
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            keys.extend(crate::pepper::retired_keys(c).map_err(store_error)?);
            keys.sort_by_key(|key| key.get());
            Ok(keys)
        })
        .await
    }

    /// The key ids of retired peppers.
    pub async fn retired_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        self.with(|c| crate::pepper::retired_keys(c).map_err(store_error))
            .await
    }

    /// Retires the pepper `key` (`tokengate pepper retire`): from the next
    /// lookup on, no token hashed under it verifies or moves to another
    /// pepper, in any process, and every follower's cache is flushed and
    /// told to load its peppers again. The newest pepper cannot be
    /// retired.
    pub async fn retire_pepper(&self, key: KeyId) -> Result<(), StoreError> {
        self.with(move |c| {
            crate::pepper::retire(c, key).map_err(|error| match error {
                crate::pepper::RetireError::Sql(error) => store_error(error),
                refused => StoreError::Refused(refused.to_string().into()),
            })
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on tokio's blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            f(&mut conn.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// The sequence number of the latest change (revocation or rotation).
    pub async fn latest_change(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(store_error)
        })
        .await
    }

    /// Changes after `seq`, oldest first, with their sequence numbers.
    pub async fn changes_since(&self, seq: i64) -> Result<Vec<(i64, FeedEvent)>, StoreError> {
        self.with(move |c| {
            let mut statement = c
                .prepare(
                    "SELECT seq, token_id, key_id, hash, kind FROM changes \
                     WHERE seq > ?1 ORDER BY seq",
                )
                .map_err(store_error)?;
            let rows = statement
                .query_map([seq], |row| {
                    let seq = row.get::<_, i64>(0)?;
                    if row.get::<_, String>(4)? == crate::pepper::PEPPER_CHANGE {
                        return Ok((seq, FeedEvent::Peppers));
                    }
                    let id: String = row.get(1)?;
                    let key_id: i64 = row.get(2)?;
                    let digest: Vec<u8> = row.get(3)?;
                    let digest: [u8; 32] = digest
                        .try_into()
                        .map_err(|_| corrupt("hash", "not 32 bytes"))?;
                    Ok((
                        seq,
                        FeedEvent::Token {
                            id: id.parse().map_err(|_| corrupt("token_id", &id))?,
                            hash: TokenHash::from_parts(
                                KeyId::new(u32::try_from(key_id).unwrap_or(0)),
                                digest,
                            ),
                        },
                    ))
                })
                .map_err(store_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(store_error)
        })
        .await
    }

    /// Follows the change feed: every `every`, hands `consumer` (the
    /// verifying cache) every change made since the last poll, by any
    /// process. A revoked token then fails within `every` plus one lookup
    /// on every server using this database. A poll that fails flushes the
    /// consumer. Stops when the handle is aborted.
    pub fn follow(&self, consumer: impl FeedConsumer, every: Duration) -> JoinHandle<()> {
        use tokengate_core::metric_names::{
            FEED_CONNECTED, FEED_EVENTS, FEED_FLUSHES, FEED_LAST_EVENT,
        };
        let store = self.clone();
        let events = metrics::counter!(FEED_EVENTS);
        let flushes = metrics::counter!(FEED_FLUSHES);
        let connected = metrics::gauge!(FEED_CONNECTED);
        let last_event = metrics::gauge!(FEED_LAST_EVENT);
        tokio::spawn(async move {
            let mut seen = store.latest_change().await.unwrap_or(0);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.changes_since(seen).await {
                    Ok(changes) => {
                        for (seq, event) in changes {
                            consumer.apply(&event);
                            seen = seq;
                            events.increment(1);
                        }
                        connected.set(1.0);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        last_event.set(now.as_secs_f64());
                    }
                    Err(error) => {
                        // Fail safe: forget everything rather than serve stale grants.
                        tracing::warn!(%error, "cannot read the token change feed; cache flushed");
                        consumer.flush();
                        flushes.increment(1);
                        connected.set(0.0);
                    }
                }
            }
        })
    }
}

/// One connection as the shared store logic uses it: every step runs at
/// once (SQLite answers synchronously on the blocking pool).
struct SqliteConn<'a>(&'a mut Connection);

impl Conn for SqliteConn<'_> {
    fn records<'c>(&'c mut self, sql: &'c str, values: Vec<Value>) -> Step<'c, Vec<TokenRecord>> {
        Box::pin(std::future::ready(records(self.0, sql, values)))
    }

    fn rows(
        &mut self,
        sql: &'static str,
        args: Vec<Value>,
        kinds: &'static [Kind],
    ) -> Step<'_, Vec<Vec<Value>>> {
        let read = || -> rusqlite::Result<Vec<Vec<Value>>> {
            let mut statement = self.0.prepare_cached(sql)?;
            let rows = statement.query_map(bind(args), |row| {
                kinds
                    .iter()
                    .enumerate()
                    .map(|(i, kind)| {
                        read_value(Dialect::SQLITE, &SqliteRow(row), i, *kind).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                i,
                                rusqlite::types::Type::Null,
                                e,
                            )
                        })
                    })
                    .collect()
            })?;
            rows.collect()
        };
        Box::pin(std::future::ready(read().map_err(store_error)))
    }

    fn execute(&mut self, sql: &'static str, values: Vec<Value>) -> Step<'_, ()> {
        let done = self
            .0
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute(bind(values)))
            .map(drop)
            .map_err(store_error);
        Box::pin(std::future::ready(done))
    }

    fn changed<'c>(
        &'c mut self,
        record: &'c TokenRecord,
        kind: ChangeKind,
        at: SystemTime,
    ) -> Step<'c, ()> {
        let done = record_change(self.0, record, kind.as_str(), at)
            .map(drop)
            .map_err(store_error);
        Box::pin(std::future::ready(done))
    }
}

/// The answer of a step that never waits.
fn at_once<T>(step: Step<'_, T>) -> Result<T, StoreError> {
    let mut step = step;
    let waker = std::task::Waker::noop();
    match step
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(answer) => answer,
        std::task::Poll::Pending => Err(StoreError::Unsupported("a SQLite step that waits")),
    }
}

impl Backend for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::SQLITE
    }

    /// On the blocking pool; a transaction is `IMMEDIATE`: it holds the
    /// database's write lock from its start, so no write of another
    /// process falls between what it reads and what it writes.
    async fn run<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        self.with(move |conn| {
            if !work.in_transaction() {
                return at_once(work.on(&mut SqliteConn(conn)));
            }
            conn.execute_batch("BEGIN IMMEDIATE").map_err(store_error)?;
            let answer = at_once(work.on(&mut SqliteConn(conn)));
            let end = if answer.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = conn.execute_batch(end).map_err(store_error);
            let value = answer?;
            ended.map(|()| value)
        })
        .await
    }
}

tokengate_sql::sql_store!(SqliteStore);
