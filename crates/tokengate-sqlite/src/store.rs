use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokengate_core::Taken;
use tokengate_core::{KeyId, Pepper, ScopeSet, TokenHash, TokenId, TokenRecord, UseSpend};
use tokengate_sql::{
    Dialect, Kind, Row, RowError, Sql, Unreadable, UseColumns, Value, read_record,
};
use tokengate_store::{FeedConsumer, FeedEvent, StoreError, TokenAdmin, TokenQuery, TokenStore};
use tokio::task::JoinHandle;

use crate::schema::{MigrateError, migrate};
use crate::time::{millis, time};
use tokengate_core::Peppers;
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

/// Every statement of the token table, in SQLite's dialect.
static SQL: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::SQLITE));

/// A row as the shared record mapping reads it: times in milliseconds,
/// lists as space-separated words.
struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl Row for SqliteRow<'_, '_> {
    fn value(&self, index: usize, kind: Kind) -> Result<Value, RowError> {
        let row = self.0;
        Ok(match kind {
            Kind::Int => Value::Int(row.get(index)?),
            Kind::Text => Value::Text(row.get(index)?),
            Kind::Json => Value::Json(row.get(index)?),
            Kind::Bytes => Value::Bytes(row.get(index)?),
            Kind::Time => Value::Time(row.get::<_, Option<i64>>(index)?.map(time)),
            Kind::List => Value::List(
                row.get::<_, Option<String>>(index)?
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect(),
            ),
        })
    }
}

/// A bound value as SQLite keeps it.
fn sqlite_value(value: Value) -> SqlValue {
    match value {
        Value::Int(Some(n)) => SqlValue::Integer(n),
        Value::Text(Some(text)) | Value::Json(Some(text)) => SqlValue::Text(text),
        Value::Bytes(Some(bytes)) => SqlValue::Blob(bytes),
        Value::Time(Some(at)) => SqlValue::Integer(millis(at)),
        Value::List(words) => SqlValue::Text(words.join(" ")),
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
        .query_map(bind(values), |row| Ok(read_record(&SqliteRow(row))))
        .map_err(store_error)?;
    let mut found = Vec::new();
    for row in rows {
        found.push(row.map_err(store_error)?.map_err(StoreError::unavailable)?);
    }
    Ok(found)
}

/// The one record `sql` selects (or changes and returns) with `values`.
fn record(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
) -> Result<Option<TokenRecord>, StoreError> {
    Ok(records(conn, sql, values)?.into_iter().next())
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

fn insert_record(conn: &Connection, r: &TokenRecord) -> Result<(), StoreError> {
    conn.prepare_cached(&SQL.insert)
        .and_then(|mut statement| statement.execute(bind(SQL.insert_values(r))))
        .map(drop)
        .map_err(store_error)
}

fn get_record(conn: &Connection, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
    record(conn, &SQL.select_by_id, vec![Sql::id(id)])
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

impl TokenStore for SqliteStore {
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let values = SQL.hash_values(hash);
        self.with(move |c| record(c, &SQL.select_by_hash, values))
            .await
    }

    /// Moves the row, and records both hashes in the change feed: every
    /// instance forgets the old one, and an unknown-token entry it may
    /// hold for the new one.
    async fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> Result<(), StoreError> {
        let (from, values) = (*from, SQL.rehash_values(id, from, &to));
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            let Some(mut record) = record(&tx, &SQL.rehash, values)? else {
                return Ok(());
            };
            let now = SystemTime::now();
            record_change(&tx, &record, "rehashed", now).map_err(store_error)?;
            record.hash = from;
            record_change(&tx, &record, "rehashed", now).map_err(store_error)?;
            tx.commit().map_err(store_error)
        })
        .await
    }

    /// One statement: SQLite runs it under the database's write lock, so
    /// spends from every process are counted one after another.
    async fn spend_use(&self, id: &TokenId, spend: UseSpend) -> Result<Option<u64>, StoreError> {
        let id = id.clone();
        let (window, refill) = UseColumns::spend(spend);
        self.with(move |c| {
            c.prepare_cached(&SQL.spend_use)
                .and_then(|mut statement| {
                    statement
                        .query_row(params![id.as_str(), window, refill], |row| {
                            row.get::<_, i64>(0)
                        })
                        .optional()
                })
                .map(|left| left.map(|left| u64::try_from(left).unwrap_or(0)))
                .map_err(store_error)
        })
        .await
    }

    async fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> Result<Taken, StoreError> {
        let id = id.clone();
        self.with(move |c| take_uses(c, id.as_str(), spend, want).map_err(store_error))
            .await
    }
}

/// Takes up to `want` uses in one immediate transaction (the write lock
/// first): what is left, after a refill where the window is later.
fn take_uses(
    conn: &mut Connection,
    id: &str,
    spend: UseSpend,
    want: u64,
) -> rusqlite::Result<Taken> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (window, refill) = UseColumns::spend(spend);
    let available: Option<i64> = tx
        .query_row(&SQL.uses_available, params![id, window, refill], |row| {
            row.get(0)
        })
        .optional()?;
    let available = available.map_or(0, |a| u64::try_from(a).unwrap_or(0));
    let taken = available.min(want);
    if taken == 0 {
        return Ok(Taken::default());
    }
    let left = available - taken;
    tx.execute(&SQL.take_from, params![id, UseColumns::int(left), window])?;
    tx.commit()?;
    Ok(Taken { taken, left })
}

impl TokenAdmin for SqliteStore {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.with(move |c| insert_record(c, &record)).await
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let id = id.clone();
        self.with(move |c| get_record(c, &id)).await
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.query(&TokenQuery::new(), SystemTime::now()).await
    }

    /// Filtered and paged in SQL: a page reads only its rows.
    async fn query(
        &self,
        query: &TokenQuery,
        now: SystemTime,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let (sql, values) = SQL.select_matching(query, now);
        self.with(move |c| records(c, &sql, values)).await
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        let id = id.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            let record = record(&tx, &SQL.revoke, SQL.revoke_values(&id, at))?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            record_change(&tx, &record, "revoked", at).map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn update(&self, record: TokenRecord, at: SystemTime) -> Result<TokenRecord, StoreError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            let Some(stored) = self::record(&tx, &SQL.update, SQL.update_values(&record))? else {
                return Err(if get_record(&tx, &record.id)?.is_some() {
                    StoreError::Changed(record.id)
                } else {
                    StoreError::NotFound(record.id)
                });
            };
            record_change(&tx, &stored, "updated", at).map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(stored)
        })
        .await
    }

    async fn reset_uses(
        &self,
        id: &TokenId,
        remaining: u64,
        window: u64,
    ) -> Result<TokenRecord, StoreError> {
        let id = id.clone();
        let (remaining, window) = (UseColumns::int(remaining), UseColumns::int(window));
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            tx.execute(&SQL.reset_uses, params![id.as_str(), remaining, window])
                .map_err(store_error)?;
            let record = get_record(&tx, &id)?.ok_or(StoreError::NotFound(id))?;
            // Every instance's cache learns the new generation.
            record_change(&tx, &record, "updated", SystemTime::now()).map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        let used: Vec<(String, i64)> = used
            .iter()
            .map(|(id, at)| (id.as_str().to_owned(), millis(*at)))
            .collect();
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            for (id, at) in &used {
                tx.execute(
                    "UPDATE tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?1",
                    params![id, at],
                )
                .map_err(store_error)?;
            }
            tx.commit().map_err(store_error)
        })
        .await
    }

    async fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> Result<TokenRecord, StoreError> {
        let old = old.clone();
        let mut replacement = replacement;
        self.with(move |c| {
            // Immediate: the write lock before the old token's count is
            // read, so no spend elsewhere falls between read and hand-over.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(store_error)?;
            let Some(mut previous) = get_record(&tx, &old)? else {
                return Err(StoreError::NotFound(old));
            };
            let handed = previous.hand_uses_to(&mut replacement);
            insert_record(&tx, &replacement)?;
            if let Some(kept) = handed {
                let kept = UseColumns::of(Some(&kept));
                tx.execute(
                    &SQL.keep_uses,
                    params![old.as_str(), kept.remaining, kept.window, kept.generation],
                )
                .map_err(store_error)?;
            }
            let expiry = SQL.expiry_values(&old, old_expires_at);
            let record = record(&tx, &SQL.set_expiry, expiry)?
                .ok_or_else(|| StoreError::NotFound(old.clone()))?;
            record_change(&tx, &record, "rotated", replacement.created_at).map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), StoreError> {
        let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let at = millis(SystemTime::now());
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            for scope in &scopes {
                tx.execute(
                    "INSERT OR IGNORE INTO scopes (scope, registered_at) VALUES (?1, ?2)",
                    params![scope, at],
                )
                .map_err(store_error)?;
            }
            tx.commit().map_err(store_error)
        })
        .await
    }

    async fn scope_catalogue(&self) -> Result<ScopeSet, StoreError> {
        self.with(|c| {
            let mut statement = c
                .prepare("SELECT scope FROM scopes ORDER BY scope")
                .map_err(store_error)?;
            let rows = statement
                .query_map([], |row| {
                    let text: String = row.get(0)?;
                    text.parse().map_err(|_| corrupt("scope", &text))
                })
                .map_err(store_error)?;
            rows.collect::<Result<ScopeSet, _>>().map_err(store_error)
        })
        .await
    }
}
