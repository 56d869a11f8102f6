use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokengate_core::{
    FeedConsumer, FeedEvent, KeyId, Pepper, RateQuota, ScopeSet, SqlValue, StoreError, Taken,
    TokenAdmin, TokenHash, TokenId, TokenQuery, TokenRecord, TokenStore, UseColumns, UseSpend,
};
use tokio::task::JoinHandle;

use crate::schema::{MigrateError, migrate};
use crate::time::{millis, millis_ceil, time};
use tokengate_core::{PepperSourceError, Peppers};

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

const COLUMNS: &str = "id, key_id, hash, name, subject, scopes, audiences, created_at, expires_at, revoked_at, \
    last_used_at, allowed_networks, rate_count, rate_period_ms, rate_burst, rotated_from, metadata, disabled_at, \
    uses_limit, uses_refill, uses_refill_ms, uses_remaining, uses_window, uses_generation, version";

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A stored value that does not parse: the database was edited by hand or
/// by a newer build.
fn corrupt(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(
        0,
        format!("{column}={value:?}"),
        rusqlite::types::Type::Text,
    )
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let id_text = text(0)?;
    let digest: Vec<u8> = row.get(2)?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| corrupt("hash", "not 32 bytes"))?;
    let key_id: i64 = row.get(1)?;
    let scopes = text(5)?;
    let audiences = text(6)?;
    let networks = text(11)?;
    let quota = match (
        row.get::<_, Option<i64>>(12)?,
        row.get::<_, Option<i64>>(13)?,
        row.get::<_, Option<i64>>(14)?,
    ) {
        (Some(count), Some(period), Some(burst)) => {
            let n = |v: i64| NonZeroU32::new(u32::try_from(v).unwrap_or(0));
            match (n(count), n(burst)) {
                (Some(count), Some(burst)) => RateQuota::new(
                    count,
                    Duration::from_millis(u64::try_from(period).unwrap_or(0)),
                    burst,
                )
                .ok(),
                _ => None,
            }
        }
        _ => None,
    };
    let metadata = text(16)?;
    Ok(TokenRecord {
        id: id_text.parse().map_err(|_| corrupt("id", &id_text))?,
        hash: TokenHash::from_parts(KeyId::new(u32::try_from(key_id).unwrap_or(0)), digest),
        name: text(3)?,
        subject: text(4)?,
        scopes: scopes.parse().map_err(|_| corrupt("scopes", &scopes))?,
        audiences: audiences
            .split_ascii_whitespace()
            .map(|a| a.parse().map_err(|_| corrupt("audiences", a)))
            .collect::<Result<_, _>>()?,
        created_at: time(row.get(7)?),
        expires_at: row.get::<_, Option<i64>>(8)?.map(time),
        revoked_at: row.get::<_, Option<i64>>(9)?.map(time),
        disabled_at: row.get::<_, Option<i64>>(17)?.map(time),
        last_used_at: row.get::<_, Option<i64>>(10)?.map(time),
        allowed_networks: networks
            .split_ascii_whitespace()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|_| corrupt("allowed_networks", n))
            })
            .collect::<Result<_, _>>()?,
        rate_quota: quota,
        rotated_from: row
            .get::<_, Option<String>>(15)?
            .map(|id| id.parse().map_err(|_| corrupt("rotated_from", &id)))
            .transpose()?,
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata", &metadata))?,
        uses: UseColumns {
            limit: row.get(18)?,
            refill: row.get(19)?,
            refill_ms: row.get(20)?,
            remaining: row.get(21)?,
            window: row.get(22)?,
            generation: row.get(23)?,
        }
        .into_uses(),
        version: u64::try_from(row.get::<_, i64>(24)?).unwrap_or(0),
    })
}

fn insert_record(conn: &Connection, r: &TokenRecord) -> rusqlite::Result<usize> {
    let [count, period, burst] = quota_columns(r.rate_quota);
    let uses = UseColumns::of(r.uses.as_ref());
    conn.execute(
        &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"),
        params![
            r.id.as_str(),
            i64::from(r.hash.key_id().get()),
            &r.hash.digest()[..],
            r.name,
            r.subject,
            r.scopes.to_string(),
            join(&r.audiences),
            millis(r.created_at),
            r.expires_at.map(millis_ceil),
            r.revoked_at.map(millis),
            r.last_used_at.map(millis),
            join(&r.allowed_networks),
            count,
            period,
            burst,
            r.rotated_from.as_ref().map(TokenId::as_str),
            serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".to_owned()),
            r.disabled_at.map(millis),
            uses.limit,
            uses.refill,
            uses.refill_ms,
            uses.remaining,
            uses.window,
            uses.generation,
            i64::try_from(r.version).unwrap_or(i64::MAX),
        ],
    )
}

/// A quota as its three columns: count, period in milliseconds, burst.
fn quota_columns(quota: Option<RateQuota>) -> [Option<i64>; 3] {
    [
        quota.map(|q| i64::from(q.count().get())),
        quota.map(|q| i64::try_from(q.period().as_millis()).unwrap_or(i64::MAX)),
        quota.map(|q| i64::from(q.burst().get())),
    ]
}

/// Writes what [`TokenAdmin::update`] may change of `r` over the row of
/// its id; the number of rows changed.
fn update_record(conn: &Connection, r: &TokenRecord) -> rusqlite::Result<usize> {
    let [count, period, burst] = quota_columns(r.rate_quota);
    let uses = UseColumns::of(r.uses.as_ref());
    // The count left stays, capped by a lowered limit (a limit new to the
    // token starts from the record's); a cap starts a new generation, so
    // uses leased out above it no longer count; the later window wins.
    conn.execute(
        "UPDATE tokens SET name = ?2, scopes = ?3, audiences = ?4, expires_at = ?5, \
         disabled_at = ?6, allowed_networks = ?7, rate_count = ?8, rate_period_ms = ?9, \
         rate_burst = ?10, metadata = ?11, uses_limit = ?12, uses_refill = ?13, \
         uses_refill_ms = ?14, \
         uses_generation = CASE WHEN uses_remaining > MAX(?12, COALESCE(?13, 0)) \
         THEN uses_generation + 1 ELSE uses_generation END, \
         uses_remaining = CASE WHEN ?12 IS NULL THEN NULL \
         ELSE MIN(COALESCE(uses_remaining, ?15), MAX(?12, COALESCE(?13, 0))) END, \
         uses_window = CASE WHEN ?12 IS NULL THEN 0 ELSE MAX(uses_window, ?16) END, \
         version = version + 1 \
         WHERE id = ?1 AND version = ?17",
        params![
            r.id.as_str(),
            r.name,
            r.scopes.to_string(),
            join(&r.audiences),
            r.expires_at.map(millis_ceil),
            r.disabled_at.map(millis),
            join(&r.allowed_networks),
            count,
            period,
            burst,
            serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".to_owned()),
            uses.limit,
            uses.refill,
            uses.refill_ms,
            uses.remaining,
            uses.window,
            i64::try_from(r.version).unwrap_or(i64::MAX),
        ],
    )
}

/// A token hashed under a retired pepper is found by no lookup and moved
/// by no re-hash: the condition every such statement ends with (its
/// `key_id` is the row's).
const NOT_RETIRED: &str =
    "AND key_id NOT IN (SELECT key_id FROM peppers WHERE retired_at IS NOT NULL)";

fn get_record(conn: &Connection, id: &str) -> rusqlite::Result<Option<TokenRecord>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
        [id],
        row_to_record,
    )
    .optional()
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
        let hash = *hash;
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM tokens WHERE hash = ?1 AND key_id = ?2 {NOT_RETIRED}"
                ),
                params![&hash.digest()[..], i64::from(hash.key_id().get())],
                row_to_record,
            )
            .optional()
            .map_err(store_error)
        })
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
        let (id, from) = (id.clone(), *from);
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            let moved = tx
                .execute(
                    &format!(
                        "UPDATE tokens SET hash = ?3, key_id = ?4 \
                         WHERE id = ?1 AND hash = ?2 AND key_id = ?5 {NOT_RETIRED}"
                    ),
                    params![
                        id.as_str(),
                        &from.digest()[..],
                        &to.digest()[..],
                        i64::from(to.key_id().get()),
                        i64::from(from.key_id().get())
                    ],
                )
                .map_err(store_error)?;
            if moved == 0 {
                return Ok(());
            }
            let mut record = get_record(&tx, id.as_str())
                .map_err(store_error)?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
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
        let (window, refill) = spend.columns();
        self.with(move |c| {
            c.prepare_cached(SPEND_USE)
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

/// The `SELECT` of the records `query` selects at `now`, and its values
/// ([`TokenQuery::sql_filter`]; times as stored, in milliseconds).
fn select_matching(query: &TokenQuery, now: SystemTime) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut values: Vec<Value> = Vec::new();
    let filter = query.sql_filter("tokens", now, &mut |value| {
        values.push(match value {
            SqlValue::Text(text) => Value::Text(text),
            SqlValue::Time(at) => Value::Integer(millis(at)),
            SqlValue::Int(n) => Value::Integer(n),
            _ => Value::Null,
        });
        format!("?{}", values.len())
    });
    let sql = format!(
        "SELECT {COLUMNS} FROM tokens{} ORDER BY created_at, id{}",
        filter.where_clause, filter.limit
    );
    (sql, values)
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
    let (window, refill) = spend.columns();
    let available: Option<i64> = tx
        .query_row(
            "SELECT CASE WHEN uses_window < ?2 THEN ?3 ELSE uses_remaining END FROM tokens \
             WHERE id = ?1 AND uses_remaining IS NOT NULL",
            params![id, window, refill],
            |row| row.get(0),
        )
        .optional()?;
    let available = available.map_or(0, |a| u64::try_from(a).unwrap_or(0));
    let taken = available.min(want);
    if taken == 0 {
        return Ok(Taken::default());
    }
    let left = available - taken;
    tx.execute(
        "UPDATE tokens SET uses_remaining = ?2, uses_window = MAX(uses_window, ?3) WHERE id = ?1",
        params![id, i64::try_from(left).unwrap_or(i64::MAX), window],
    )?;
    tx.commit()?;
    Ok(Taken { taken, left })
}

/// Spends one use: a window later than the stored one starts from the
/// refill count (`?3`); the row changes only while a use is left.
const SPEND_USE: &str = "UPDATE tokens SET \
    uses_remaining = (CASE WHEN uses_window < ?2 THEN ?3 ELSE uses_remaining END) - 1, \
    uses_window = MAX(uses_window, ?2) \
    WHERE id = ?1 AND uses_remaining IS NOT NULL \
    AND (CASE WHEN uses_window < ?2 THEN ?3 ELSE uses_remaining END) > 0 \
    RETURNING uses_remaining";

impl TokenAdmin for SqliteStore {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.with(move |c| insert_record(c, &record).map(drop).map_err(store_error))
            .await
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let id = id.clone();
        self.with(move |c| get_record(c, id.as_str()).map_err(store_error))
            .await
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
        let (sql, values) = select_matching(query, now);
        self.with(move |c| {
            let mut statement = c.prepare(&sql).map_err(store_error)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values.iter()), row_to_record)
                .map_err(store_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(store_error)
        })
        .await
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        let id = id.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(store_error)?;
            let changed = tx
                .execute(
                    "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                    params![id.as_str(), millis(at)],
                )
                .map_err(store_error)?;
            if changed == 0 {
                return Err(StoreError::NotFound(id));
            }
            let record = get_record(&tx, id.as_str())
                .map_err(store_error)?
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
            if update_record(&tx, &record).map_err(store_error)? == 0 {
                let exists = get_record(&tx, record.id.as_str()).map_err(store_error)?;
                return Err(if exists.is_some() {
                    StoreError::Changed(record.id)
                } else {
                    StoreError::NotFound(record.id)
                });
            }
            let stored = get_record(&tx, record.id.as_str())
                .map_err(store_error)?
                .ok_or_else(|| StoreError::NotFound(record.id.clone()))?;
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
            tx.execute(
                "UPDATE tokens SET uses_remaining = ?2, uses_window = ?3, \
                 uses_generation = uses_generation + 1 \
                 WHERE id = ?1 AND uses_remaining IS NOT NULL",
                params![id.as_str(), remaining, window],
            )
            .map_err(store_error)?;
            let record = get_record(&tx, id.as_str())
                .map_err(store_error)?
                .ok_or(StoreError::NotFound(id))?;
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
            let Some(mut previous) = get_record(&tx, old.as_str()).map_err(store_error)? else {
                return Err(StoreError::NotFound(old));
            };
            let handed = previous.hand_uses_to(&mut replacement);
            insert_record(&tx, &replacement).map_err(store_error)?;
            tx.execute(
                "UPDATE tokens SET expires_at = ?2 WHERE id = ?1",
                params![old.as_str(), millis_ceil(old_expires_at)],
            )
            .map_err(store_error)?;
            if let Some(kept) = handed {
                let kept = UseColumns::of(Some(&kept));
                tx.execute(
                    "UPDATE tokens SET uses_remaining = ?2, uses_window = ?3, uses_generation = ?4 \
                     WHERE id = ?1",
                    params![old.as_str(), kept.remaining, kept.window, kept.generation],
                )
                .map_err(store_error)?;
            }
            let record = get_record(&tx, old.as_str())
                .map_err(store_error)?
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
