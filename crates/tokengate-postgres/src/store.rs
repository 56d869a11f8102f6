use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokengate_core::{KeyId, Pepper, Peppers, TokenId, TokenRecord};
use tokengate_sql::{
    Backend, ChangeKind, Conn, Dialect, Kind, Row, RowError, Step, Value, Work, read_record,
    read_value,
};
use tokengate_store::{FIRST_KEY, PepperSource, PepperSourceError, StoreError};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::feed::{CHANNEL, Change};
use crate::schema::{MigrateError, migrate};

/// A token store in a PostgreSQL database, on a pool of connections.
/// Clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    shared: Arc<Shared>,
}

struct Shared {
    config: tokio_postgres::Config,
    /// The database as errors name it: never its password.
    name: String,
    timeout: Duration,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shared.name)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open token database {database}: {reason}")]
pub struct ConnectError {
    database: String,
    reason: String,
}

impl ConnectError {
    /// The database, as `postgres://user@host:port/name` (never a password).
    pub fn database(&self) -> &str {
        &self.database
    }
}

/// Settings for [`PostgresStore`]; made by [`PostgresStore::builder`].
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    url: String,
    pool_size: usize,
    timeout: Duration,
}

impl PostgresStoreBuilder {
    /// The most connections the pool opens (default 16).
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The bound on every call: waiting for a connection, connecting, and
    /// the query itself (default 2 s). Past it a lookup fails with
    /// [`StoreError::Timeout`], which the authenticate layer answers with
    /// 503 (gRPC 14).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects and brings the schema up to date (see the crate docs).
    pub async fn connect(self) -> Result<PostgresStore, ConnectError> {
        let config: tokio_postgres::Config =
            self.url
                .parse()
                .map_err(|e: tokio_postgres::Error| ConnectError {
                    database: crate::redacted(&self.url),
                    reason: format!("not a PostgreSQL URL: {e}"),
                })?;
        let name = crate::describe(&config);
        let error = |reason: String| ConnectError {
            database: name.clone(),
            reason,
        };
        let mut pg_config = config.clone();
        pg_config.connect_timeout(self.timeout);
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("tokengate");
        }
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .build()
            .map_err(|e| error(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| error(causes(&e)))?;
        migrate(&mut client)
            .await
            .map_err(|e: MigrateError| error(causes(&e)))?;
        drop(client);
        Ok(PostgresStore {
            pool,
            shared: Arc::new(Shared {
                config,
                name,
                timeout: self.timeout,
            }),
        })
    }
}

/// `error` and each of its sources, as one line: tokio-postgres keeps the
/// server's message in a source.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn store_error(error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict("id or hash");
    }
    StoreError::unavailable(error)
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Timeout(_) => StoreError::Timeout,
        PoolError::Backend(error) => store_error(error),
        other => StoreError::unavailable(other),
    }
}

/// A row as the shared record mapping reads it.
struct PgRow<'a>(&'a tokio_postgres::Row);

impl Row for PgRow<'_> {
    /// Each kind as PostgreSQL's own type; JSON as text.
    fn value(&self, index: usize, kind: Kind) -> Result<Value, RowError> {
        let row = self.0;
        Ok(match kind {
            Kind::Time => Value::Time(row.try_get(index)?),
            Kind::Int => Value::Int(row.try_get(index)?),
            Kind::Bytes => Value::Bytes(row.try_get(index)?),
            Kind::Text | Kind::Json => Value::Text(row.try_get(index)?),
            Kind::List => Value::List(
                row.try_get::<_, Option<Vec<String>>>(index)?
                    .unwrap_or_default(),
            ),
        })
    }
}

/// A parameter as tokio-postgres binds it: typed, `NULL` included.
type Param = Box<dyn ToSql + Sync + Send>;

fn param(value: Value) -> Param {
    match Dialect::POSTGRES.encode(value) {
        Value::Int(n) => Box::new(n),
        Value::Text(text) => Box::new(text),
        Value::Bytes(bytes) => Box::new(bytes),
        Value::Time(at) => Box::new(at),
        Value::List(words) => Box::new(words),
        Value::Json(json) => Box::new(json),
    }
}

/// The record in `row`; an unreadable value is an error naming its column.
fn row_to_record(row: &tokio_postgres::Row) -> Result<TokenRecord, StoreError> {
    read_record(Dialect::POSTGRES, &PgRow(row)).map_err(StoreError::unavailable)
}

/// `values` as parameters, and `sql` run with them.
async fn query(
    client: &impl GenericClient,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let params: Vec<Param> = values.into_iter().map(param).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| -> &(dyn ToSql + Sync) { p.as_ref() })
        .collect();
    let statement = client.prepare_cached(sql).await.map_err(store_error)?;
    client.query(&statement, &refs).await.map_err(store_error)
}

/// Tells every instance's feed, when the transaction commits, that the
/// token changed.
async fn notify(client: &impl GenericClient, change: &Change) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &change.payload()])
        .await
        .map(drop)
        .map_err(store_error)
}

impl PostgresStore {
    /// Settings for a store on the database at `url`
    /// (`postgres://user@host:port/name`, or libpq's `key=value` form).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(2),
        }
    }

    /// Connects to the database at `url` with the default settings and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder(url).connect().await
    }

    /// The database, as errors name it: `postgres://user@host:port/name`,
    /// never its password.
    pub fn database(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.shared.config
    }

    /// The bound on every call (see [`PostgresStoreBuilder::timeout`]).
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Runs `f` on a pooled connection, the whole bounded by the timeout.
    async fn with<'a, T, F>(
        &'a self,
        f: impl FnOnce(deadpool_postgres::Object) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + 'a,
    {
        let work = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            f(client).await
        };
        tokio::time::timeout(self.shared.timeout, work)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// The pepper this database's tokens are hashed under, from
    /// `TOKENGATE_PEPPER` (hex) or `file`, checked against the check value
    /// the database recorded when its pepper was first used. The pepper is
    /// never stored in the database.
    ///
    /// `file` is created (mode 0600, with a fresh pepper) only when it does
    /// not exist and the database holds no token and has recorded no
    /// pepper: a first start. A missing or different pepper is an error
    /// naming its source and what to do.
    pub async fn pepper(&self, file: Option<&Path>) -> Result<Pepper, PepperSourceError> {
        self.peppers(file).await.map(|peppers| peppers.current)
    }

    /// The current pepper and those rotated out (see
    /// [`PostgresStore::pepper`]; the file holds one per line), for
    /// [`Peppers::hasher`](tokengate_core::Peppers::hasher).
    pub async fn peppers(&self, file: Option<&Path>) -> Result<Peppers, PepperSourceError> {
        let io = |error: StoreError| PepperSourceError::Io {
            path: self.shared.name.clone().into(),
            error: std::io::Error::other(error),
        };
        let database = self.shared.name.clone();
        let recorded = self.recorded_checks().await.map_err(io)?;
        let source = match (PepperSource::found(file)?, file) {
            (Some(source), _) => source,
            (None, None) => return Err(PepperSourceError::NotGiven { database }),
            (None, Some(path))
                if !recorded.is_empty() || self.holds_tokens().await.map_err(io)? =>
            {
                return Err(PepperSourceError::Missing {
                    database,
                    path: path.to_owned(),
                });
            }
            (None, Some(path)) => PepperSource::create(path)?,
        };
        if recorded.is_empty() {
            self.record_pepper(FIRST_KEY, source.check_value())
                .await
                .map_err(io)?;
        }
        // A racing first start may have recorded its own: compare with
        // what is stored now. A retired pepper verifies nothing, wherever
        // it is still listed.
        let mut source = source;
        let mut recorded = Vec::new();
        for (key, check, retired) in self.recorded_checks().await.map_err(io)? {
            if retired {
                source = source.without(key);
            } else {
                recorded.push((key, check));
            }
        }
        source.verified(&recorded, &database)
    }

    /// Records a new pepper's check value (`tokengate pepper rotate`), and
    /// tells every instance's feed when it is new.
    pub async fn record_pepper(&self, key: KeyId, check: String) -> Result<(), StoreError> {
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            let added = tx
                .execute(
                    "INSERT INTO tokengate_peppers (key_id, check_value) VALUES ($1, $2) \
                     ON CONFLICT (key_id) DO NOTHING",
                    &[&i64::from(key.get()), &check],
                )
                .await
                .map_err(store_error)?;
            if added > 0 {
                notify(&tx, &Change::Peppers).await?;
            }
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    /// Retires the pepper `key` (`tokengate pepper retire`): from the next
    /// lookup on, no token hashed under it verifies or moves to another
    /// pepper, on any instance, and every follower's cache is flushed and
    /// told to load its peppers again. The newest pepper cannot be
    /// retired; retiring a retired one changes nothing.
    pub async fn retire_pepper(&self, key: KeyId) -> Result<(), StoreError> {
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            // The table's lock orders this against a concurrent rotation.
            tx.batch_execute("LOCK TABLE tokengate_peppers IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(store_error)?;
            let row = tx
                .query_opt(
                    "SELECT retired_at IS NOT NULL, \
                     key_id = (SELECT MAX(key_id) FROM tokengate_peppers) \
                     FROM tokengate_peppers WHERE key_id = $1",
                    &[&i64::from(key.get())],
                )
                .await
                .map_err(store_error)?;
            let Some(row) = row else {
                return Err(StoreError::Refused(
                    format!("the database has recorded no pepper with key {key}").into(),
                ));
            };
            let (retired, newest): (bool, bool) = (
                row.try_get(0).map_err(store_error)?,
                row.try_get(1).map_err(store_error)?,
            );
            if retired {
                return Ok(());
            }
            if newest {
                return Err(StoreError::Refused(
                    format!("key {key} is the newest pepper; rotate first").into(),
                ));
            }
            tx.execute(
                "UPDATE tokengate_peppers SET retired_at = now() WHERE key_id = $1",
                &[&i64::from(key.get())],
            )
            .await
            .map_err(store_error)?;
            notify(&tx, &Change::Peppers).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    /// The key ids the database has recorded check values for, retired
    /// ones included (an id is never used twice).
    pub async fn recorded_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        Ok(self
            .recorded_checks()
            .await?
            .into_iter()
            .map(|(key, _, _)| key)
            .collect())
    }

    /// The key ids of retired peppers.
    pub async fn retired_peppers(&self) -> Result<Vec<KeyId>, StoreError> {
        Ok(self
            .recorded_checks()
            .await?
            .into_iter()
            .filter_map(|(key, _, retired)| retired.then_some(key))
            .collect())
    }

    /// Every recorded pepper: key id, check value, and whether it is retired.
    async fn recorded_checks(&self) -> Result<Vec<(KeyId, String, bool)>, StoreError> {
        self.with(|c| async move {
            c.query(
                "SELECT key_id, check_value, retired_at IS NOT NULL FROM tokengate_peppers \
                 ORDER BY key_id",
                &[],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| {
                let key: i64 = row.try_get(0).map_err(store_error)?;
                let check: String = row.try_get(1).map_err(store_error)?;
                let retired: bool = row.try_get(2).map_err(store_error)?;
                Ok((KeyId::new(u32::try_from(key).unwrap_or(0)), check, retired))
            })
            .collect()
        })
        .await
    }

    async fn holds_tokens(&self) -> Result<bool, StoreError> {
        self.with(|c| async move {
            c.query_one("SELECT EXISTS (SELECT 1 FROM tokengate_tokens)", &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(store_error)
        })
        .await
    }
}

/// A pooled connection, or a transaction on one, as the shared store
/// logic uses it.
struct PgConn<'a, C>(&'a C);

impl<C: GenericClient + Sync> Conn for PgConn<'_, C> {
    fn records<'c>(&'c mut self, sql: &'c str, values: Vec<Value>) -> Step<'c, Vec<TokenRecord>> {
        Box::pin(async move {
            let rows = query(self.0, sql, values).await?;
            rows.iter().map(row_to_record).collect()
        })
    }

    fn rows(
        &mut self,
        sql: &'static str,
        args: Vec<Value>,
        kinds: &'static [Kind],
    ) -> Step<'_, Vec<Vec<Value>>> {
        Box::pin(async move {
            let rows = query(self.0, sql, args).await?;
            rows.iter()
                .map(|row| {
                    kinds
                        .iter()
                        .enumerate()
                        .map(|(i, kind)| {
                            read_value(Dialect::POSTGRES, &PgRow(row), i, *kind)
                                .map_err(|e| StoreError::Unavailable(e.into()))
                        })
                        .collect()
                })
                .collect()
        })
    }

    fn execute(&mut self, sql: &'static str, values: Vec<Value>) -> Step<'_, ()> {
        Box::pin(async move { query(self.0, sql, values).await.map(drop) })
    }

    fn changed<'c>(
        &'c mut self,
        record: &'c TokenRecord,
        kind: ChangeKind,
        _: SystemTime,
    ) -> Step<'c, ()> {
        // Feeds of earlier builds know no re-hash: announced as an update.
        let kind = if kind == ChangeKind::Rehashed {
            ChangeKind::Updated
        } else {
            kind
        };
        let change = Change::of(kind.as_str(), record);
        Box::pin(async move { notify(self.0, &change).await })
    }
}

impl Backend for PostgresStore {
    fn dialect(&self) -> Dialect {
        Dialect::POSTGRES
    }

    /// On a pooled connection, the whole bounded by the store's timeout.
    async fn run<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        self.with(|mut client| async move {
            if !work.in_transaction() {
                return work.on(&mut PgConn(&client)).await;
            }
            let tx = client.transaction().await.map_err(store_error)?;
            let value = work.on(&mut PgConn(&tx)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(value)
        })
        .await
    }

    /// One transaction for the batch: each token at its latest use.
    ///
    /// The rows are locked first, in id order: every instance flushes its
    /// own batch, and two batches locking shared rows in different orders
    /// would deadlock (PostgreSQL breaks one after its `deadlock_timeout`,
    /// a second in which a use-limited token's spend on those rows waits,
    /// and can time out).
    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        let mut latest: BTreeMap<&str, SystemTime> = BTreeMap::new();
        for (id, at) in used {
            let entry = latest.entry(id.as_str()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        let (ids, times): (Vec<&str>, Vec<SystemTime>) = latest.into_iter().unzip();
        if ids.is_empty() {
            return Ok(());
        }
        self.with(|mut client| async move {
            let tx = client.transaction().await.map_err(store_error)?;
            tx.execute(
                "SELECT 1 FROM tokengate_tokens WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await
            .map_err(store_error)?;
            tx.execute(
                "UPDATE tokengate_tokens AS t \
                 SET last_used_at = GREATEST(COALESCE(t.last_used_at, u.at), u.at) \
                 FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE t.id = u.id",
                &[&ids, &times],
            )
            .await
            .map_err(store_error)?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }
}

tokengate_sql::sql_store!(PostgresStore);
