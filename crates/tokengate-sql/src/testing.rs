//! What every SQL backend's tests check the same way.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken expectation panics, naming it"
)]

use std::future::Future;

use std::num::NonZeroU32;
use std::time::Duration;

use tokengate_core::RateQuota;
use tokengate_store::{Expiry, Lifecycle, StoreError, TokenAdmin, TokenSpec};

use crate::Dialect;

/// A token that fills every column: two scopes, an audience, two
/// networks, a quota, metadata that needs quoting, an expiry in an hour.
pub fn spec() -> TokenSpec {
    let n = |v| NonZeroU32::new(v).unwrap();
    TokenSpec::new("ci", "team-a")
        .scopes([
            "notes:read".parse().unwrap(),
            "notes:write".parse().unwrap(),
        ])
        .audiences(["notes".parse().unwrap()])
        .allowed_networks(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
        .rate_quota(RateQuota::new(n(5), Duration::from_secs(60), n(2)).unwrap())
        .metadata("team", "a")
        .metadata("quote", "it's \"fine\"")
        .expiry(Expiry::After(Duration::from_secs(3600)))
}

/// Values that make a row unreadable, as `SET` clauses both backends
/// accept, each with the column its error must name.
pub const UNREADABLE_ROWS: [(&str, &str); 6] = [
    ("rate_count = 0", "rate_count"),
    ("rate_burst = NULL", "rate_count"),
    ("metadata = '[1]'", "metadata"),
    ("uses_limit = 0, uses_remaining = 1", "uses_limit"),
    ("version = -5", "version"),
    ("key_id = -1", "key_id"),
];

/// Writes each of [`UNREADABLE_ROWS`] over a token issued from `spec`
/// (`execute` runs a statement on the database beside the store), and
/// asserts that reading it, alone or in a list, is an error naming the
/// column, never a record with a part dropped.
///
/// # Panics
///
/// On the first broken expectation, naming it.
pub async fn unreadable_rows_name_their_column<S, F, Fut>(
    lifecycle: &Lifecycle<S>,
    spec: TokenSpec,
    dialect: Dialect,
    execute: F,
) where
    S: TokenAdmin,
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = lifecycle.store();
    let table = dialect.tokens;
    for (set, column) in UNREADABLE_ROWS {
        let id = lifecycle.issue(spec.clone()).await.unwrap().record.id;
        let id = id.as_str();
        execute(format!("UPDATE {table} SET {set} WHERE id = '{id}'")).await;
        let error = store.get(&id.parse().unwrap()).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Unavailable(_)),
            "{set}: {error}"
        );
        assert!(
            error.to_string().contains(&format!("column {column}")),
            "{set}: {error}"
        );
        let listed = store.list().await.unwrap_err();
        assert!(listed.to_string().contains(column), "{set}: {listed}");
        execute(format!("DELETE FROM {table} WHERE id = '{id}'")).await;
    }
}
