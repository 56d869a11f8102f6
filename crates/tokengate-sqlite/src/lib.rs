//! The embedded default store: tokens in a SQLite file.
//!
//! - **Only keyed hashes** are stored (with their pepper's key id), never
//!   tokens. Lookups go by a unique index on the hash; ids are the primary key.
//! - **Migrations** are numbered and recorded in `PRAGMA user_version`; a
//!   database from a newer build is refused rather than misread.
//! - **WAL mode** lets the CLI write while servers read the same file.
//! - **A change feed** (`changes` table) records revocations and rotations;
//!   [`SqliteStore::follow`] polls it and applies each change to a
//!   [`CachedStore`](tokengate_core::CachedStore), so a token revoked by
//!   another process fails within one poll interval on every server on the
//!   machine.
//! - **The pepper** comes from `TOKENGATE_PEPPER` (hex) or from a file
//!   beside the database, created on first use with mode 0600, so the CLI
//!   and servers pointed at the same database agree ([`load_pepper`]).
//!
//! Every call runs on tokio's blocking pool; the request path only reaches
//! the store on a cache miss.
//!
//! # Example
//!
//! ```
//! use tokengate_core::{Lifecycle, TokenHasher, TokenSpec, TokenStore};
//! use tokengate_sqlite::{SqliteStore, load_pepper};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = std::env::temp_dir().join(format!("tokengate-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("tokens.db");
//! let store = SqliteStore::open(&path)?;
//! let hasher = TokenHasher::new(load_pepper(&path)?);
//! let lifecycle = Lifecycle::new(store.clone(), hasher.clone());
//! let issued = lifecycle.issue(TokenSpec::new("ci", "team-a").audiences(["notes".parse()?])).await?;
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
//! (the store traits and records), `tokio` (the blocking pool and the feed
//! poller), `ipnet` and `serde_json` (network lists and metadata columns),
//! `tracing` (feed errors) and `thiserror`.

mod pepper;
mod schema;
mod store;

pub use pepper::{PEPPER_ENV, PepperSourceError, load_pepper, pepper_path};
pub use store::{OpenError, SqliteStore};

#[cfg(test)]
mod tests;
