use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokengate_core::{KeyId, Pepper, PepperError};

/// The environment variable holding the pepper as hex.
pub const PEPPER_ENV: &str = "TOKENGATE_PEPPER";

/// Why no pepper could be had.
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
    #[error("pepper file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
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

/// The pepper for the database at `db`: from `TOKENGATE_PEPPER` (hex) when
/// set; otherwise from the pepper file beside the database, created with a
/// fresh random pepper and mode 0600 on first use. Two processes racing to
/// create it end up with the same one.
pub fn load_pepper(db: &Path) -> Result<Pepper, PepperSourceError> {
    if let Ok(hex) = std::env::var(PEPPER_ENV) {
        return Pepper::from_hex(KeyId::new(1), &hex).map_err(|error| PepperSourceError::Invalid {
            source_name: PEPPER_ENV.to_owned(),
            error,
        });
    }
    let path = pepper_path(db);
    let io_error = |error| PepperSourceError::Io {
        path: path.clone(),
        error,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let pepper = Pepper::generate(KeyId::new(1));
            file.write_all(pepper.expose_hex().as_bytes())
                .map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            Ok(pepper)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let mut hex = String::new();
            OpenOptions::new()
                .read(true)
                .open(&path)
                .and_then(|mut f| f.read_to_string(&mut hex))
                .map_err(io_error)?;
            Pepper::from_hex(KeyId::new(1), &hex).map_err(|error| PepperSourceError::Invalid {
                source_name: path.display().to_string(),
                error,
            })
        }
        Err(error) => Err(io_error(error)),
    }
}
