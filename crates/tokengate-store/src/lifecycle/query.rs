//! Which tokens to list: filters and paging.

use std::time::{Duration, SystemTime};

use super::{Lifecycle, LifecycleError};
use crate::TokenAdmin;
use tokengate_core::TokenId;
use tokengate_core::{TokenRecord, TokenStatus};

/// Filters and a page for [`Lifecycle::list_matching`]; empty, it lists
/// every token, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenQuery {
    subject: Option<String>,
    status: Option<TokenStatus>,
    expiring_within: Option<Duration>,
    usage_limited: bool,
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

    /// Only usage-limited tokens.
    pub fn usage_limited(mut self) -> Self {
        self.usage_limited = true;
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
            && (!self.usage_limited || record.uses.is_some())
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

/// What a [`TokenQuery`] asks for, for a store that selects in its own
/// language (the SQL stores).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct QueryParts<'a> {
    /// Only tokens of this subject.
    pub subject: Option<&'a str>,
    /// Only tokens in this status.
    pub status: Option<TokenStatus>,
    /// Only active tokens that expire within this window.
    pub expiring_within: Option<Duration>,
    /// Only usage-limited tokens.
    pub usage_limited: bool,
    /// The page after this token.
    pub after: Option<&'a TokenId>,
    /// At most this many tokens.
    pub limit: Option<usize>,
}

impl TokenQuery {
    /// The filters and page, each as given.
    pub fn parts(&self) -> QueryParts<'_> {
        QueryParts {
            subject: self.subject.as_deref(),
            status: self.status,
            expiring_within: self.expiring_within,
            usage_limited: self.usage_limited,
            after: self.after.as_ref(),
            limit: self.limit,
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
    use crate::testing::record as test_record;

    fn record() -> TokenRecord {
        test_record("user-1", "notes:read")
    }

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
