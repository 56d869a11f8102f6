use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use ipnet::IpNet;
use tokengate_core::{
    FIRST_KEY, KeyId, Pepper, PepperSource, PepperSourceError, Peppers, RateQuota, ScopeSet,
    SqlValue, StoreError, Taken, TokenAdmin, TokenHash, TokenId, TokenQuery, TokenRecord,
    TokenStore, UseColumns, UseSpend,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

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

const COLUMNS: &str = "id, key_id, hash, name, subject, scopes, audiences, created_at, expires_at, \
    revoked_at, last_used_at, allowed_networks, rate_count, rate_period_ms, rate_burst, \
    rotated_from, metadata::text, disabled_at, uses_limit, uses_refill, uses_refill_ms, \
    uses_remaining, uses_window, uses_generation, version";

/// A stored value that does not parse: the database was edited by hand or
/// by a newer build.
#[derive(Debug, thiserror::Error)]
#[error("token database holds a value this build cannot read: {column}={value:?}")]
struct Corrupt {
    column: &'static str,
    value: String,
}

fn corrupt(column: &'static str, value: impl fmt::Display) -> StoreError {
    StoreError::unavailable(Corrupt {
        column,
        value: value.to_string(),
    })
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

/// Whole microseconds since the epoch, rounded up: PostgreSQL keeps
/// microseconds, and a stored expiry must never come earlier than asked.
fn ceil_micros(time: SystemTime) -> SystemTime {
    let exact = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let rest = exact.subsec_nanos() % 1_000;
    if rest == 0 {
        time
    } else {
        time + Duration::from_nanos(u64::from(1_000 - rest))
    }
}

fn hash_of(key_id: i64, digest: &[u8]) -> Result<TokenHash, StoreError> {
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| corrupt("hash", "not 32 bytes"))?;
    let key_id = u32::try_from(key_id).map_err(|_| corrupt("key_id", key_id))?;
    Ok(TokenHash::from_parts(KeyId::new(key_id), digest))
}

fn row_to_record(row: &Row) -> Result<TokenRecord, StoreError> {
    let get_error = |e: tokio_postgres::Error| StoreError::unavailable(e);
    let id: String = row.try_get(0).map_err(get_error)?;
    let digest: Vec<u8> = row.try_get(2).map_err(get_error)?;
    let scopes: Vec<String> = row.try_get(5).map_err(get_error)?;
    let audiences: Vec<String> = row.try_get(6).map_err(get_error)?;
    let networks: Vec<String> = row.try_get(11).map_err(get_error)?;
    let quota = match (
        row.try_get::<_, Option<i64>>(12).map_err(get_error)?,
        row.try_get::<_, Option<i64>>(13).map_err(get_error)?,
        row.try_get::<_, Option<i64>>(14).map_err(get_error)?,
    ) {
        (Some(count), Some(period), Some(burst)) => {
            let n = |v: i64| NonZeroU32::new(u32::try_from(v).unwrap_or(0));
            let (Some(count), Some(burst)) = (n(count), n(burst)) else {
                return Err(corrupt("rate_count", count));
            };
            let period = Duration::from_millis(u64::try_from(period).unwrap_or(0));
            Some(RateQuota::new(count, period, burst).map_err(|e| corrupt("rate_period_ms", e))?)
        }
        _ => None,
    };
    let metadata: String = row.try_get(16).map_err(get_error)?;
    let rotated_from: Option<String> = row.try_get(15).map_err(get_error)?;
    Ok(TokenRecord {
        id: id.parse().map_err(|_| corrupt("id", &id))?,
        hash: hash_of(row.try_get(1).map_err(get_error)?, &digest)?,
        name: row.try_get(3).map_err(get_error)?,
        subject: row.try_get(4).map_err(get_error)?,
        scopes: scopes
            .iter()
            .map(|s| s.parse().map_err(|_| corrupt("scopes", s)))
            .collect::<Result<ScopeSet, _>>()?,
        audiences: audiences
            .iter()
            .map(|a| a.parse().map_err(|_| corrupt("audiences", a)))
            .collect::<Result<_, _>>()?,
        created_at: row.try_get(7).map_err(get_error)?,
        expires_at: row.try_get(8).map_err(get_error)?,
        revoked_at: row.try_get(9).map_err(get_error)?,
        disabled_at: row.try_get(17).map_err(get_error)?,
        last_used_at: row.try_get(10).map_err(get_error)?,
        allowed_networks: networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|_| corrupt("allowed_networks", n))
            })
            .collect::<Result<_, _>>()?,
        rate_quota: quota,
        rotated_from: rotated_from
            .map(|id| id.parse().map_err(|_| corrupt("rotated_from", &id)))
            .transpose()?,
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata", &metadata))?,
        uses: UseColumns {
            limit: row.try_get(18).map_err(get_error)?,
            refill: row.try_get(19).map_err(get_error)?,
            refill_ms: row.try_get(20).map_err(get_error)?,
            remaining: row.try_get(21).map_err(get_error)?,
            window: row.try_get(22).map_err(get_error)?,
            generation: row.try_get(23).map_err(get_error)?,
        }
        .into_uses(),
        version: u64::try_from(row.try_get::<_, i64>(24).map_err(get_error)?).unwrap_or(0),
    })
}

async fn insert_record(client: &impl GenericClient, r: &TokenRecord) -> Result<(), StoreError> {
    let quota = r.rate_quota;
    let strings = |items: &[_]| -> Vec<String> { items.iter().map(ToString::to_string).collect() };
    let scopes: Vec<String> = r.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let audiences: Vec<String> = r.audiences.iter().map(|a| a.as_str().to_owned()).collect();
    let networks: Vec<String> = strings(&r.allowed_networks);
    let metadata = serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".to_owned());
    let uses = UseColumns::of(r.uses.as_ref());
    let version = i64::try_from(r.version).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 25] = [
        &r.id.as_str(),
        &i64::from(r.hash.key_id().get()),
        &&r.hash.digest()[..],
        &r.name,
        &r.subject,
        &scopes,
        &audiences,
        &r.created_at,
        &r.expires_at.map(ceil_micros),
        &r.revoked_at,
        &r.last_used_at,
        &networks,
        &quota.map(|q| i64::from(q.count().get())),
        &quota.map(|q| i64::try_from(q.period().as_millis()).unwrap_or(i64::MAX)),
        &quota.map(|q| i64::from(q.burst().get())),
        &r.rotated_from.as_ref().map(TokenId::as_str),
        &metadata,
        &r.disabled_at,
        &uses.limit,
        &uses.refill,
        &uses.refill_ms,
        &uses.remaining,
        &uses.window,
        &uses.generation,
        &version,
    ];
    client
        .execute(
            "INSERT INTO tokengate_tokens (id, key_id, hash, name, subject, scopes, audiences, \
             created_at, expires_at, revoked_at, last_used_at, allowed_networks, rate_count, \
             rate_period_ms, rate_burst, rotated_from, metadata, disabled_at, uses_limit, \
             uses_refill, uses_refill_ms, uses_remaining, uses_window, uses_generation, version) \
             VALUES ($1, $2, \
             $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::text::jsonb, $18, \
             $19, $20, $21, $22, $23, $24, $25)",
            &params,
        )
        .await
        .map(drop)
        .map_err(store_error)
}

async fn get_record(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<TokenRecord>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tokengate_tokens WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(store_error)?
        .as_ref()
        .map(row_to_record)
        .transpose()
}

/// A token hashed under a retired pepper is found by no lookup and moved
/// by no re-hash: the condition every such statement ends with.
const NOT_RETIRED: &str = "AND key_id NOT IN \
    (SELECT key_id FROM tokengate_peppers WHERE retired_at IS NOT NULL)";

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

impl TokenStore for PostgresStore {
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let digest = hash.digest().to_vec();
        let key_id = i64::from(hash.key_id().get());
        self.with(|c| async move {
            let statement = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tokengate_tokens WHERE hash = $1 AND key_id = $2 \
                     {NOT_RETIRED}"
                ))
                .await
                .map_err(store_error)?;
            c.query_opt(&statement, &[&digest, &key_id])
                .await
                .map_err(store_error)?
                .as_ref()
                .map(row_to_record)
                .transpose()
        })
        .await
    }

    /// Moves the row, and notifies both hashes: every instance forgets
    /// the old one, and an unknown-token entry it may hold for the new one.
    async fn rehash(
        &self,
        id: &TokenId,
        from: &TokenHash,
        to: TokenHash,
    ) -> Result<(), StoreError> {
        let from = *from;
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE tokengate_tokens SET hash = $3, key_id = $4 \
                         WHERE id = $1 AND hash = $2 AND key_id = $5 {NOT_RETIRED} \
                         RETURNING {COLUMNS}"
                    ),
                    &[
                        &id.as_str(),
                        &&from.digest()[..],
                        &&to.digest()[..],
                        &i64::from(to.key_id().get()),
                        &i64::from(from.key_id().get()),
                    ],
                )
                .await
                .map_err(store_error)?;
            let Some(row) = row else {
                return Ok(());
            };
            let mut record = row_to_record(&row)?;
            notify(&tx, &Change::updated(&record)).await?;
            record.hash = from;
            notify(&tx, &Change::updated(&record)).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    /// One statement: the row lock orders spends from every instance.
    async fn spend_use(&self, id: &TokenId, spend: UseSpend) -> Result<Option<u64>, StoreError> {
        let (window, refill) = spend.columns();
        self.with(|c| async move {
            let statement = c.prepare_cached(SPEND_USE).await.map_err(store_error)?;
            let left = c
                .query_opt(&statement, &[&id.as_str(), &window, &refill])
                .await
                .map_err(store_error)?
                .map(|row| row.try_get::<_, i64>(0))
                .transpose()
                .map_err(store_error)?;
            Ok(left.map(|left| u64::try_from(left).unwrap_or(0)))
        })
        .await
    }

    /// One statement: the row is locked, read and written (`FOR UPDATE`).
    async fn take_uses(
        &self,
        id: &TokenId,
        spend: UseSpend,
        want: u64,
    ) -> Result<Taken, StoreError> {
        let (window, refill) = spend.columns();
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        self.with(|c| async move {
            let row = c
                .query_opt(TAKE_USES, &[&id.as_str(), &window, &refill, &want])
                .await
                .map_err(store_error)?;
            let Some(row) = row else {
                return Ok(Taken::default());
            };
            let count = |i| -> Result<u64, StoreError> {
                let value: i64 = row.try_get(i).map_err(store_error)?;
                Ok(u64::try_from(value).unwrap_or(0))
            };
            Ok(Taken {
                taken: count(0)?,
                left: count(1)?,
            })
        })
        .await
    }
}

/// The `SELECT` of the records `query` selects at `now`, and its values
/// ([`TokenQuery::sql_filter`]).
fn select_matching(
    query: &TokenQuery,
    now: SystemTime,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let filter = query.sql_filter("tokengate_tokens", now, &mut |value| {
        values.push(match value {
            SqlValue::Text(text) => Box::new(text),
            SqlValue::Time(at) => Box::new(at),
            SqlValue::Int(n) => Box::new(n),
            _ => Box::new(Option::<i64>::None),
        });
        format!("${}", values.len())
    });
    let sql = format!(
        "SELECT {COLUMNS} FROM tokengate_tokens{} ORDER BY created_at, id{}",
        filter.where_clause, filter.limit
    );
    (sql, values)
}

/// Takes up to `$4` uses: the row locked, what is available (after a
/// refill where the window `$2` is later) read, then written back less
/// what is taken; no row when none is available.
const TAKE_USES: &str = "WITH old AS ( \
    SELECT id, CASE WHEN uses_window < $2 THEN $3 ELSE uses_remaining END AS available \
    FROM tokengate_tokens WHERE id = $1 AND uses_remaining IS NOT NULL FOR UPDATE) \
    UPDATE tokengate_tokens t SET \
    uses_remaining = old.available - LEAST(old.available, $4), \
    uses_window = GREATEST(t.uses_window, $2) \
    FROM old WHERE t.id = old.id AND old.available > 0 \
    RETURNING LEAST(old.available, $4), t.uses_remaining";

/// Spends one use: a window later than the stored one starts from the
/// refill count (`$3`); the row changes only while a use is left.
const SPEND_USE: &str = "UPDATE tokengate_tokens SET \
    uses_remaining = (CASE WHEN uses_window < $2 THEN $3 ELSE uses_remaining END) - 1, \
    uses_window = GREATEST(uses_window, $2) \
    WHERE id = $1 AND uses_remaining IS NOT NULL \
    AND (CASE WHEN uses_window < $2 THEN $3 ELSE uses_remaining END) > 0 \
    RETURNING uses_remaining";

impl TokenAdmin for PostgresStore {
    async fn insert(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.with(|c| async move { insert_record(&c, &record).await })
            .await
    }

    async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| async move { get_record(&c, id.as_str()).await })
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
        self.with(|c| async move {
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|value| -> &(dyn ToSql + Sync) { value.as_ref() })
                .collect();
            c.query(&sql, &params)
                .await
                .map_err(store_error)?
                .iter()
                .map(row_to_record)
                .collect()
        })
        .await
    }

    async fn revoke(&self, id: &TokenId, at: SystemTime) -> Result<TokenRecord, StoreError> {
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE tokengate_tokens SET revoked_at = COALESCE(revoked_at, $2) \
                         WHERE id = $1 RETURNING {COLUMNS}"
                    ),
                    &[&id.as_str(), &at],
                )
                .await
                .map_err(store_error)?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let record = row_to_record(&row)?;
            notify(&tx, &Change::revoked(&record)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn update(
        &self,
        record: TokenRecord,
        _at: SystemTime,
    ) -> Result<TokenRecord, StoreError> {
        self.with(|mut c| async move {
            let r = &record;
            let quota = r.rate_quota;
            let scopes: Vec<String> = r.scopes.iter().map(|s| s.as_str().to_owned()).collect();
            let audiences: Vec<String> =
                r.audiences.iter().map(|a| a.as_str().to_owned()).collect();
            let networks: Vec<String> =
                r.allowed_networks.iter().map(ToString::to_string).collect();
            let metadata = serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".to_owned());
            let uses = UseColumns::of(r.uses.as_ref());
            let version = i64::try_from(r.version).unwrap_or(i64::MAX);
            let params: [&(dyn ToSql + Sync); 17] = [
                &r.id.as_str(),
                &r.name,
                &scopes,
                &audiences,
                &r.expires_at.map(ceil_micros),
                &r.disabled_at,
                &networks,
                &quota.map(|q| i64::from(q.count().get())),
                &quota.map(|q| i64::try_from(q.period().as_millis()).unwrap_or(i64::MAX)),
                &quota.map(|q| i64::from(q.burst().get())),
                &metadata,
                &uses.limit,
                &uses.refill,
                &uses.refill_ms,
                &uses.remaining,
                &uses.window,
                &version,
            ];
            let tx = c.transaction().await.map_err(store_error)?;
            // The count left stays, capped by a lowered limit (a limit new
            // to the token starts from the record's); a cap starts a new
            // generation, so uses leased out above it no longer count; the
            // later window wins.
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE tokengate_tokens SET name = $2, scopes = $3, audiences = $4, \
                         expires_at = $5, disabled_at = $6, allowed_networks = $7, \
                         rate_count = $8, rate_period_ms = $9, rate_burst = $10, \
                         metadata = $11::text::jsonb, uses_limit = $12, uses_refill = $13, \
                         uses_refill_ms = $14, uses_generation = CASE WHEN \
                         uses_remaining > GREATEST($12::bigint, $13::bigint) \
                         THEN uses_generation + 1 ELSE uses_generation END, \
                         uses_remaining = CASE WHEN $12::bigint IS NULL THEN NULL ELSE \
                         LEAST(COALESCE(uses_remaining, $15), GREATEST($12::bigint, $13::bigint)) END, \
                         uses_window = CASE WHEN $12::bigint IS NULL THEN 0 \
                         ELSE GREATEST(uses_window, $16) END, version = version + 1 \
                         WHERE id = $1 AND version = $17 RETURNING {COLUMNS}"
                    ),
                    &params,
                )
                .await
                .map_err(store_error)?;
            let Some(row) = row else {
                let exists = get_record(&tx, r.id.as_str()).await?;
                return Err(if exists.is_some() {
                    StoreError::Changed(r.id.clone())
                } else {
                    StoreError::NotFound(r.id.clone())
                });
            };
            let stored = row_to_record(&row)?;
            notify(&tx, &Change::updated(&stored)).await?;
            tx.commit().await.map_err(store_error)?;
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
        let (remaining, window) = (UseColumns::int(remaining), UseColumns::int(window));
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            tx.execute(
                "UPDATE tokengate_tokens SET uses_remaining = $2, uses_window = $3, \
                 uses_generation = uses_generation + 1 \
                 WHERE id = $1 AND uses_remaining IS NOT NULL",
                &[&id.as_str(), &remaining, &window],
            )
            .await
            .map_err(store_error)?;
            let record = get_record(&tx, id.as_str())
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            // Every instance's cache learns the new generation.
            notify(&tx, &Change::updated(&record)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn record_usage(&self, used: &[(TokenId, SystemTime)]) -> Result<(), StoreError> {
        // One row per id, at its latest use: one statement for the batch.
        let mut latest: HashMap<&str, SystemTime> = HashMap::new();
        for (id, at) in used {
            let entry = latest.entry(id.as_str()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        let (ids, times): (Vec<&str>, Vec<SystemTime>) = latest.into_iter().unzip();
        if ids.is_empty() {
            return Ok(());
        }
        self.with(|c| async move {
            c.execute(
                "UPDATE tokengate_tokens AS t \
                 SET last_used_at = GREATEST(COALESCE(t.last_used_at, u.at), u.at) \
                 FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE t.id = u.id",
                &[&ids, &times],
            )
            .await
            .map(drop)
            .map_err(store_error)
        })
        .await
    }

    async fn rotate(
        &self,
        old: &TokenId,
        old_expires_at: SystemTime,
        replacement: TokenRecord,
    ) -> Result<TokenRecord, StoreError> {
        let mut replacement = replacement;
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(store_error)?;
            // Locked: no spend falls between reading the count and
            // handing it over.
            let Some(row) = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM tokengate_tokens WHERE id = $1 FOR UPDATE"),
                    &[&old.as_str()],
                )
                .await
                .map_err(store_error)?
            else {
                return Err(StoreError::NotFound(old.clone()));
            };
            let mut previous = row_to_record(&row)?;
            let handed = previous.hand_uses_to(&mut replacement);
            insert_record(&tx, &replacement).await?;
            if let Some(kept) = handed {
                let kept = UseColumns::of(Some(&kept));
                tx.execute(
                    "UPDATE tokengate_tokens SET uses_remaining = $2, uses_window = $3, \
                     uses_generation = $4 WHERE id = $1",
                    &[&old.as_str(), &kept.remaining, &kept.window, &kept.generation],
                )
                .await
                .map_err(store_error)?;
            }
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE tokengate_tokens SET expires_at = $2 WHERE id = $1 RETURNING {COLUMNS}"
                    ),
                    &[&old.as_str(), &ceil_micros(old_expires_at)],
                )
                .await
                .map_err(store_error)?;
            let record = row_to_record(&row)?;
            notify(&tx, &Change::rotated(&record)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(record)
        })
        .await
    }

    async fn register_scopes(&self, scopes: &ScopeSet) -> Result<(), StoreError> {
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        self.with(|c| async move {
            c.execute(
                "INSERT INTO tokengate_scopes (scope) SELECT unnest($1::text[]) \
                 ON CONFLICT (scope) DO NOTHING",
                &[&scopes],
            )
            .await
            .map(drop)
            .map_err(store_error)
        })
        .await
    }

    async fn scope_catalogue(&self) -> Result<ScopeSet, StoreError> {
        self.with(|c| async move {
            c.query("SELECT scope FROM tokengate_scopes ORDER BY scope", &[])
                .await
                .map_err(store_error)?
                .iter()
                .map(|row| {
                    let text: String = row.try_get(0).map_err(store_error)?;
                    text.parse().map_err(|_| corrupt("scope", &text))
                })
                .collect()
        })
        .await
    }
}
