//! The embedded default store: tokens in a SQLite file.
//!
//! - **Only keyed hashes** are stored (with their pepper's key id), never
//!   tokens. Lookups go by a unique index on the hash; ids are the primary key.
//! - **Migrations** are numbered and recorded in `PRAGMA user_version`; a
//!   database from a newer build is refused rather than misread.
//! - **WAL mode** lets the CLI write while servers read the same file.
//! - **A change feed** (`changes` table) records revocations and rotations;
//!   [`SqliteStore::follow`] polls it and applies each change to a
//!   verifying cache (any `tokengate_store::FeedConsumer`), so a token revoked by
//!   another process fails within one poll interval on every server on the
//!   machine.
//! - **The pepper** comes from `TOKENGATE_PEPPER` (hex) or from a file
//!   beside the database, created with mode 0600 together with a new
//!   database, so the CLI and servers pointed at the same database agree
//!   ([`SqliteStore::pepper`]). The database records a check value of it
//!   (never the pepper): opening with a missing or different pepper is an
//!   error naming its source, never a silently empty token set.
//! - **Opening never creates by accident**: [`SqliteStore::open`] needs an
//!   existing file; only [`SqliteStore::create`] makes one. Concurrent
//!   first use (a server and the CLI starting together) is safe: the schema
//!   is created in one immediate transaction.
//! - **A scope catalogue**: servers register the scopes their policies use
//!   ([`TokenAdmin::register_scopes`](tokengate_store::TokenAdmin::register_scopes)),
//!   so issuance can refuse a mistyped scope.
//!
//! Every call runs on tokio's blocking pool; the request path only reaches
//! the store on a cache miss.
//!
//! # Example
//!
//! ```
//! use tokengate_core::TokenHasher;
//! use tokengate_store::{Lifecycle, TokenSpec, TokenStore};
//! use tokengate_sqlite::SqliteStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = std::env::temp_dir().join(format!("tokengate-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("tokens.db");
//! assert!(SqliteStore::open(&path).is_err()); // no database there yet
//! let store = SqliteStore::create(&path)?;
//! let hasher = TokenHasher::new(store.pepper()?);
//! let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
//! let spec = TokenSpec::new("ci", "team-a")
//!     .scopes(["notes:read".parse()?])
//!     .audiences(["notes".parse()?]);
//! let issued = lifecycle.issue(spec).await?;
//! let found = store.find_by_hash(&hasher.hash(&issued.token)).await?;
//! assert_eq!(found.map(|r| r.id), Some(issued.record.id));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `rusqlite` with SQLite bundled (nothing to install), `tokengate-core`
//! (the store traits and records, and the pepper's sources), `tokio` (the
//! blocking pool and the feed poller), `ipnet` and `serde_json` (network
//! lists and metadata columns), `tracing` (feed errors) and `thiserror`.

mod pepper;
mod schema;
mod store;

pub use pepper::pepper_path;
pub use store::{OpenError, SqliteStore};
pub use tokengate_store::{PEPPER_ENV, PepperSourceError};

#[cfg(test)]
mod tests;
