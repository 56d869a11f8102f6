//! The SQL of tokengate's SQL stores, written once.
//!
//! The SQLite and PostgreSQL stores keep the same token table and ask it
//! the same questions. What they share is here, so that a column added to
//! the record is one edit (plus a migration per backend) and both stores
//! answer alike, down to the error an unreadable row gives:
//!
//! - [`Sql`]: every statement, in a backend's [`Dialect`] (placeholders,
//!   table names, `MIN`/`LEAST`, JSON casts);
//! - [`Value`] and [`record_values`]: a record as the values its columns
//!   are bound to, and [`read_record`]: a record back from any driver's
//!   [`Row`], with an [`Unreadable`] error that names the column;
//! - [`Sql::select_matching`]: a [`TokenQuery`](tokengate_store::TokenQuery)'s
//!   filters and page as a `WHERE` and `LIMIT`;
//! - [`UseColumns`]: a usage limit and count as six integer columns.
//!
//! A backend keeps only what is its own: its driver, connections,
//! transactions, migrations and change feed.

mod filter;
mod row;
mod statements;
#[doc(hidden)]
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod uses;
#[doc(hidden)]
pub mod webhooks;

pub use filter::LATEST;
pub use row::{
    COLUMNS, Kind, Row, RowError, Unreadable, Value, read_record, read_value, record_values,
};
pub use statements::{Dialect, Sql, from_millis, millis};
pub use store::{Backend, ChangeKind, Conn, Step, Work};
pub use uses::UseColumns;

#[cfg(test)]
mod tests;

/// Why a backend's schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError<E: std::error::Error + 'static> {
    /// The database was migrated by a newer build.
    #[error("database schema version {found} is newer than this build's {supported}")]
    Newer {
        /// The database's schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] E),
}
