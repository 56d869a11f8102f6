//! The pepper of a database: the file beside it, and the check that it is
//! the one the database's tokens were hashed under.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use tokengate_core::{FIRST_KEY, Pepper, PepperSource, PepperSourceError};

use crate::time::millis;

/// The pepper file of the database at `db`: `<db>.pepper`.
pub fn pepper_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".pepper");
    PathBuf::from(name)
}

/// The database's pepper, checked against (or, the first time, recorded
/// as) its check value. See [`SqliteStore::pepper`](crate::SqliteStore::pepper).
pub(crate) fn resolve(conn: &Connection, db: &Path) -> Result<Pepper, PepperSourceError> {
    let sql = |error: rusqlite::Error| PepperSourceError::Io {
        path: db.to_owned(),
        error: io::Error::other(error),
    };
    let database = db.display().to_string();
    let recorded = recorded_check(conn).map_err(sql)?;
    let path = pepper_path(db);
    let source = match PepperSource::found(Some(&path))? {
        Some(source) => source,
        None if recorded.is_some() || holds_tokens(conn).map_err(sql)? => {
            return Err(PepperSourceError::Missing { database, path });
        }
        None => PepperSource::create(&path)?,
    };
    // Record it the first time; a racing process may have recorded its own
    // first, so compare with what is stored afterwards either way.
    if recorded.is_none() {
        conn.execute(
            "INSERT OR IGNORE INTO peppers (key_id, check_value, created_at) VALUES (?1, ?2, ?3)",
            params![
                i64::from(FIRST_KEY.get()),
                source.check_value(),
                millis(SystemTime::now())
            ],
        )
        .map_err(sql)?;
    }
    source.verified(recorded_check(conn).map_err(sql)?.as_deref(), &database)
}

fn recorded_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT check_value FROM peppers WHERE key_id = ?1",
        [i64::from(FIRST_KEY.get())],
        |row| row.get(0),
    )
    .optional()
}

fn holds_tokens(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |row| row.get(0))
}
