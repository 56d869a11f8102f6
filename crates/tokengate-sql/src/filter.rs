//! A token query's filters and page as SQL.

use std::time::{Duration, SystemTime};

use tokengate_core::TokenStatus;
use tokengate_store::TokenQuery;

use crate::{Sql, Value};

/// The latest time the SQL stores are given: the end of the year 9999.
pub const LATEST: Duration = Duration::from_secs(253_402_300_799);

impl Sql {
    /// The `SELECT` of the records `query` selects at `now`, oldest first,
    /// and the values of its placeholders: exactly what
    /// [`TokenQuery::apply`] selects, so a page reads only its rows.
    pub fn select_matching(&self, query: &TokenQuery, now: SystemTime) -> (String, Vec<Value>) {
        let mut values: Vec<Value> = Vec::new();
        let mut bind = |value: Value| {
            values.push(value);
            self.dialect.placeholder(values.len())
        };
        let parts = query.parts();
        let active = |now: String| {
            format!(
                "revoked_at IS NULL AND disabled_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > {now})"
            )
        };
        let mut clauses: Vec<String> = Vec::new();
        if let Some(subject) = parts.subject {
            clauses.push(format!(
                "subject = {}",
                bind(Value::Text(Some(subject.to_owned())))
            ));
        }
        if let Some(status) = parts.status {
            clauses.push(match status {
                TokenStatus::Revoked => "revoked_at IS NOT NULL".to_owned(),
                TokenStatus::Disabled => {
                    "revoked_at IS NULL AND disabled_at IS NOT NULL".to_owned()
                }
                TokenStatus::Expired => format!(
                    "revoked_at IS NULL AND disabled_at IS NULL AND expires_at IS NOT NULL \
                     AND expires_at <= {}",
                    bind(Value::Time(Some(now)))
                ),
                _ => active(bind(Value::Time(Some(now)))),
            });
        }
        if let Some(window) = parts.expiring_within {
            let latest = SystemTime::UNIX_EPOCH + LATEST;
            let until = now.checked_add(window).map_or(latest, |at| at.min(latest));
            let start = active(bind(Value::Time(Some(now))));
            clauses.push(format!(
                "{start} AND expires_at IS NOT NULL AND expires_at <= {}",
                bind(Value::Time(Some(until)))
            ));
        }
        if parts.usage_limited {
            clauses.push("uses_remaining IS NOT NULL".to_owned());
        }
        if let Some(after) = parts.after {
            clauses.push(format!(
                "(created_at, id) > (SELECT created_at, id FROM {} WHERE id = {})",
                self.dialect.tokens,
                bind(Value::Text(Some(after.as_str().to_owned())))
            ));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let limit = parts.limit.map_or_else(String::new, |limit| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            format!(" LIMIT {}", bind(Value::Int(Some(limit))))
        });
        let sql = format!(
            "SELECT {} FROM {}{where_clause} ORDER BY created_at, id{limit}",
            self.columns, self.dialect.tokens
        );
        (sql, values)
    }
}
