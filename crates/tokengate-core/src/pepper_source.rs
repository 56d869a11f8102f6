//! Where a store's pepper comes from, shared by the stores: the
//! `TOKENGATE_PEPPER` variable or a pepper file (created whole, mode 0600),
//! and the errors that name the source when it is missing or wrong.
//!
//! A store records a check value of its pepper
//! ([`TokenHasher::pepper_check`]) and compares it with [`PepperSource::found`]'s
//! pepper, so a missing or different pepper is an error naming its source,
//! never a silently empty token set.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::{KeyId, Pepper, PepperError, TokenHasher};

/// The environment variable holding the pepper as hex.
pub const PEPPER_ENV: &str = "TOKENGATE_PEPPER";

/// The key id of the pepper a database starts with.
pub const FIRST_KEY: KeyId = KeyId::new(1);

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
    /// The pepper file could not be read or created, or the database could
    /// not be asked for its check value.
    #[error("pepper file {}: {error}", path.display())]
    Io {
        /// The file (or the database).
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The database holds tokens (or has recorded its pepper), and neither
    /// the pepper file nor `TOKENGATE_PEPPER` is there.
    #[error(
        "the pepper of token database {database} is missing: {} does not exist and {PEPPER_ENV} \
         is not set. Every stored token is hashed under it, so none can be verified without it: \
         restore the pepper file from a backup (or set {PEPPER_ENV}). To start over instead, \
         move the database aside too and issue new tokens",
        path.display()
    )]
    Missing {
        /// The database (a path, or a URL without its password).
        database: String,
        /// Where the pepper file was looked for.
        path: PathBuf,
    },
    /// No source was given at all: a database server keeps no pepper file
    /// of its own.
    #[error(
        "token database {database} needs a pepper: set {PEPPER_ENV} (hex) or pass a pepper file \
         (--pepper-file); it is never stored in the database"
    )]
    NotGiven {
        /// The database.
        database: String,
    },
    /// A pepper was found, but not the one the database recorded.
    #[error(
        "the pepper from {source_name} is not the one token database {database} was created with \
         (key {key_id}): no stored token would verify under it. Use the database's own pepper \
         file or {PEPPER_ENV} value"
    )]
    Mismatch {
        /// The database.
        database: String,
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

/// A pepper and the name of where it came from (for errors).
#[derive(Debug)]
pub struct PepperSource {
    /// The pepper.
    pub pepper: Pepper,
    /// `TOKENGATE_PEPPER` or the file's path.
    pub source_name: String,
}

impl PepperSource {
    /// The pepper from `TOKENGATE_PEPPER` if it is set, else from `file` if
    /// it exists; `None` when neither is there.
    pub fn found(file: Option<&Path>) -> Result<Option<Self>, PepperSourceError> {
        if let Ok(hex) = std::env::var(PEPPER_ENV) {
            return from_hex(&hex, PEPPER_ENV).map(|pepper| {
                Some(Self {
                    pepper,
                    source_name: PEPPER_ENV.to_owned(),
                })
            });
        }
        let Some(file) = file else {
            return Ok(None);
        };
        Ok(read_file(file)?.map(|pepper| Self {
            pepper,
            source_name: file.display().to_string(),
        }))
    }

    /// Creates `file` with a fresh pepper, whole or not at all: the pepper
    /// is written to a private temporary file that is then linked into
    /// place, so a process racing to read it never sees a half-written
    /// file, and of two racing creators the second reads the first one's
    /// pepper.
    pub fn create(file: &Path) -> Result<Self, PepperSourceError> {
        create_file(file).map(|pepper| Self {
            pepper,
            source_name: file.display().to_string(),
        })
    }

    /// This pepper's check value: what a database records, never the pepper.
    pub fn check_value(&self) -> String {
        TokenHasher::new(self.pepper.clone()).pepper_check()
    }

    /// The pepper, if `recorded` (the database's check value) is its own;
    /// else [`PepperSourceError::Mismatch`] naming this source.
    pub fn verified(
        self,
        recorded: Option<&str>,
        database: &str,
    ) -> Result<Pepper, PepperSourceError> {
        if recorded == Some(self.check_value().as_str()) {
            Ok(self.pepper)
        } else {
            Err(PepperSourceError::Mismatch {
                database: database.to_owned(),
                source_name: self.source_name,
                key_id: FIRST_KEY,
            })
        }
    }
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
