//! Which tokens to list: filters and paging.

use std::time::{Duration, SystemTime};

use super::{Lifecycle, LifecycleError};
use crate::id::TokenId;
use crate::record::{TokenRecord, TokenStatus};
use crate::store::TokenAdmin;

/// Filters and a page for [`Lifecycle::list_matching`]; empty, it lists
/// every token, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenQuery {
    subject: Option<String>,
    status: Option<TokenStatus>,
    expiring_within: Option<Duration>,
    after: Option<TokenId>,
    limit: Option<usize>,
}

impl TokenQuery {
    /// Every token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only tokens of `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Only tokens in `status` now.
    pub fn status(mut self, status: TokenStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only active tokens that expire within `window` from now.
    pub fn expiring_within(mut self, window: Duration) -> Self {
        self.expiring_within = Some(window);
        self
    }

    /// The page after the token `id` (the last of the previous page).
    pub fn after(mut self, id: TokenId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit` tokens.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `record` passes the filters at `now`.
    pub fn matches(&self, record: &TokenRecord, now: SystemTime) -> bool {
        let status = record.status(now);
        self.subject.as_ref().is_none_or(|s| *s == record.subject)
            && self.status.is_none_or(|wanted| wanted == status)
            && self.expiring_within.is_none_or(|window| {
                status == TokenStatus::Active
                    && record
                        .expires_at
                        .is_some_and(|at| at <= now.checked_add(window).unwrap_or(at))
            })
    }

    /// The page of `records` (oldest first) that passes at `now`.
    pub fn apply(&self, records: Vec<TokenRecord>, now: SystemTime) -> Vec<TokenRecord> {
        let start = self.after.as_ref().map_or(0, |after| {
            records
                .iter()
                .position(|r| r.id == *after)
                .map_or(records.len(), |i| i + 1)
        });
        records
            .into_iter()
            .skip(start)
            .filter(|r| self.matches(r, now))
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// A value a SQL store binds for [`TokenQuery::sql_filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqlValue {
    /// Text: a subject, a token id.
    Text(String),
    /// A time (at most the end of the year 9999).
    Time(SystemTime),
    /// An integer: a row limit.
    Int(i64),
}

/// The `WHERE` and `LIMIT` of a [`TokenQuery`] for a SQL store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlFilter {
    /// ` WHERE …`, or empty when nothing is filtered.
    pub where_clause: String,
    /// ` LIMIT …`, or empty.
    pub limit: String,
}

/// The latest time the SQL stores are given: the end of the year 9999.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

impl TokenQuery {
    /// The query as SQL over a table with the columns `id`, `subject`,
    /// `created_at`, `expires_at`, `revoked_at` and `disabled_at`
    /// (times compared as the store keeps them), selecting at `now`
    /// exactly what [`apply`](Self::apply) selects once ordered by
    /// `created_at, id`. `bind` stores a value and answers its placeholder.
    pub fn sql_filter(
        &self,
        table: &str,
        now: SystemTime,
        bind: &mut dyn FnMut(SqlValue) -> String,
    ) -> SqlFilter {
        let active = |now: String| {
            format!(
                "revoked_at IS NULL AND disabled_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > {now})"
            )
        };
        let mut clauses: Vec<String> = Vec::new();
        if let Some(subject) = &self.subject {
            clauses.push(format!(
                "subject = {}",
                bind(SqlValue::Text(subject.clone()))
            ));
        }
        if let Some(status) = self.status {
            clauses.push(match status {
                TokenStatus::Revoked => "revoked_at IS NOT NULL".to_owned(),
                TokenStatus::Disabled => {
                    "revoked_at IS NULL AND disabled_at IS NOT NULL".to_owned()
                }
                TokenStatus::Expired => format!(
                    "revoked_at IS NULL AND disabled_at IS NULL AND expires_at IS NOT NULL \
                     AND expires_at <= {}",
                    bind(SqlValue::Time(now))
                ),
                _ => active(bind(SqlValue::Time(now))),
            });
        }
        if let Some(window) = self.expiring_within {
            let latest = SystemTime::UNIX_EPOCH + LATEST;
            let until = now.checked_add(window).map_or(latest, |at| at.min(latest));
            let start = active(bind(SqlValue::Time(now)));
            clauses.push(format!(
                "{start} AND expires_at IS NOT NULL AND expires_at <= {}",
                bind(SqlValue::Time(until))
            ));
        }
        if let Some(after) = &self.after {
            clauses.push(format!(
                "(created_at, id) > (SELECT created_at, id FROM {table} WHERE id = {})",
                bind(SqlValue::Text(after.as_str().to_owned()))
            ));
        }
        SqlFilter {
            where_clause: if clauses.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", clauses.join(" AND "))
            },
            limit: self.limit.map_or_else(String::new, |limit| {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                format!(" LIMIT {}", bind(SqlValue::Int(limit)))
            }),
        }
    }
}

impl<S: TokenAdmin> Lifecycle<S> {
    /// The tokens `query` selects, oldest first: selected by the store
    /// ([`TokenAdmin::query`]; the SQL stores filter and page in SQL).
    pub async fn list_matching(
        &self,
        query: &TokenQuery,
    ) -> Result<Vec<TokenRecord>, LifecycleError> {
        Ok(self.store.query(query, self.clock.now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;

    #[test]
    fn filters_and_pages_compose() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let day = Duration::from_secs(86_400);
        let mut records: Vec<TokenRecord> = (0..6)
            .map(|i| {
                let mut r = record();
                r.subject = if i % 2 == 0 { "a" } else { "b" }.into();
                r.expires_at = Some(now + (i + 1) * day);
                r
            })
            .collect();
        records[2].disabled_at = Some(now);
        records[4].revoked_at = Some(now);
        let ids: Vec<TokenId> = records.iter().map(|r| r.id.clone()).collect();
        let pick = |q: TokenQuery| -> Vec<usize> {
            q.apply(records.clone(), now)
                .iter()
                .map(|r| ids.iter().position(|id| *id == r.id).unwrap())
                .collect()
        };
        assert_eq!(pick(TokenQuery::new()), [0, 1, 2, 3, 4, 5]);
        assert_eq!(pick(TokenQuery::new().subject("a")), [0, 2, 4]);
        assert_eq!(pick(TokenQuery::new().status(TokenStatus::Disabled)), [2]);
        assert_eq!(pick(TokenQuery::new().status(TokenStatus::Revoked)), [4]);
        assert_eq!(
            pick(TokenQuery::new().status(TokenStatus::Active)),
            [0, 1, 3, 5]
        );
        // Within 3 days: active ones only (2 is disabled).
        assert_eq!(pick(TokenQuery::new().expiring_within(3 * day)), [0, 1]);
        assert_eq!(pick(TokenQuery::new().limit(2)), [0, 1]);
        assert_eq!(
            pick(TokenQuery::new().limit(2).after(ids[1].clone())),
            [2, 3]
        );
        assert_eq!(
            pick(TokenQuery::new().subject("b").after(ids[1].clone())),
            [3, 5]
        );
        assert_eq!(
            pick(TokenQuery::new().after(ids[5].clone())),
            Vec::<usize>::new()
        );
    }
}
