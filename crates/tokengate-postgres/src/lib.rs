//! The token store for several instances: PostgreSQL.
//!
//! [`PostgresStore`] does everything the embedded SQLite store does (issue,
//! list, show, revoke, rotate with grace, usage written behind in batches,
//! the pepper check value and the scope catalogue) on a pool of
//! connections that every instance and the CLI share.
//!
//! - **Only keyed hashes** are stored, never tokens, and never the pepper:
//!   it comes from `TOKENGATE_PEPPER` or a pepper file
//!   ([`PostgresStore::pepper`]); the database records a check value, so a
//!   wrong pepper is an error naming its source.
//! - **Migrations** are numbered in `tokengate_migrations` and applied in
//!   one transaction under an advisory lock: instances starting together
//!   migrate once; a database from a newer build is refused. Every table is
//!   prefixed `tokengate_`, so the store can share a database.
//! - **Revocations reach every instance at once**: a revocation or rotation
//!   sends `NOTIFY tokengate_changes` in its own transaction, so it is
//!   announced exactly when it commits; each instance's [`Feed`]
//!   ([`PostgresStore::follow`]) listens on a connection of its own and
//!   applies it to its cache. Measured from the CLI's exit to the first
//!   refusal on each of three servers: p99 well under 100 ms (see the
//!   README's benchmarks).
//! - **Outages**: every call is bounded (2 s by default,
//!   [`PostgresStoreBuilder::timeout`]); a lookup that fails or times out is
//!   [`StoreError`](tokengate_store::StoreError), which the authenticate
//!   layer answers with 503 (gRPC 14). Cache hits keep working within
//!   their TTL. The feed reconnects at once, then with backoff, and empties
//!   the cache when it listens again, since changes may have been missed:
//!   a revocation made during the outage takes effect then.
//!
//! # What it costs
//!
//! A cache hit costs nothing here. A miss is one round trip on a pooled
//! connection with a prepared statement (about as long as a `SELECT 1`);
//! a revocation adds one `NOTIFY` to its transaction; every instance
//! holds one extra idle connection for the feed and sends an empty query
//! every 5 s on it.
//!
//! # Example
//!
//! ```no_run
//! use tokengate_cache::{CacheConfig, CachedStore};
//! use tokengate_core::TokenHasher;
//! use tokengate_store::{Lifecycle, TokenSpec};
//! use tokengate_postgres::PostgresStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect("postgres://app@127.0.0.1:5432/tokens").await?;
//! let hasher = TokenHasher::new(store.pepper(Some("/etc/tokengate/pepper".as_ref())).await?);
//! let cache = CachedStore::new(store.clone(), CacheConfig::default());
//! let feed = store.follow(cache.clone()); // revocations by any instance
//! let lifecycle = Lifecycle::new(cache.clone(), hasher);
//! let issued = lifecycle
//!     .issue(TokenSpec::new("ci", "team-a").scopes(["notes:read".parse()?]).audiences(["notes".parse()?]))
//!     .await?;
//! # let _ = (issued, feed);
//! # Ok(()) }
//! ```
//!
//! # Dependencies
//!
//! `tokio-postgres` (the asynchronous client: plain queries at run time,
//! no build-time database, and its connection hands over notifications
//! directly, which the feed needs) with `deadpool-postgres` (a small pool
//! with wait, connect and recycle timeouts) rather than `sqlx`, whose
//! macros, drivers and runtime layers this store would not use;
//! `futures-util` (the notification stream), `hex` (hashes in
//! notifications), `ipnet` and `serde_json` (network lists, metadata),
//! `tokio`, `tracing` (feed warnings), `thiserror`.

mod feed;
mod schema;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use feed::{FEED_APPLICATION, Feed, FeedStatus, FeedWatch};
pub use store::{ConnectError, PostgresStore, PostgresStoreBuilder};

/// `config`'s database as errors name it: `postgres://user@host:port/name`,
/// never its password.
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let name = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{host}:{port}/{name}")
}

/// A URL as an error may show it: every credential hidden.
pub(crate) fn redacted(url: &str) -> String {
    tokengate_store::redact_url(url)
}

#[cfg(test)]
mod tests;
