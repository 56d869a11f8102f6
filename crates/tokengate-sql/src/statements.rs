//! Every statement of the token table, in a backend's dialect.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokengate_core::TokenRecord;

use tokengate_core::{TokenHash, TokenId};

use crate::row::{COLUMNS, Kind, Value, index, record_values};

/// Milliseconds since the epoch, rounded down: a time as SQLite keeps it.
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time `ms` milliseconds after the epoch (the epoch for a negative count).
pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What differs between the SQL backends' SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// The token table.
    pub tokens: &'static str,
    /// The table of recorded peppers.
    pub peppers: &'static str,
    /// The scope catalogue.
    pub scopes: &'static str,
    /// Per-token requests by hour and outcome.
    pub usage: &'static str,
    /// Per-token last client address by hour.
    pub usage_clients: &'static str,
    /// Webhook subscriptions.
    pub webhooks: &'static str,
    /// The webhook outbox and its log.
    pub deliveries: &'static str,
    /// What ends a sub-select of rows to claim: rows another transaction
    /// holds are skipped where the backend locks rows.
    pub(crate) skip_locked: &'static str,
    /// What ends a `SELECT` that locks the rows it reads.
    lock: &'static str,
    /// The placeholder mark: `?1` or `$1`.
    mark: char,
    /// The scalar minimum and maximum of two values.
    least: &'static str,
    greatest: &'static str,
    /// The metadata column as text, read and written.
    json_read: &'static str,
    json_write: &'static str,
    /// The cast of an integer placeholder that may be `NULL`.
    int: &'static str,
    /// The resolution of stored times.
    resolution: Duration,
    /// Times as integer milliseconds and lists as space-separated text
    /// (SQLite), or as the database's own types (PostgreSQL).
    plain: bool,
}

impl Dialect {
    /// SQLite: times as milliseconds, lists as space-separated text.
    pub const SQLITE: Self = Self {
        tokens: "tokens",
        peppers: "peppers",
        scopes: "scopes",
        usage: "token_usage",
        usage_clients: "token_usage_clients",
        webhooks: "webhooks",
        deliveries: "webhook_deliveries",
        skip_locked: "",
        // A write transaction holds the database's write lock from its start.
        lock: "",
        mark: '?',
        least: "MIN",
        greatest: "MAX",
        json_read: "metadata",
        json_write: "",
        int: "",
        resolution: Duration::from_millis(1),
        plain: true,
    };

    /// PostgreSQL: `timestamptz`, `text[]` and `jsonb` columns.
    pub const POSTGRES: Self = Self {
        tokens: "tokengate_tokens",
        peppers: "tokengate_peppers",
        scopes: "tokengate_scopes",
        usage: "tokengate_usage",
        usage_clients: "tokengate_usage_clients",
        webhooks: "tokengate_webhooks",
        deliveries: "tokengate_webhook_deliveries",
        skip_locked: " FOR UPDATE SKIP LOCKED",
        lock: " FOR UPDATE",
        mark: '$',
        least: "LEAST",
        greatest: "GREATEST",
        json_read: "metadata::text",
        json_write: "::text::jsonb",
        int: "::bigint",
        resolution: Duration::from_micros(1),
        plain: false,
    };

    /// The `n`th placeholder (from 1).
    pub fn placeholder(&self, n: usize) -> String {
        format!("{}{n}", self.mark)
    }

    /// `time` rounded up to a time the backend stores exactly: for
    /// expiries, so that a stored token never expires earlier than asked.
    pub fn round_up(&self, time: SystemTime) -> SystemTime {
        let exact = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let step = self.resolution.as_nanos();
        let rest = exact.as_nanos() % step;
        if rest == 0 {
            time
        } else {
            let up = u64::try_from(step - rest).unwrap_or(0);
            time.checked_add(Duration::from_nanos(up)).unwrap_or(time)
        }
    }

    /// How this backend stores a value of `kind`: SQLite keeps times as
    /// integers and lists as text; JSON is read and bound as text.
    pub fn stored(&self, kind: Kind) -> Kind {
        match kind {
            Kind::Time if self.plain => Kind::Int,
            Kind::List if self.plain => Kind::Text,
            Kind::Json => Kind::Text,
            other => other,
        }
    }

    /// A value of `kind` from what the backend stored ([`Dialect::stored`]).
    pub fn decode(&self, kind: Kind, stored: Value) -> Value {
        match (kind, stored) {
            (Kind::Time, Value::Int(ms)) => Value::Time(ms.map(from_millis)),
            (Kind::List, Value::Text(words)) => Value::List(
                words
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect(),
            ),
            (Kind::Json, Value::Text(text)) => Value::Json(text),
            (_, value) => value,
        }
    }

    /// `value` as the backend binds it: of a [`Dialect::stored`] kind.
    pub fn encode(&self, value: Value) -> Value {
        match value {
            Value::Time(at) if self.plain => Value::Int(at.map(millis)),
            Value::List(words) if self.plain => Value::Text(Some(words.join(" "))),
            Value::Json(text) => Value::Text(text),
            other => other,
        }
    }

    /// `sql`, written with `$n` placeholders, in this dialect.
    pub(crate) fn text(&self, sql: &str) -> String {
        sql.replace('$', &self.mark.to_string())
            .replace("{tokens}", self.tokens)
            .replace("{peppers}", self.peppers)
            .replace("{scopes}", self.scopes)
            .replace("{usage_clients}", self.usage_clients)
            .replace("{usage}", self.usage)
            .replace("{webhooks}", self.webhooks)
            .replace("{deliveries}", self.deliveries)
            .replace("{skip_locked}", self.skip_locked)
            .replace("{least}", self.least)
            .replace("{greatest}", self.greatest)
            .replace("{int}", self.int)
            .replace("{json}", self.json_write)
    }
}

/// Every statement of the token table, in one [`Dialect`]; made once per
/// backend. Placeholders are numbered as each statement's docs say.
#[derive(Debug, Clone)]
pub struct Sql {
    /// The dialect the statements are written in.
    pub dialect: Dialect,
    /// The select list of a record ([`COLUMNS`](crate::COLUMNS) in order).
    pub columns: String,
    /// The record of id `$1`.
    pub select_by_id: String,
    /// The record of id `$1`, its row locked until the transaction ends.
    pub lock_by_id: String,
    /// The record whose hash is `$1` under pepper key `$2`, unless that
    /// pepper is retired.
    pub select_by_hash: String,
    /// A new record: [`record_values`](crate::record_values).
    pub insert: String,
    /// What an update may change of a record, at the version it was read
    /// at; returns the stored record ([`Sql::update_values`]). The count
    /// left stays, capped by a lowered limit (a limit new to the token
    /// starts from the record's); a cap starts a new generation, so uses
    /// leased out above it no longer count; the later window wins.
    pub update: String,
    /// Revokes id `$1` at `$2` (an earlier revocation stays); returns the record.
    pub revoke: String,
    /// Moves id `$1` from hash `$2` under key `$5` to hash `$3` under key
    /// `$4`, unless the old key is retired; returns the record.
    pub rehash: String,
    /// Sets the expiry of id `$1` to `$2`; returns the record.
    pub set_expiry: String,
    /// Spends `$4` uses of id `$1` in window `$2` (a later window starts
    /// from the refill count `$3`); returns the count left, or no row
    /// when fewer than `$4` were left (nothing spent).
    pub spend_use: String,
    /// The uses available to id `$1` in window `$2` (refill count `$3`),
    /// its row locked where the backend locks rows.
    pub uses_available: String,
    /// Leaves `$2` uses to id `$1`, in window `$3` at the latest.
    pub take_from: String,
    /// Sets id `$1`'s count to `$2` in window `$3`, in a new generation.
    pub reset_uses: String,
    /// Sets id `$1`'s count, window and generation to `$2`, `$3`, `$4`:
    /// what a rotated token keeps after handing its count over.
    pub keep_uses: String,
    /// Records a use of id `$1` at `$2` (a later one already recorded stays).
    pub touch: String,
    /// Adds scope `$1` to the catalogue, registered at `$2`, unless it is there.
    pub register_scope: String,
    /// Every scope of the catalogue, in order.
    pub scope_catalogue: String,
    /// Adds `$4` requests of token `$1` in hour `$2` with outcome `$3`.
    pub usage_add: String,
    /// Notes client `$3` of token `$1` in hour `$2`, seen at `$4` ms,
    /// unless a later one is noted.
    pub usage_client: String,
    /// Hour, outcome and requests of token `$1` from hour `$2` on, in order.
    pub usage_of: String,
    /// Hour and last client of token `$1` from hour `$2` on.
    pub usage_clients_of: String,
    /// The `$2` tokens with the most requests from hour `$1` on: id,
    /// admitted, refused.
    pub usage_top: String,
    /// Forgets requests of hours before `$1`; returns a row per row gone.
    pub usage_prune: String,
    /// Forgets clients of hours before `$1`.
    pub usage_prune_clients: String,
}

impl Sql {
    /// The statements in `dialect`, made on first use and kept.
    pub fn of(dialect: Dialect) -> &'static Self {
        static SQLITE: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::SQLITE));
        static POSTGRES: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::POSTGRES));
        // These two are the only dialects: the fields are private.
        if dialect == Dialect::POSTGRES {
            &POSTGRES
        } else {
            &SQLITE
        }
    }

    /// The statements in `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        let columns = COLUMNS
            .iter()
            .map(|(c, kind)| {
                if *kind == Kind::Json {
                    dialect.json_read
                } else {
                    c
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let d = |sql: &str| dialect.text(sql);
        let placeholders = (1..=COLUMNS.len())
            .map(|n| {
                let p = format!("${n}");
                if COLUMNS[n - 1].1 == Kind::Json {
                    format!("{p}{{json}}")
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let not_retired =
            "AND key_id NOT IN (SELECT key_id FROM {peppers} WHERE retired_at IS NOT NULL)";
        let available = "CASE WHEN uses_window < $2 THEN $3 ELSE uses_remaining END";
        Self {
            select_by_id: d(&format!("SELECT {columns} FROM {{tokens}} WHERE id = $1")),
            lock_by_id: d(&format!(
                "SELECT {columns} FROM {{tokens}} WHERE id = $1{}",
                dialect.lock
            )),
            select_by_hash: d(&format!(
                "SELECT {columns} FROM {{tokens}} WHERE hash = $1 AND key_id = $2 {not_retired}"
            )),
            insert: d(&format!(
                "INSERT INTO {{tokens}} ({}) VALUES ({placeholders})",
                COLUMNS.map(|(c, _)| c).join(", ")
            )),
            update: d(&format!(
                "UPDATE {{tokens}} SET name = $2, scopes = $3, audiences = $4, expires_at = $5, \
                 disabled_at = $6, allowed_networks = $7, rate_count = $8, rate_period_ms = $9, \
                 rate_burst = $10, metadata = $11{{json}}, uses_limit = $12, uses_refill = $13, \
                 uses_refill_ms = $14, \
                 uses_generation = CASE WHEN $12{{int}} IS NOT NULL AND uses_remaining > \
                 {{greatest}}($12{{int}}, COALESCE($13{{int}}, 0)) \
                 THEN uses_generation + 1 ELSE uses_generation END, \
                 uses_remaining = CASE WHEN $12{{int}} IS NULL THEN NULL ELSE \
                 {{least}}(COALESCE(uses_remaining, $15), \
                 {{greatest}}($12{{int}}, COALESCE($13{{int}}, 0))) END, \
                 uses_window = CASE WHEN $12{{int}} IS NULL THEN 0 \
                 ELSE {{greatest}}(uses_window, $16) END, \
                 binding = $18, rate_more = $19, version = version + 1 \
                 WHERE id = $1 AND version = $17 RETURNING {columns}"
            )),
            revoke: d(&format!(
                "UPDATE {{tokens}} SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
                 RETURNING {columns}"
            )),
            rehash: d(&format!(
                "UPDATE {{tokens}} SET hash = $3, key_id = $4 \
                 WHERE id = $1 AND hash = $2 AND key_id = $5 {not_retired} RETURNING {columns}"
            )),
            set_expiry: d(&format!(
                "UPDATE {{tokens}} SET expires_at = $2 WHERE id = $1 RETURNING {columns}"
            )),
            spend_use: d(&format!(
                "UPDATE {{tokens}} SET uses_remaining = ({available}) - $4, \
                 uses_window = {{greatest}}(uses_window, $2) \
                 WHERE id = $1 AND uses_remaining IS NOT NULL AND ({available}) >= $4 \
                 RETURNING uses_remaining"
            )),
            uses_available: d(&format!(
                "SELECT {available} FROM {{tokens}} WHERE id = $1 AND uses_remaining IS NOT NULL{}",
                dialect.lock
            )),
            take_from: d("UPDATE {tokens} SET uses_remaining = $2, \
                 uses_window = {greatest}(uses_window, $3) WHERE id = $1"),
            reset_uses: d(
                "UPDATE {tokens} SET uses_remaining = $2, uses_window = $3, \
                 uses_generation = uses_generation + 1 \
                 WHERE id = $1 AND uses_remaining IS NOT NULL",
            ),
            keep_uses: d(
                "UPDATE {tokens} SET uses_remaining = $2, uses_window = $3, \
                 uses_generation = $4 WHERE id = $1",
            ),
            touch: d("UPDATE {tokens} SET last_used_at = \
                 {greatest}(COALESCE(last_used_at, $2), $2) WHERE id = $1"),
            register_scope: d(
                "INSERT INTO {scopes} (scope, registered_at) VALUES ($1, $2) \
                 ON CONFLICT (scope) DO NOTHING",
            ),
            scope_catalogue: d("SELECT scope FROM {scopes} ORDER BY scope"),
            usage_add: d(
                "INSERT INTO {usage} (token_id, hour, outcome, requests) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (token_id, hour, outcome) \
                 DO UPDATE SET requests = {usage}.requests + excluded.requests",
            ),
            usage_client: d(
                "INSERT INTO {usage_clients} (token_id, hour, client, seen_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (token_id, hour) \
                 DO UPDATE SET client = excluded.client, seen_ms = excluded.seen_ms \
                 WHERE excluded.seen_ms >= {usage_clients}.seen_ms",
            ),
            usage_of: d("SELECT hour, outcome, requests FROM {usage} \
                 WHERE token_id = $1 AND hour >= $2 ORDER BY hour, outcome"),
            usage_clients_of: d("SELECT hour, client FROM {usage_clients} \
                 WHERE token_id = $1 AND hour >= $2"),
            usage_top: d(&format!(
                "SELECT token_id, \
                 SUM(CASE WHEN outcome = '{admitted}' THEN requests ELSE 0 END){{int}}, \
                 SUM(CASE WHEN outcome = '{admitted}' THEN 0 ELSE requests END){{int}} \
                 FROM {{usage}} WHERE hour >= $1 GROUP BY token_id \
                 ORDER BY SUM(requests) DESC, token_id LIMIT $2",
                admitted = tokengate_store::ADMITTED
            )),
            usage_prune: d("DELETE FROM {usage} WHERE hour < $1 RETURNING hour"),
            usage_prune_clients: d("DELETE FROM {usage_clients} WHERE hour < $1"),
            columns,
            dialect,
        }
    }

    /// The values of [`Sql::insert`] for `record`.
    pub fn insert_values(&self, record: &TokenRecord) -> Vec<Value> {
        record_values(record, |at| self.dialect.round_up(at))
    }

    /// The values of [`Sql::update`] for `record`.
    pub fn update_values(&self, record: &TokenRecord) -> Vec<Value> {
        let mut all = self.insert_values(record);
        [
            "id",
            "name",
            "scopes",
            "audiences",
            "expires_at",
            "disabled_at",
            "allowed_networks",
            "rate_count",
            "rate_period_ms",
            "rate_burst",
            "metadata",
            "uses_limit",
            "uses_refill",
            "uses_refill_ms",
            "uses_remaining",
            "uses_window",
            "version",
            "binding",
            "rate_more",
        ]
        .iter()
        .map(|name| std::mem::replace(&mut all[index(name)], Value::Int(None)))
        .collect()
    }

    /// The values of [`Sql::select_by_hash`].
    pub fn hash_values(&self, hash: &TokenHash) -> Vec<Value> {
        vec![bytes(hash), key(hash)]
    }

    /// The values of [`Sql::rehash`].
    pub fn rehash_values(&self, id: &TokenId, from: &TokenHash, to: &TokenHash) -> Vec<Value> {
        vec![Self::id(id), bytes(from), bytes(to), key(to), key(from)]
    }

    /// The values of [`Sql::revoke`].
    pub fn revoke_values(&self, id: &TokenId, at: SystemTime) -> Vec<Value> {
        vec![Self::id(id), Value::Time(Some(at))]
    }

    /// The values of [`Sql::set_expiry`] (rounded up).
    pub fn expiry_values(&self, id: &TokenId, at: SystemTime) -> Vec<Value> {
        vec![Self::id(id), Value::Time(Some(self.dialect.round_up(at)))]
    }

    /// A token id as a value: [`Sql::select_by_id`]'s.
    pub fn id(id: &TokenId) -> Value {
        Value::Text(Some(id.as_str().to_owned()))
    }
}

fn bytes(hash: &TokenHash) -> Value {
    Value::Bytes(Some(hash.digest().to_vec()))
}

fn key(hash: &TokenHash) -> Value {
    Value::Int(Some(i64::from(hash.key_id().get())))
}
