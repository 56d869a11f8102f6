//! The store logic both SQL backends run: every `TokenStore` and
//! `TokenAdmin` method, written once over a backend's [`Conn`].

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use std::collections::BTreeMap;
use tokengate_core::{ScopeSet, Taken, TokenHash, TokenId, TokenRecord, UseSpend};

use tokengate_store::{StoreError, TokenQuery, UsageBatch, UsageBucket, UsageTotal, hour_of};

use crate::{Dialect, Kind, Sql, UseColumns, Value};

/// A boxed future of a backend step.
pub type Step<'c, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

/// The steps of a [`Work`]: given a connection, a future of their answer.
type Steps<T> = Box<dyn for<'c> FnOnce(&'c mut dyn Conn) -> Step<'c, T> + Send>;

/// Work on one connection, or in one transaction, run by [`Backend::run`].
pub struct Work<T> {
    transaction: bool,
    steps: Steps<T>,
}

impl<T> Work<T> {
    /// `steps` on one connection.
    pub(crate) fn single(
        steps: impl for<'c> FnOnce(&'c mut dyn Conn) -> Step<'c, T> + Send + 'static,
    ) -> Self {
        Self {
            transaction: false,
            steps: Box::new(steps),
        }
    }

    /// `steps` in one transaction: all or nothing.
    pub(crate) fn transaction(
        steps: impl for<'c> FnOnce(&'c mut dyn Conn) -> Step<'c, T> + Send + 'static,
    ) -> Self {
        Self {
            transaction: true,
            steps: Box::new(steps),
        }
    }

    /// Whether the work must run in one transaction (which holds the
    /// write lock, or the rows it reads, until it ends).
    pub fn in_transaction(&self) -> bool {
        self.transaction
    }

    /// Runs the work's steps on `conn`.
    pub fn on<'c>(self, conn: &'c mut dyn Conn) -> Step<'c, T> {
        (self.steps)(conn)
    }
}

impl<T> std::fmt::Debug for Work<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("transaction", &self.transaction)
            .finish_non_exhaustive()
    }
}

/// What a change did, as a backend's change feed tells other instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The token was revoked.
    Revoked,
    /// The token was rotated (its expiry moved).
    Rotated,
    /// The token's grants, state or count changed.
    Updated,
    /// The token moved to a hash under another pepper.
    Rehashed,
}

impl ChangeKind {
    /// The change as the feeds name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Updated => "updated",
            Self::Rehashed => "rehashed",
        }
    }
}

/// One connection, or one transaction, of a backend.
pub trait Conn: Send {
    /// The records `sql` selects, or changes and returns, with `values`.
    fn records<'c>(&'c mut self, sql: &'c str, values: Vec<Value>) -> Step<'c, Vec<TokenRecord>>;

    /// Every row `sql` answers with `args`, its columns read as `kinds`.
    fn rows(
        &mut self,
        sql: &'static str,
        args: Vec<Value>,
        kinds: &'static [Kind],
    ) -> Step<'_, Vec<Vec<Value>>>;

    /// The first column of every row `sql` answers with `args`, read as `kind`.
    fn column(&mut self, sql: &'static str, args: Vec<Value>, kind: Kind) -> Step<'_, Vec<Value>> {
        let kinds: &'static [Kind] = match kind {
            Kind::Int => &[Kind::Int],
            Kind::Text => &[Kind::Text],
            Kind::Bytes => &[Kind::Bytes],
            Kind::Time => &[Kind::Time],
            Kind::List => &[Kind::List],
            Kind::Json => &[Kind::Json],
        };
        let rows = self.rows(sql, args, kinds);
        Box::pin(async move {
            Ok(rows
                .await?
                .into_iter()
                .filter_map(|row| row.into_iter().next())
                .collect())
        })
    }

    /// Runs `sql` with `values`.
    fn execute(&mut self, sql: &'static str, values: Vec<Value>) -> Step<'_, ()>;

    /// Tells every instance's change feed, once the transaction commits,
    /// that `record` changed.
    fn changed<'c>(
        &'c mut self,
        record: &'c TokenRecord,
        kind: ChangeKind,
        at: SystemTime,
    ) -> Step<'c, ()>;
}

/// A SQL backend: its dialect, and how it runs work on a connection.
pub trait Backend: Send + Sync + 'static {
    /// The backend's dialect.
    fn dialect(&self) -> Dialect;

    /// The statements in the backend's dialect, made once.
    fn sql(&self) -> &'static Sql {
        Sql::of(self.dialect())
    }

    /// Runs `work` on a connection, or in one transaction where it asks
    /// for one ([`Work::in_transaction`]).
    fn run<T: Send + 'static>(
        &self,
        work: Work<T>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send;

    /// Records each token's latest use (`TokenAdmin::record_usage`); by
    /// default one statement per token, in one transaction.
    fn record_usage(
        &self,
        used: &[(TokenId, SystemTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send
    where
        Self: Sized,
    {
        record_usage(self, used)
    }
}

/// The one record of `records`, if any.
fn first(records: Vec<TokenRecord>) -> Option<TokenRecord> {
    records.into_iter().next()
}

/// An integer from [`Conn::column`]'s answer.
fn count(values: &[Value]) -> Option<u64> {
    match values.first() {
        Some(Value::Int(Some(n))) => Some(u64::try_from(*n).unwrap_or(0)),
        _ => None,
    }
}

/// See `TokenStore::find_by_hash`.
pub async fn find_by_hash(
    b: &impl Backend,
    hash: &TokenHash,
) -> Result<Option<TokenRecord>, StoreError> {
    let sql = b.sql();
    let values = sql.hash_values(hash);
    b.run(Work::single(move |c| {
        Box::pin(async move { Ok(first(c.records(&sql.select_by_hash, values).await?)) })
    }))
    .await
}

/// See `TokenStore::rehash`: both hashes go to the change feed, so every
/// instance forgets the old one and an unknown-token entry for the new one.
pub async fn rehash(
    b: &impl Backend,
    id: &TokenId,
    from: &TokenHash,
    to: TokenHash,
) -> Result<(), StoreError> {
    let sql = b.sql();
    let (from, values) = (*from, sql.rehash_values(id, from, &to));
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let Some(mut record) = first(c.records(&sql.rehash, values).await?) else {
                return Ok(());
            };
            let now = SystemTime::now();
            c.changed(&record, ChangeKind::Rehashed, now).await?;
            record.hash = from;
            c.changed(&record, ChangeKind::Rehashed, now).await
        })
    }))
    .await
}

/// See `TokenStore::spend_use`: one statement, ordered against every
/// other spend by the backend's lock.
pub async fn spend_use(
    b: &impl Backend,
    id: &TokenId,
    spend: UseSpend,
) -> Result<Option<u64>, StoreError> {
    let sql = b.sql();
    let (window, refill) = UseColumns::spend(spend);
    let values = vec![
        Sql::id(id),
        Value::Int(Some(window)),
        Value::Int(Some(refill)),
        Value::Int(Some(UseColumns::int(spend.cost.max(1)))),
    ];
    b.run(Work::single(move |c| {
        Box::pin(async move { Ok(count(&c.column(&sql.spend_use, values, Kind::Int).await?)) })
    }))
    .await
}

/// See `TokenStore::take_uses`: read and written in one transaction.
pub async fn take_uses(
    b: &impl Backend,
    id: &TokenId,
    spend: UseSpend,
    want: u64,
) -> Result<Taken, StoreError> {
    let sql = b.sql();
    let (window, refill) = UseColumns::spend(spend);
    let id = Sql::id(id);
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let values = vec![
                id.clone(),
                Value::Int(Some(window)),
                Value::Int(Some(refill)),
            ];
            let available =
                count(&c.column(&sql.uses_available, values, Kind::Int).await?).unwrap_or(0);
            let taken = available.min(want);
            if taken == 0 {
                return Ok(Taken::default());
            }
            let left = available - taken;
            let values = vec![
                id,
                Value::Int(Some(UseColumns::int(left))),
                Value::Int(Some(window)),
            ];
            c.execute(&sql.take_from, values).await?;
            Ok(Taken { taken, left })
        })
    }))
    .await
}

/// See `TokenAdmin::insert`.
pub async fn insert(b: &impl Backend, record: &TokenRecord) -> Result<(), StoreError> {
    let sql = b.sql();
    let values = sql.insert_values(record);
    b.run(Work::single(move |c| c.execute(&sql.insert, values)))
        .await
}

/// See `TokenAdmin::get`.
pub async fn get(b: &impl Backend, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
    let sql = b.sql();
    let values = vec![Sql::id(id)];
    b.run(Work::single(move |c| {
        Box::pin(async move { Ok(first(c.records(&sql.select_by_id, values).await?)) })
    }))
    .await
}

/// See `TokenAdmin::query`: filtered and paged in SQL, so a page reads
/// only its rows.
pub async fn query(
    b: &impl Backend,
    query: &TokenQuery,
    now: SystemTime,
) -> Result<Vec<TokenRecord>, StoreError> {
    let (text, values) = b.sql().select_matching(query, now);
    b.run(Work::single(move |c| {
        Box::pin(async move { c.records(&text, values).await })
    }))
    .await
}

/// See `TokenAdmin::revoke`.
pub async fn revoke(
    b: &impl Backend,
    id: &TokenId,
    at: SystemTime,
) -> Result<TokenRecord, StoreError> {
    let sql = b.sql();
    let (values, id) = (sql.revoke_values(id, at), id.clone());
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let record =
                first(c.records(&sql.revoke, values).await?).ok_or(StoreError::NotFound(id))?;
            c.changed(&record, ChangeKind::Revoked, at).await?;
            Ok(record)
        })
    }))
    .await
}

/// See `TokenAdmin::update`: written only at the version it was read at.
pub async fn update(
    b: &impl Backend,
    record: TokenRecord,
    at: SystemTime,
) -> Result<TokenRecord, StoreError> {
    let sql = b.sql();
    let values = sql.update_values(&record);
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let Some(stored) = first(c.records(&sql.update, values).await?) else {
                let exists = c
                    .records(&sql.select_by_id, vec![Sql::id(&record.id)])
                    .await?;
                return Err(if exists.is_empty() {
                    StoreError::NotFound(record.id)
                } else {
                    StoreError::Stale(record.id)
                });
            };
            c.changed(&stored, ChangeKind::Updated, at).await?;
            Ok(stored)
        })
    }))
    .await
}

/// See `TokenAdmin::reset_uses`: a new generation every instance's cache
/// learns from the feed.
pub async fn reset_uses(
    b: &impl Backend,
    id: &TokenId,
    remaining: u64,
    window: u64,
) -> Result<TokenRecord, StoreError> {
    let sql = b.sql();
    let id = id.clone();
    let values = vec![
        Sql::id(&id),
        Value::Int(Some(UseColumns::int(remaining))),
        Value::Int(Some(UseColumns::int(window))),
    ];
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            c.execute(&sql.reset_uses, values).await?;
            let record = first(c.records(&sql.select_by_id, vec![Sql::id(&id)]).await?)
                .ok_or(StoreError::NotFound(id))?;
            c.changed(&record, ChangeKind::Updated, SystemTime::now())
                .await?;
            Ok(record)
        })
    }))
    .await
}

/// See [`Backend::record_usage`].
pub async fn record_usage(
    b: &impl Backend,
    used: &[(TokenId, SystemTime)],
) -> Result<(), StoreError> {
    let sql = b.sql();
    let used: Vec<Vec<Value>> = used
        .iter()
        .map(|(id, at)| vec![Sql::id(id), Value::Time(Some(*at))])
        .collect();
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            for values in used {
                c.execute(&sql.touch, values).await?;
            }
            Ok(())
        })
    }))
    .await
}

/// See `TokenAdmin::rotate`: the old token's row is locked before its
/// count is read, so no spend falls between reading and handing it over.
pub async fn rotate(
    b: &impl Backend,
    old: &TokenId,
    old_expires_at: SystemTime,
    replacement: TokenRecord,
) -> Result<TokenRecord, StoreError> {
    let sql = b.sql();
    let old = old.clone();
    let mut replacement = replacement;
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let Some(mut previous) = first(c.records(&sql.lock_by_id, vec![Sql::id(&old)]).await?)
            else {
                return Err(StoreError::NotFound(old));
            };
            let handed = previous.hand_uses_to(&mut replacement);
            c.execute(&sql.insert, sql.insert_values(&replacement))
                .await?;
            if let Some(kept) = handed {
                let kept = UseColumns::of(Some(&kept));
                let values =
                    [kept.remaining, Some(kept.window), Some(kept.generation)].map(Value::Int);
                let mut all = vec![Sql::id(&old)];
                all.extend(values);
                c.execute(&sql.keep_uses, all).await?;
            }
            let expiry = sql.expiry_values(&old, old_expires_at);
            let record = first(c.records(&sql.set_expiry, expiry).await?)
                .ok_or(StoreError::NotFound(old))?;
            c.changed(&record, ChangeKind::Rotated, replacement.created_at)
                .await?;
            Ok(record)
        })
    }))
    .await
}

/// See `TokenAdmin::register_scopes`.
pub async fn register_scopes(b: &impl Backend, scopes: &ScopeSet) -> Result<(), StoreError> {
    let sql = b.sql();
    let now = SystemTime::now();
    let scopes: Vec<Vec<Value>> = scopes
        .iter()
        .map(|s| {
            vec![
                Value::Text(Some(s.as_str().to_owned())),
                Value::Time(Some(now)),
            ]
        })
        .collect();
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            for values in scopes {
                c.execute(&sql.register_scope, values).await?;
            }
            Ok(())
        })
    }))
    .await
}

/// See `TokenAdmin::scope_catalogue`.
pub async fn scope_catalogue(b: &impl Backend) -> Result<ScopeSet, StoreError> {
    let sql = b.sql();
    b.run(Work::single(move |c| {
        Box::pin(async move {
            c.column(&sql.scope_catalogue, Vec::new(), Kind::Text)
                .await?
                .into_iter()
                .map(|value| match value {
                    Value::Text(Some(text)) => text.parse().map_err(|_| {
                        StoreError::unavailable(crate::Unreadable::value("scope", &text))
                    }),
                    other => Err(StoreError::unavailable(crate::Unreadable::value(
                        "scope", other,
                    ))),
                })
                .collect()
        })
    }))
    .await
}

/// A count or an hour as a bound integer.
fn int(n: u64) -> Value {
    Value::Int(Some(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// An integer read back (negative or absent: 0).
fn uint(value: &Value) -> u64 {
    match value {
        Value::Int(Some(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::Text(text) => text,
        _ => None,
    }
}

/// See `TokenAdmin::add_usage`: one transaction of upserts that add.
pub async fn add_usage(b: &impl Backend, batch: &UsageBatch) -> Result<(), StoreError> {
    let sql = b.sql();
    let counts: Vec<Vec<Value>> = batch
        .counts
        .iter()
        .map(|c| {
            vec![
                Sql::id(&c.token_id),
                int(c.hour),
                Value::Text(Some(c.outcome.to_owned())),
                int(c.count),
            ]
        })
        .collect();
    let clients: Vec<Vec<Value>> = batch
        .clients
        .iter()
        .map(|c| {
            vec![
                Sql::id(&c.token_id),
                int(c.hour),
                Value::Text(Some(c.client.to_string())),
                Value::Int(Some(crate::millis(c.at))),
            ]
        })
        .collect();
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            for values in counts {
                c.execute(&sql.usage_add, values).await?;
            }
            for values in clients {
                c.execute(&sql.usage_client, values).await?;
            }
            Ok(())
        })
    }))
    .await
}

/// See `TokenAdmin::usage`.
pub async fn usage(
    b: &impl Backend,
    id: &TokenId,
    since: SystemTime,
) -> Result<Vec<UsageBucket>, StoreError> {
    let sql = b.sql();
    let values = vec![Sql::id(id), int(hour_of(since))];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let mut buckets: BTreeMap<u64, UsageBucket> = BTreeMap::new();
            let rows = c
                .rows(
                    &sql.usage_of,
                    values.clone(),
                    &[Kind::Int, Kind::Text, Kind::Int],
                )
                .await?;
            for row in rows {
                let mut row = row.into_iter();
                let (Some(hour), Some(outcome), Some(count)) = (row.next(), row.next(), row.next())
                else {
                    continue;
                };
                let hour = uint(&hour);
                buckets
                    .entry(hour)
                    .or_insert_with(|| UsageBucket::empty(hour))
                    .add(&text(outcome).unwrap_or_default(), uint(&count));
            }
            let rows = c
                .rows(&sql.usage_clients_of, values, &[Kind::Int, Kind::Text])
                .await?;
            for row in rows {
                let mut row = row.into_iter();
                let (Some(hour), Some(client)) = (row.next(), row.next()) else {
                    continue;
                };
                if let Some(bucket) = buckets.get_mut(&uint(&hour)) {
                    bucket.last_client = text(client).and_then(|c| c.parse().ok());
                }
            }
            Ok(buckets.into_values().collect())
        })
    }))
    .await
}

/// See `TokenAdmin::top_usage`: summed and ranked in SQL.
pub async fn top_usage(
    b: &impl Backend,
    since: SystemTime,
    limit: usize,
) -> Result<Vec<UsageTotal>, StoreError> {
    let sql = b.sql();
    let values = vec![int(hour_of(since)), int(limit as u64)];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let rows = c
                .rows(&sql.usage_top, values, &[Kind::Text, Kind::Int, Kind::Int])
                .await?;
            let mut totals = Vec::with_capacity(rows.len());
            for row in rows {
                let mut row = row.into_iter();
                let (Some(id), Some(admitted), Some(refused)) =
                    (row.next(), row.next(), row.next())
                else {
                    continue;
                };
                let id = text(id).unwrap_or_default();
                let token_id = id.parse().map_err(|_| {
                    StoreError::unavailable(crate::Unreadable::value("token_id", &id))
                })?;
                totals.push(UsageTotal {
                    token_id,
                    admitted: uint(&admitted),
                    refused: uint(&refused),
                });
            }
            Ok(totals)
        })
    }))
    .await
}

/// See `TokenAdmin::prune_usage`.
pub async fn prune_usage(b: &impl Backend, before: SystemTime) -> Result<u64, StoreError> {
    let sql = b.sql();
    let values = vec![int(hour_of(before))];
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let gone = c
                .column(&sql.usage_prune, values.clone(), Kind::Int)
                .await?;
            c.execute(&sql.usage_prune_clients, values).await?;
            Ok(gone.len() as u64)
        })
    }))
    .await
}

/// Implements `TokenStore` and `TokenAdmin` for a [`Backend`] type with
/// the shared logic above: a SQL store is its backend plus this line.
#[macro_export]
macro_rules! sql_store {
    ($store:ty) => {
        impl tokengate_store::TokenStore for $store {
            async fn find_by_hash(
                &self,
                hash: &tokengate_core::TokenHash,
            ) -> Result<Option<tokengate_core::TokenRecord>, tokengate_store::StoreError> {
                $crate::store::find_by_hash(self, hash).await
            }

            async fn rehash(
                &self,
                id: &tokengate_core::TokenId,
                from: &tokengate_core::TokenHash,
                to: tokengate_core::TokenHash,
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::store::rehash(self, id, from, to).await
            }

            async fn spend_use(
                &self,
                id: &tokengate_core::TokenId,
                spend: tokengate_core::UseSpend,
            ) -> Result<Option<u64>, tokengate_store::StoreError> {
                $crate::store::spend_use(self, id, spend).await
            }

            async fn take_uses(
                &self,
                id: &tokengate_core::TokenId,
                spend: tokengate_core::UseSpend,
                want: u64,
            ) -> Result<tokengate_core::Taken, tokengate_store::StoreError> {
                $crate::store::take_uses(self, id, spend, want).await
            }
        }

        impl tokengate_store::TokenAdmin for $store {
            async fn insert(
                &self,
                record: tokengate_core::TokenRecord,
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::store::insert(self, &record).await
            }

            async fn get(
                &self,
                id: &tokengate_core::TokenId,
            ) -> Result<Option<tokengate_core::TokenRecord>, tokengate_store::StoreError> {
                $crate::store::get(self, id).await
            }

            async fn list(
                &self,
            ) -> Result<Vec<tokengate_core::TokenRecord>, tokengate_store::StoreError> {
                $crate::store::query(
                    self,
                    &tokengate_store::TokenQuery::new(),
                    std::time::SystemTime::now(),
                )
                .await
            }

            async fn query(
                &self,
                query: &tokengate_store::TokenQuery,
                now: std::time::SystemTime,
            ) -> Result<Vec<tokengate_core::TokenRecord>, tokengate_store::StoreError> {
                $crate::store::query(self, query, now).await
            }

            async fn revoke(
                &self,
                id: &tokengate_core::TokenId,
                at: std::time::SystemTime,
            ) -> Result<tokengate_core::TokenRecord, tokengate_store::StoreError> {
                $crate::store::revoke(self, id, at).await
            }

            async fn update(
                &self,
                record: tokengate_core::TokenRecord,
                at: std::time::SystemTime,
            ) -> Result<tokengate_core::TokenRecord, tokengate_store::StoreError> {
                $crate::store::update(self, record, at).await
            }

            async fn reset_uses(
                &self,
                id: &tokengate_core::TokenId,
                remaining: u64,
                window: u64,
            ) -> Result<tokengate_core::TokenRecord, tokengate_store::StoreError> {
                $crate::store::reset_uses(self, id, remaining, window).await
            }

            async fn record_usage(
                &self,
                used: &[(tokengate_core::TokenId, std::time::SystemTime)],
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::Backend::record_usage(self, used).await
            }

            async fn rotate(
                &self,
                old: &tokengate_core::TokenId,
                old_expires_at: std::time::SystemTime,
                replacement: tokengate_core::TokenRecord,
            ) -> Result<tokengate_core::TokenRecord, tokengate_store::StoreError> {
                $crate::store::rotate(self, old, old_expires_at, replacement).await
            }

            async fn register_scopes(
                &self,
                scopes: &tokengate_core::ScopeSet,
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::store::register_scopes(self, scopes).await
            }

            async fn scope_catalogue(
                &self,
            ) -> Result<tokengate_core::ScopeSet, tokengate_store::StoreError> {
                $crate::store::scope_catalogue(self).await
            }

            async fn add_usage(
                &self,
                batch: &tokengate_store::UsageBatch,
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::store::add_usage(self, batch).await
            }

            async fn usage(
                &self,
                id: &tokengate_core::TokenId,
                since: std::time::SystemTime,
            ) -> Result<Vec<tokengate_store::UsageBucket>, tokengate_store::StoreError> {
                $crate::store::usage(self, id, since).await
            }

            async fn top_usage(
                &self,
                since: std::time::SystemTime,
                limit: usize,
            ) -> Result<Vec<tokengate_store::UsageTotal>, tokengate_store::StoreError> {
                $crate::store::top_usage(self, since, limit).await
            }

            async fn prune_usage(
                &self,
                before: std::time::SystemTime,
            ) -> Result<u64, tokengate_store::StoreError> {
                $crate::store::prune_usage(self, before).await
            }

            async fn add_webhook(
                &self,
                webhook: &tokengate_store::Webhook,
            ) -> Result<(), tokengate_store::StoreError> {
                $crate::webhooks::add_webhook(self, webhook).await
            }

            async fn webhooks(
                &self,
            ) -> Result<Vec<tokengate_store::Webhook>, tokengate_store::StoreError> {
                $crate::webhooks::webhooks(self).await
            }

            async fn remove_webhook(&self, id: &str) -> Result<bool, tokengate_store::StoreError> {
                $crate::webhooks::remove_webhook(self, id).await
            }

            async fn enqueue_event(
                &self,
                event: &tokengate_store::WebhookEvent,
            ) -> Result<usize, tokengate_store::StoreError> {
                $crate::webhooks::enqueue_event(self, event).await
            }

            async fn claim_deliveries(
                &self,
                now: std::time::SystemTime,
                claimer: &str,
                limit: usize,
            ) -> Result<Vec<tokengate_store::Delivery>, tokengate_store::StoreError> {
                $crate::webhooks::claim_deliveries(self, now, claimer, limit).await
            }

            async fn finish_delivery(
                &self,
                id: i64,
                claimer: &str,
                attempt: &tokengate_store::Attempt,
            ) -> Result<bool, tokengate_store::StoreError> {
                $crate::webhooks::finish_delivery(self, id, claimer, attempt).await
            }

            async fn prune_deliveries(
                &self,
                before: std::time::SystemTime,
            ) -> Result<u64, tokengate_store::StoreError> {
                $crate::webhooks::prune_deliveries(self, before).await
            }

            async fn deliveries(
                &self,
                failed_only: bool,
                limit: usize,
            ) -> Result<Vec<tokengate_store::Delivery>, tokengate_store::StoreError> {
                $crate::webhooks::deliveries(self, failed_only, limit).await
            }
        }
    };
}
