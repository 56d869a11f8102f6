//! The pepper of a database: where it comes from, and the check that it is
//! the one the database's tokens were hashed under.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use tokengate_core::{KeyId, Pepper, PepperError, TokenHasher};

use crate::time::millis;

/// The environment variable holding the pepper as hex.
pub const PEPPER_ENV: &str = "TOKENGATE_PEPPER";

/// The key id of the pepper a database starts with.
const FIRST_KEY: KeyId = KeyId::new(1);

/// Why no pepper could be had, or why the one found is not the database's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PepperSourceError {
    /// `TOKENGATE_PEPPER` or the pepper file holds no valid pepper.
    #[error("{source_name}: {error}")]
    Invalid {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        error: PepperError,
    },
    /// The pepper file could not be read or created.
    #[error("pepper file {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The database holds tokens (or has recorded its pepper), and neither
    /// the pepper file nor `TOKENGATE_PEPPER` is there.
    #[error(
        "the pepper of token database {} is missing: {} does not exist and {PEPPER_ENV} is not set. \
         Every stored token is hashed under it, so none can be verified without it: restore the \
         pepper file from a backup (or set {PEPPER_ENV}). To start over instead, move the database \
         aside too and issue new tokens",
        db.display(),
        path.display()
    )]
    Missing {
        /// The database.
        db: PathBuf,
        /// Where the pepper file was looked for.
        path: PathBuf,
    },
    /// A pepper was found, but not the one the database recorded.
    #[error(
        "the pepper from {source_name} is not the one token database {} was created with \
         (key {key_id}): no stored token would verify under it. Use the database's own pepper \
         file or {PEPPER_ENV} value",
        db.display()
    )]
    Mismatch {
        /// The database.
        db: PathBuf,
        /// Where the wrong pepper came from.
        source_name: String,
        /// The key id whose check value differs.
        key_id: KeyId,
    },
}

impl From<PepperSourceError> for io::Error {
    fn from(error: PepperSourceError) -> Self {
        io::Error::other(error)
    }
}

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
    let recorded = recorded_check(conn).map_err(sql)?;
    let (pepper, source_name) = match std::env::var(PEPPER_ENV) {
        Ok(hex) => (from_hex(&hex, PEPPER_ENV)?, PEPPER_ENV.to_owned()),
        Err(_) => {
            let path = pepper_path(db);
            let pepper = match read_file(&path)? {
                Some(pepper) => pepper,
                None if recorded.is_some() || holds_tokens(conn).map_err(sql)? => {
                    return Err(PepperSourceError::Missing {
                        db: db.to_owned(),
                        path,
                    });
                }
                None => create_file(&path)?,
            };
            (pepper, path.display().to_string())
        }
    };
    let check = TokenHasher::new(pepper.clone()).pepper_check();
    // Record it the first time; a racing process may have recorded its own
    // first, so compare with what is stored afterwards either way.
    if recorded.is_none() {
        conn.execute(
            "INSERT OR IGNORE INTO peppers (key_id, check_value, created_at) VALUES (?1, ?2, ?3)",
            params![i64::from(FIRST_KEY.get()), check, millis(SystemTime::now())],
        )
        .map_err(sql)?;
    }
    match recorded_check(conn).map_err(sql)? {
        Some(stored) if stored == check => Ok(pepper),
        _ => Err(PepperSourceError::Mismatch {
            db: db.to_owned(),
            source_name,
            key_id: FIRST_KEY,
        }),
    }
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

fn from_hex(hex: &str, source_name: &str) -> Result<Pepper, PepperSourceError> {
    Pepper::from_hex(FIRST_KEY, hex).map_err(|error| PepperSourceError::Invalid {
        source_name: source_name.to_owned(),
        error,
    })
}

/// The pepper in `path`, or `None` if there is no such file.
fn read_file(path: &Path) -> Result<Option<Pepper>, PepperSourceError> {
    let mut hex = zeroize::Zeroizing::new(String::new());
    match OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|mut f| f.read_to_string(&mut hex))
    {
        Ok(_) => from_hex(&hex, &path.display().to_string()).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(PepperSourceError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Creates `path` with a fresh pepper, whole or not at all: the pepper is
/// written to a private temporary file that is then linked into place, so
/// a process racing to read it never sees a half-written file, and of two
/// racing creators the second reads the first one's pepper.
fn create_file(path: &Path) -> Result<Pepper, PepperSourceError> {
    let io_error = |error| PepperSourceError::Io {
        path: path.to_owned(),
        error,
    };
    let pepper = Pepper::generate(FIRST_KEY);
    let mut temp = path.as_os_str().to_owned();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    temp.push(format!(".{}-{n}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(pepper.expose_hex().as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => Ok(pepper),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            read_file(path)?.ok_or_else(|| io_error(error))
        }
        Err(error) => Err(io_error(error)),
    }
}
