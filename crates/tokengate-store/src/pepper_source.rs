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

use tokengate_core::{KeyId, Pepper, PepperError, Peppers, TokenHasher};

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
        "the pepper (key {key_id}) from {source_name} is not the one token database {database} \
         recorded for that key: no stored token would verify under it. Use the database's own \
         pepper file or {PEPPER_ENV} value"
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
///
/// The source holds one pepper per line: `KEYID:HEX`, or a bare `HEX`
/// line for key 1 (a file from before pepper rotation). The highest key id
/// is current; the others are previous ones. `TOKENGATE_PEPPER` may hold
/// several, separated by commas.
#[derive(Debug)]
pub struct PepperSource {
    /// The current pepper.
    pub pepper: Pepper,
    /// Peppers rotated out, newest first.
    pub previous: Vec<Pepper>,
    /// `TOKENGATE_PEPPER` or the file's path.
    pub source_name: String,
}

impl PepperSource {
    /// The pepper from `TOKENGATE_PEPPER` if it is set, else from `file` if
    /// it exists; `None` when neither is there.
    pub fn found(file: Option<&Path>) -> Result<Option<Self>, PepperSourceError> {
        if let Ok(text) = std::env::var(PEPPER_ENV) {
            return parse(&text, PEPPER_ENV).map(Some);
        }
        let Some(file) = file else {
            return Ok(None);
        };
        read_text(file)?
            .map(|text| parse(&text, &file.display().to_string()))
            .transpose()
    }

    /// Every pepper, current first.
    pub fn all(&self) -> impl Iterator<Item = &Pepper> {
        std::iter::once(&self.pepper).chain(&self.previous)
    }

    /// The check value of each pepper, current first.
    pub fn check_values(&self) -> Vec<(KeyId, String)> {
        self.all()
            .map(|p| (p.id(), TokenHasher::new(p.clone()).pepper_check()))
            .collect()
    }

    /// A new current pepper, the next key id after every one known here
    /// and in `recorded` (the database's key ids); the current one joins
    /// the previous ones.
    pub fn rotated(self, recorded: &[KeyId]) -> Self {
        let next = self
            .all()
            .map(Pepper::id)
            .chain(recorded.iter().copied())
            .map(KeyId::get)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let mut previous = vec![self.pepper];
        previous.extend(self.previous);
        Self {
            pepper: Pepper::generate(KeyId::new(next)),
            previous,
            source_name: self.source_name,
        }
    }

    /// This source without the pepper of `key`.
    pub fn without(mut self, key: KeyId) -> Self {
        self.previous.retain(|p| p.id() != key);
        self
    }

    /// Writes every pepper to `file` (one `KEYID:HEX` per line, private),
    /// replacing it whole: a reader sees the old file or the new one.
    pub fn write(&self, file: &Path) -> Result<(), PepperSourceError> {
        let mut text = zeroize::Zeroizing::new(String::new());
        for pepper in self
            .previous
            .iter()
            .rev()
            .chain(std::iter::once(&self.pepper))
        {
            text.push_str(&format!(
                "{}:{}\n",
                pepper.id().get(),
                pepper.expose_hex().as_str()
            ));
        }
        let io_error = |error| PepperSourceError::Io {
            path: file.to_owned(),
            error,
        };
        let temp = write_private_temp(file, text.as_bytes()).map_err(io_error)?;
        let written = std::fs::rename(&temp, file).and_then(|()| check_private(file));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(io_error)
    }

    /// The peppers, for a hasher.
    pub fn into_peppers(self) -> Peppers {
        Peppers {
            current: self.pepper,
            previous: self.previous,
        }
    }

    /// Creates `file` with a fresh pepper, whole or not at all: the pepper
    /// is written to a private temporary file that is then linked into
    /// place, so a process racing to read it never sees a half-written
    /// file, and of two racing creators the second reads the first one's
    /// pepper.
    pub fn create(file: &Path) -> Result<Self, PepperSourceError> {
        create_file(file).map(|pepper| Self {
            pepper,
            previous: Vec::new(),
            source_name: file.display().to_string(),
        })
    }

    /// This pepper's check value: what a database records, never the pepper.
    pub fn check_value(&self) -> String {
        TokenHasher::new(self.pepper.clone()).pepper_check()
    }

    /// The peppers, if the database's check values (`recorded`, by key
    /// id) are theirs: the current one must be recorded, and a previous
    /// one, where recorded, must match; else
    /// [`PepperSourceError::Mismatch`] naming this source and the key.
    pub fn verified(
        self,
        recorded: &[(KeyId, String)],
        database: &str,
    ) -> Result<Peppers, PepperSourceError> {
        let recorded_for = |key: KeyId| recorded.iter().find(|(k, _)| *k == key).map(|(_, c)| c);
        for (i, (key, check)) in self.check_values().into_iter().enumerate() {
            let fits = match recorded_for(key) {
                Some(stored) => *stored == check,
                None => i > 0,
            };
            if !fits {
                return Err(PepperSourceError::Mismatch {
                    database: database.to_owned(),
                    source_name: self.source_name,
                    key_id: key,
                });
            }
        }
        Ok(self.into_peppers())
    }
}

/// The peppers in `text`: `KEYID:HEX` or bare `HEX` (key 1) entries, one
/// per line or separated by commas; the highest key id is current.
fn parse(text: &str, source_name: &str) -> Result<PepperSource, PepperSourceError> {
    let invalid = |error| PepperSourceError::Invalid {
        source_name: source_name.to_owned(),
        error,
    };
    let mut peppers = Vec::new();
    for entry in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (key, hex) = match entry.split_once(':') {
            Some((key, hex)) => {
                let key: u32 = key
                    .trim()
                    .parse()
                    .map_err(|_| invalid(PepperError::BadKeyId))?;
                (KeyId::new(key), hex.trim())
            }
            None => (FIRST_KEY, entry),
        };
        if peppers.iter().any(|p: &Pepper| p.id() == key) {
            return Err(invalid(PepperError::BadKeyId));
        }
        peppers.push(Pepper::from_hex(key, hex).map_err(invalid)?);
    }
    peppers.sort_by_key(|p| std::cmp::Reverse(p.id().get()));
    let mut peppers = peppers.into_iter();
    let pepper = peppers.next().ok_or_else(|| invalid(PepperError::Empty))?;
    Ok(PepperSource {
        pepper,
        previous: peppers.collect(),
        source_name: source_name.to_owned(),
    })
}

/// The text of `path`, or `None` if there is no such file.
fn read_text(path: &Path) -> Result<Option<zeroize::Zeroizing<String>>, PepperSourceError> {
    let mut text = zeroize::Zeroizing::new(String::new());
    match OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
    {
        Ok(_) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(PepperSourceError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Writes `bytes` to a new private file beside `path`, synced, and
/// returns its name. The file is created exclusively (`O_EXCL`) under an
/// unpredictable name, with mode 0600 from its creation: a file someone
/// left at a guessed name is never written into or renamed into place
/// (it would keep its owner and mode). A name taken by chance is retried.
fn write_private_temp(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..8 {
        let temp = temp_path(path);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(mut file) => {
                let written = file.write_all(bytes).and_then(|()| file.sync_all());
                if let Err(error) = written {
                    let _ = std::fs::remove_file(&temp);
                    return Err(error);
                }
                return Ok(temp);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// An unpredictable temporary name beside `path`: 128 random bits from
/// the OS generator.
fn temp_path(path: &Path) -> PathBuf {
    use rand::Rng;
    let mut random = [0u8; 16];
    rand::rand_core::UnwrapErr(rand::rngs::SysRng).fill_bytes(&mut random);
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", hex::encode(random)));
    PathBuf::from(temp)
}

/// Refuses a pepper file that others can read or write: the file was just
/// written 0600, so any other mode means something else is at that path.
fn check_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("its mode is {:o}, not private (0600)", mode & 0o777),
        ));
    }
    Ok(())
}

fn create_file(path: &Path) -> Result<Pepper, PepperSourceError> {
    let io_error = |error| PepperSourceError::Io {
        path: path.to_owned(),
        error,
    };
    let pepper = Pepper::generate(FIRST_KEY);
    let temp = write_private_temp(path, pepper.expose_hex().as_bytes()).map_err(io_error)?;
    let written = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => check_private(path).map_err(io_error).map(|()| pepper),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let text = read_text(path)?.ok_or_else(|| io_error(error))?;
            Ok(parse(&text, &path.display().to_string())?.pepper)
        }
        Err(error) => Err(io_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn a_source_holds_peppers_by_key_and_the_highest_is_current() {
        let bare = parse(A, "test").unwrap();
        assert_eq!((bare.pepper.id(), bare.previous.len()), (FIRST_KEY, 0));
        let two = parse(&format!("1:{A}\n2:{B}\n"), "test").unwrap();
        assert_eq!(two.pepper.id(), KeyId::new(2));
        assert_eq!(
            two.previous.iter().map(Pepper::id).collect::<Vec<_>>(),
            [FIRST_KEY]
        );
        let env_style = parse(&format!("2:{B}, {A}"), "test").unwrap();
        assert_eq!(env_style.check_values(), two.check_values());
        for bad in [
            format!("1:{A}\n1:{B}"),
            format!("x:{A}"),
            String::new(),
            "1:zz".into(),
        ] {
            let error = parse(&bad, "the file").unwrap_err().to_string();
            assert!(error.starts_with("the file: "), "{error}");
        }
    }

    #[test]
    fn files_squatted_at_guessable_temporary_names_are_never_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tokengate-squat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokengate.db.pepper");
        // What another user could leave at the names a predictable scheme
        // would pick: world-readable files, for this process and the next.
        let squatted: Vec<PathBuf> = (0..4)
            .flat_map(|n| {
                [std::process::id(), std::process::id() + 1]
                    .map(|pid| PathBuf::from(format!("{}.{pid}-{n}.tmp", file.display())))
            })
            .collect();
        for path in &squatted {
            std::fs::write(path, "squatter").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let created = PepperSource::create(&file).unwrap();
        let first = created.check_values();
        created.rotated(&[]).write(&file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = PepperSource::found(Some(&file)).unwrap().unwrap();
        assert_eq!(read.check_values()[1], first[0]);
        for path in &squatted {
            assert_eq!(std::fs::read_to_string(path).unwrap(), "squatter");
        }
        // Nothing else is left beside the file: the temporaries are gone.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.contains("-"))
            .collect();
        names.sort();
        assert_eq!(names, ["tokengate.db.pepper"]);
        // Two temporary names are never the same.
        assert_ne!(temp_path(&file), temp_path(&file));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_adds_the_next_key_and_the_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("tokengate-pepper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pepper");
        let first = PepperSource::create(&file).unwrap();
        let checks = first.check_values();
        // The database recorded key 3 once (say, a retired rotation).
        let rotated = first.rotated(&[KeyId::new(3)]);
        assert_eq!(rotated.pepper.id(), KeyId::new(4));
        rotated.write(&file).unwrap();
        let read = PepperSource::found(Some(&file)).unwrap().unwrap();
        assert_eq!(read.check_values(), rotated.check_values());
        assert_eq!(
            read.check_values()[1],
            checks[0],
            "the old pepper is kept as previous"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Verified: the current one must be recorded; a recorded previous one must match.
        let recorded = read.check_values();
        assert!(
            PepperSource::found(Some(&file))
                .unwrap()
                .unwrap()
                .verified(&recorded, "db")
                .is_ok()
        );
        let wrong_previous = vec![recorded[0].clone(), (FIRST_KEY, "00".into())];
        let error = PepperSource::found(Some(&file))
            .unwrap()
            .unwrap()
            .verified(&wrong_previous, "db")
            .unwrap_err();
        assert!(matches!(error, PepperSourceError::Mismatch { key_id, .. } if key_id == FIRST_KEY));
        let unrecorded = PepperSource::found(Some(&file))
            .unwrap()
            .unwrap()
            .verified(&recorded[1..], "db");
        assert!(
            unrecorded.is_err(),
            "a current pepper the database never recorded"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
