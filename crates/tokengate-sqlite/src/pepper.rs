//! The pepper of a database: the file beside it, and the check that it is
//! the one the database's tokens were hashed under.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use tokengate_core::{KeyId, Peppers};
use tokengate_store::{FIRST_KEY, PepperSource, PepperSourceError};

use tokengate_sql::millis;

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
    // A retired pepper verifies nothing, wherever it is still listed.
    let mut source = source;
    for key in retired_keys(conn).map_err(sql)? {
        source = source.without(key);
    }
    source.verified(&recorded_checks(conn).map_err(sql)?, &database)
}

/// The kind of a change-feed row that tells every process the peppers
/// changed (its token id is empty).
pub(crate) const PEPPER_CHANGE: &str = "pepper";

/// Tells every process's feed that the peppers changed.
fn announce(conn: &Connection, key: KeyId) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO changes (token_id, key_id, hash, kind, at) \
         VALUES ('', ?1, zeroblob(32), ?2, ?3)",
        params![
            i64::from(key.get()),
            PEPPER_CHANGE,
            millis(SystemTime::now())
        ],
    )
    .map(drop)
}

/// Retires the pepper `key`: recorded as retired (its id is never used
/// again), it verifies nothing from the next lookup on, and every
/// process's feed hears of it. The newest recorded pepper cannot be
/// retired (rotate first). Retiring a retired one changes nothing.
pub(crate) fn retire(conn: &mut Connection, key: KeyId) -> Result<(), RetireError> {
    let tx = conn.transaction()?;
    let newest: Option<i64> =
        tx.query_row("SELECT MAX(key_id) FROM peppers", [], |row| row.get(0))?;
    let key_sql = i64::from(key.get());
    let state: Option<Option<i64>> = tx
        .query_row(
            "SELECT retired_at FROM peppers WHERE key_id = ?1",
            [key_sql],
            |row| row.get(0),
        )
        .optional()?;
    match state {
        None => return Err(RetireError::Unknown(key)),
        Some(Some(_)) => return Ok(()),
        Some(None) if newest == Some(key_sql) => return Err(RetireError::Newest(key)),
        Some(None) => {}
    }
    tx.execute(
        "UPDATE peppers SET retired_at = ?2 WHERE key_id = ?1",
        params![key_sql, millis(SystemTime::now())],
    )?;
    announce(&tx, key)?;
    tx.commit()?;
    Ok(())
}

/// Why a pepper could not be retired.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RetireError {
    #[error("the database has recorded no pepper with key {0}")]
    Unknown(KeyId),
    #[error("key {0} is the newest pepper; rotate first")]
    Newest(KeyId),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// The key ids of retired peppers.
pub(crate) fn retired_keys(conn: &Connection) -> rusqlite::Result<Vec<KeyId>> {
    let mut statement =
        conn.prepare("SELECT key_id FROM peppers WHERE retired_at IS NOT NULL ORDER BY key_id")?;
    let rows = statement.query_map([], |row| {
        let key: i64 = row.get(0)?;
        Ok(KeyId::new(u32::try_from(key).unwrap_or(0)))
    })?;
    rows.collect()
}

/// Records the check value of the pepper `key` (kept if one is there),
/// and tells every process's feed when it is new.
pub(crate) fn record(conn: &Connection, key: KeyId, check: &str) -> rusqlite::Result<()> {
    let added = conn.execute(
        "INSERT OR IGNORE INTO peppers (key_id, check_value, created_at) VALUES (?1, ?2, ?3)",
        params![i64::from(key.get()), check, millis(SystemTime::now())],
    )?;
    if added > 0 {
        announce(conn, key)?;
    }
    Ok(())
}

/// Every recorded check value of a pepper not retired, by key id.
pub(crate) fn recorded_checks(conn: &Connection) -> rusqlite::Result<Vec<(KeyId, String)>> {
    let mut statement = conn.prepare(
        "SELECT key_id, check_value FROM peppers WHERE retired_at IS NULL ORDER BY key_id",
    )?;
    let rows = statement.query_map([], |row| {
        let key: i64 = row.get(0)?;
        Ok((KeyId::new(u32::try_from(key).unwrap_or(0)), row.get(1)?))
    })?;
    rows.collect()
}

fn holds_tokens(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |row| row.get(0))
}
