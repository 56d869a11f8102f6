//! A token record as its columns, and back.

use std::error::Error as StdError;
use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokengate_core::{KeyId, RateQuota, TokenHash, TokenRecord};

use crate::{Dialect, UseColumns};

/// The token table's columns, in the order [`record_values`] binds them
/// and [`read_record`] reads them, each with the kind of its values.
pub const COLUMNS: [(&str, Kind); 27] = [
    ("id", Kind::Text),
    ("key_id", Kind::Int),
    ("hash", Kind::Bytes),
    ("name", Kind::Text),
    ("subject", Kind::Text),
    ("scopes", Kind::List),
    ("audiences", Kind::List),
    ("created_at", Kind::Time),
    ("expires_at", Kind::Time),
    ("revoked_at", Kind::Time),
    ("last_used_at", Kind::Time),
    ("allowed_networks", Kind::List),
    ("rate_count", Kind::Int),
    ("rate_period_ms", Kind::Int),
    ("rate_burst", Kind::Int),
    ("rotated_from", Kind::Text),
    ("metadata", Kind::Json),
    ("disabled_at", Kind::Time),
    ("uses_limit", Kind::Int),
    ("uses_refill", Kind::Int),
    ("uses_refill_ms", Kind::Int),
    ("uses_remaining", Kind::Int),
    ("uses_window", Kind::Int),
    ("uses_generation", Kind::Int),
    ("version", Kind::Int),
    ("binding", Kind::Text),
    ("rate_more", Kind::List),
];

/// The index of `column` in [`COLUMNS`].
pub(crate) fn index(column: &str) -> usize {
    COLUMNS.iter().position(|(c, _)| *c == column).unwrap_or(0)
}

/// What a column holds; a backend reads and binds each kind its own way
/// (SQLite keeps times as milliseconds and lists as space-separated text,
/// PostgreSQL as `timestamptz` and `text[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer.
    Int,
    /// Text.
    Text,
    /// Bytes: a hash.
    Bytes,
    /// A time.
    Time,
    /// A list of words: scopes, audiences, networks.
    List,
    /// A JSON object, as text.
    Json,
}

/// A value bound to a statement or read from a row, one variant per
/// [`Kind`]. Each is typed, `NULL` included, as PostgreSQL wants its
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A 64-bit integer.
    Int(Option<i64>),
    /// Text.
    Text(Option<String>),
    /// Bytes.
    Bytes(Option<Vec<u8>>),
    /// A time (expiries already rounded up to the backend's resolution).
    Time(Option<SystemTime>),
    /// A list of words.
    List(Vec<String>),
    /// A JSON object, as text.
    Json(Option<String>),
}

/// A failure a driver reports while reading a column.
pub type RowError = Box<dyn StdError + Send + Sync>;

/// One row of a driver's answer.
pub trait Row {
    /// The value at `index`, read as `kind` (a kind its dialect stores:
    /// see [`Dialect::stored`]).
    fn value(&self, index: usize, kind: Kind) -> Result<Value, RowError>;
}

/// The value of `kind` at `index` of `row`, read as `dialect` stores it.
pub fn read_value(
    dialect: Dialect,
    row: &(impl Row + ?Sized),
    index: usize,
    kind: Kind,
) -> Result<Value, RowError> {
    Ok(dialect.decode(kind, row.value(index, dialect.stored(kind))?))
}

/// A stored value this build cannot read: the database was edited by
/// hand, or by a newer build. It names the column.
#[derive(Debug, thiserror::Error)]
#[error("token database holds a value this build cannot read in column {column}: {reason}")]
pub struct Unreadable {
    column: &'static str,
    reason: String,
}

impl Unreadable {
    /// The column that holds the value.
    pub fn column(&self) -> &'static str {
        self.column
    }

    /// `value`, found in `column`, does not parse.
    pub fn value(column: &'static str, value: impl fmt::Debug) -> Self {
        Self {
            column,
            reason: format!("{value:?}"),
        }
    }
}

/// Reads columns by name, naming the column in every failure.
struct Reader<'a, R: ?Sized>(&'a R, Dialect);

impl<R: Row + ?Sized> Reader<'_, R> {
    fn get(&self, column: &'static str) -> Result<Value, Unreadable> {
        let i = index(column);
        read_value(self.1, self.0, i, COLUMNS[i].1).map_err(|e| Unreadable {
            column,
            reason: e.to_string(),
        })
    }

    fn wrong(column: &'static str, value: Value) -> Unreadable {
        Unreadable::value(column, value)
    }

    fn null(column: &'static str) -> Unreadable {
        Unreadable {
            column,
            reason: "NULL".to_owned(),
        }
    }

    fn int(&self, column: &'static str) -> Result<Option<i64>, Unreadable> {
        match self.get(column)? {
            Value::Int(v) => Ok(v),
            other => Err(Self::wrong(column, other)),
        }
    }

    fn text(&self, column: &'static str) -> Result<Option<String>, Unreadable> {
        match self.get(column)? {
            Value::Text(v) | Value::Json(v) => Ok(v),
            other => Err(Self::wrong(column, other)),
        }
    }

    fn time(&self, column: &'static str) -> Result<Option<SystemTime>, Unreadable> {
        match self.get(column)? {
            Value::Time(v) => Ok(v),
            other => Err(Self::wrong(column, other)),
        }
    }

    fn required<T>(
        &self,
        column: &'static str,
        read: impl FnOnce(&Self, &'static str) -> Result<Option<T>, Unreadable>,
    ) -> Result<T, Unreadable> {
        read(self, column)?.ok_or_else(|| Self::null(column))
    }

    /// Each word of a list column, parsed.
    fn words<T, C: FromIterator<T>>(
        &self,
        column: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<C, Unreadable> {
        let Value::List(words) = self.get(column)? else {
            return Err(Self::null(column));
        };
        words
            .iter()
            .map(|word| parse(word).ok_or_else(|| Unreadable::value(column, word)))
            .collect()
    }
}

/// The record in `row`, whose columns are [`COLUMNS`] in order. Any value
/// that does not read or parse is an [`Unreadable`] error naming its
/// column: a store never drops part of a record silently.
pub fn read_record(dialect: Dialect, row: &(impl Row + ?Sized)) -> Result<TokenRecord, Unreadable> {
    let r = Reader(row, dialect);
    let id = r.required("id", Reader::text)?;
    let key_id = r.required("key_id", Reader::int)?;
    let digest: [u8; 32] = match r.get("hash")? {
        Value::Bytes(Some(bytes)) => bytes.try_into().map_err(|bytes: Vec<u8>| {
            Unreadable::value("hash", format!("{} bytes", bytes.len()))
        })?,
        other => return Err(Unreadable::value("hash", other)),
    };
    let key_id = u32::try_from(key_id).map_err(|_| Unreadable::value("key_id", key_id))?;
    let metadata = r.required("metadata", Reader::text)?;
    let version = r.required("version", Reader::int)?;
    Ok(TokenRecord {
        id: id.parse().map_err(|_| Unreadable::value("id", &id))?,
        hash: TokenHash::from_parts(KeyId::new(key_id), digest),
        name: r.required("name", Reader::text)?,
        subject: r.required("subject", Reader::text)?,
        scopes: r.words("scopes", |s| s.parse().ok())?,
        audiences: r.words("audiences", |a| a.parse().ok())?,
        created_at: r.required("created_at", Reader::time)?,
        expires_at: r.time("expires_at")?,
        revoked_at: r.time("revoked_at")?,
        disabled_at: r.time("disabled_at")?,
        last_used_at: r.time("last_used_at")?,
        allowed_networks: r.words("allowed_networks", |n| n.parse::<IpNet>().ok())?,
        rate_quotas: read_quota(&r)?
            .into_iter()
            .chain(r.words::<_, Vec<_>>("rate_more", parse_quota)?)
            .collect(),
        rotated_from: r
            .text("rotated_from")?
            .map(|id| {
                id.parse()
                    .map_err(|_| Unreadable::value("rotated_from", &id))
            })
            .transpose()?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|_| Unreadable::value("metadata", &metadata))?,
        uses: read_uses(&r)?,
        binding: r
            .text("binding")?
            .map(|text| {
                tokengate_core::Binding::from_stored(&text)
                    .ok_or_else(|| Unreadable::value("binding", &text))
            })
            .transpose()?,
        version: u64::try_from(version).map_err(|_| Unreadable::value("version", version))?,
    })
}

fn read_quota<R: Row + ?Sized>(r: &Reader<'_, R>) -> Result<Option<RateQuota>, Unreadable> {
    let (count, period, burst) = (
        r.int("rate_count")?,
        r.int("rate_period_ms")?,
        r.int("rate_burst")?,
    );
    let (count, period, burst) = match (count, period, burst) {
        (None, None, None) => return Ok(None),
        (Some(count), Some(period), Some(burst)) => (count, period, burst),
        _ => {
            return Err(Unreadable::value(
                "rate_count",
                format!("a quota with some columns NULL: {count:?}, {period:?}, {burst:?}"),
            ));
        }
    };
    let positive = |column, v: i64| {
        u32::try_from(v)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| Unreadable::value(column, v))
    };
    let count = positive("rate_count", count)?;
    let burst = positive("rate_burst", burst)?;
    let period = u64::try_from(period).map_err(|_| Unreadable::value("rate_period_ms", period))?;
    RateQuota::new(count, Duration::from_millis(period), burst)
        .map(Some)
        .map_err(|e| Unreadable {
            column: "rate_period_ms",
            reason: e.to_string(),
        })
}

fn read_uses<R: Row + ?Sized>(
    r: &Reader<'_, R>,
) -> Result<Option<tokengate_core::Uses>, Unreadable> {
    let columns = UseColumns {
        limit: r.int("uses_limit")?,
        refill: r.int("uses_refill")?,
        refill_ms: r.int("uses_refill_ms")?,
        remaining: r.int("uses_remaining")?,
        window: r.int("uses_window")?.unwrap_or(0),
        generation: r.int("uses_generation")?.unwrap_or(0),
    };
    match columns.into_uses() {
        None if columns.limit.is_some() => Err(Unreadable::value("uses_limit", columns)),
        uses => Ok(uses),
    }
}

/// A token's second and later quotas as `rate_more` keeps them:
/// `count/period_ms/burst`.
fn stored_quota(quota: RateQuota) -> String {
    let [count, period, burst] = quota_columns(Some(quota)).map(Option::unwrap_or_default);
    format!("{count}/{period}/{burst}")
}

/// A quota as [`stored_quota`] wrote it.
fn parse_quota(text: &str) -> Option<RateQuota> {
    let mut parts = text.splitn(3, '/');
    let mut next = || parts.next()?.parse::<u64>().ok();
    let (count, period, burst) = (next()?, next()?, next()?);
    let positive = |v: u64| NonZeroU32::new(u32::try_from(v).ok()?);
    RateQuota::new(
        positive(count)?,
        Duration::from_millis(period),
        positive(burst)?,
    )
    .ok()
}

/// A quota as its three columns: count, period in milliseconds, burst.
fn quota_columns(quota: Option<RateQuota>) -> [Option<i64>; 3] {
    [
        quota.map(|q| i64::from(q.count().get())),
        quota.map(|q| i64::try_from(q.period().as_millis()).unwrap_or(i64::MAX)),
        quota.map(|q| i64::from(q.burst().get())),
    ]
}

/// The values of `record`'s [`COLUMNS`], in order; the expiry rounded up
/// with `round_up` (a stored token never expires earlier than asked).
pub fn record_values(
    record: &TokenRecord,
    round_up: impl Fn(SystemTime) -> SystemTime,
) -> Vec<Value> {
    let r = record;
    let words = |items: Vec<String>| Value::List(items);
    let [count, period, burst] = quota_columns(r.rate_quotas.first().copied());
    let uses = UseColumns::of(r.uses.as_ref());
    vec![
        Value::Text(Some(r.id.as_str().to_owned())),
        Value::Int(Some(i64::from(r.hash.key_id().get()))),
        Value::Bytes(Some(r.hash.digest().to_vec())),
        Value::Text(Some(r.name.clone())),
        Value::Text(Some(r.subject.clone())),
        words(r.scopes.iter().map(|s| s.as_str().to_owned()).collect()),
        words(r.audiences.iter().map(|a| a.as_str().to_owned()).collect()),
        Value::Time(Some(r.created_at)),
        Value::Time(r.expires_at.map(round_up)),
        Value::Time(r.revoked_at),
        Value::Time(r.last_used_at),
        words(r.allowed_networks.iter().map(ToString::to_string).collect()),
        Value::Int(count),
        Value::Int(period),
        Value::Int(burst),
        Value::Text(r.rotated_from.as_ref().map(|id| id.as_str().to_owned())),
        Value::Json(Some(
            serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".to_owned()),
        )),
        Value::Time(r.disabled_at),
        Value::Int(uses.limit),
        Value::Int(uses.refill),
        Value::Int(uses.refill_ms),
        Value::Int(uses.remaining),
        Value::Int(Some(uses.window)),
        Value::Int(Some(uses.generation)),
        Value::Int(Some(i64::try_from(r.version).unwrap_or(i64::MAX))),
        Value::Text(r.binding.as_ref().map(tokengate_core::Binding::to_stored)),
        words(
            r.rate_quotas
                .iter()
                .skip(1)
                .map(|&q| stored_quota(q))
                .collect(),
        ),
    ]
}
