//! The pepper of a database: the file beside it, and the check that it is
//! the one the database's tokens were hashed under.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, params};
use tokengate_core::{FIRST_KEY, KeyId, PepperSource, PepperSourceError, Peppers};

use crate::time::millis;

/// The pepper file of the database at `db`: `<db>.pepper`.
pub fn pepper_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".pepper");
    PathBuf::from(name)
}

/// The database's peppers, checked against (or, the first time, recorded
/// as) its check values. See [`SqliteStore::peppers`](crate::SqliteStore::peppers).
pub(crate) fn resolve(conn: &Connection, db: &Path) -> Result<Peppers, PepperSourceError> {
    let sql = |error: rusqlite::Error| PepperSourceError::Io {
        path: db.to_owned(),
        error: io::Error::other(error),
    };
    let database = db.display().to_string();
    let recorded = recorded_checks(conn).map_err(sql)?;
    let path = pepper_path(db);
    let source = match PepperSource::found(Some(&path))? {
        Some(source) => source,
        None if !recorded.is_empty() || holds_tokens(conn).map_err(sql)? => {
            return Err(PepperSourceError::Missing { database, path });
        }
        None => PepperSource::create(&path)?,
    };
    // Record it the first time; a racing process may have recorded its own
    // first, so compare with what is stored afterwards either way.
    if recorded.is_empty() {
        record(conn, FIRST_KEY, &source.check_value()).map_err(sql)?;
    }
    source.verified(&recorded_checks(conn).map_err(sql)?, &database)
}

/// Records the check value of the pepper `key` (kept if one is there).
pub(crate) fn record(conn: &Connection, key: KeyId, check: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO peppers (key_id, check_value, created_at) VALUES (?1, ?2, ?3)",
        params![i64::from(key.get()), check, millis(SystemTime::now())],
    )
    .map(drop)
}

/// Every recorded check value, by key id.
pub(crate) fn recorded_checks(conn: &Connection) -> rusqlite::Result<Vec<(KeyId, String)>> {
    let mut statement = conn.prepare("SELECT key_id, check_value FROM peppers ORDER BY key_id")?;
    let rows = statement.query_map([], |row| {
        let key: i64 = row.get(0)?;
        Ok((KeyId::new(u32::try_from(key).unwrap_or(0)), row.get(1)?))
    })?;
    rows.collect()
}

fn holds_tokens(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |row| row.get(0))
}
