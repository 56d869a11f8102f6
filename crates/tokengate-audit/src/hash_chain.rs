//! Tamper evidence: every line of the JSON-lines file links to the one before.
//!
//! A line is the record's JSON object with two more members:
//! `"chain.prev"`, the previous line's hash (64 zeros for the first line),
//! and last the line's own hash of the line as it reads without that last
//! member (the text up to the member, closed with `}`):
//!
//! - **unkeyed** (`"chain.hash"`): SHA-256. It detects accidents and
//!   careless edits; anyone who can write the file can edit a record and
//!   recompute every later hash, and [`verify`] passes.
//! - **keyed** (`"chain.hmac"`): HMAC-SHA256 under an [`AuditKey`] kept
//!   away from the log (`TOKENGATE_AUDIT_KEY`, or a 0600 key file beside
//!   the log, like the token store's pepper). It detects edits, insertions,
//!   removals and reordering by anyone without the key.
//!
//! Neither detects the removal of the newest records (truncating the end of
//! the file): keep a copy of the last hash elsewhere (the report's
//! `last_hash`) if that matters.
//!
//! [`verify`] checks the exact bytes written, line by line (a `\r` added
//! before a newline is an edit). A line cut short by a crash mid-write is
//! reported as torn, not as tampering, when the chain continues over it:
//! the writer ends a torn last line with a newline when it reopens the
//! file, and links its next record to the last whole one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::record::AuditEvent;

/// The `chain.prev` of a file's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The environment variable holding the audit key as hex.
pub const AUDIT_KEY_ENV: &str = "TOKENGATE_AUDIT_KEY";

const HASH_MEMBER: &str = ",\"chain.hash\":\"";
const HMAC_MEMBER: &str = ",\"chain.hmac\":\"";

/// The secret key of a keyed chain: 32 to 64 bytes, zeroed on drop,
/// never shown by `Debug`.
#[derive(Clone)]
pub struct AuditKey(Hmac<Sha256>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// Why an audit key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The key is not 32 to 64 bytes of hex.
    #[error("{source_name}: the audit key must be 32 to 64 bytes as hex")]
    Invalid {
        /// Where it came from.
        source_name: String,
    },
    /// The key file could not be read or created.
    #[error("audit key file {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

impl AuditKey {
    /// A key from hex text. The error never echoes the text.
    pub fn from_hex(text: &str, source_name: &str) -> Result<Self, AuditKeyError> {
        let invalid = || AuditKeyError::Invalid {
            source_name: source_name.to_owned(),
        };
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| invalid())?);
        if !(32..=64).contains(&bytes.len()) {
            return Err(invalid());
        }
        <Hmac<Sha256> as KeyInit>::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| invalid())
    }

    /// The key in the file at `path` (hex).
    pub fn read(path: &Path) -> Result<Self, AuditKeyError> {
        let mut text = Zeroizing::new(String::new());
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|error| AuditKeyError::Io {
                path: path.to_owned(),
                error,
            })?;
        Self::from_hex(&text, &path.display().to_string())
    }

    /// The key file of the log at `log`: `<log>.key`.
    pub fn path_for(log: &Path) -> PathBuf {
        let mut name = log.as_os_str().to_owned();
        name.push(".key");
        PathBuf::from(name)
    }

    /// The key for the log at `log`: from `TOKENGATE_AUDIT_KEY` when set,
    /// otherwise from the key file beside it ([`AuditKey::path_for`]),
    /// created with a fresh random key and mode 0600 if missing.
    pub fn load_or_create(log: &Path) -> Result<Self, AuditKeyError> {
        if let Ok(hex) = std::env::var(AUDIT_KEY_ENV) {
            return Self::from_hex(&hex, AUDIT_KEY_ENV);
        }
        let path = Self::path_for(log);
        let mut key = Zeroizing::new([0u8; 32]);
        rand_key(&mut key[..]);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(Zeroizing::new(hex::encode(&key[..])).as_bytes())?;
                file.sync_all()
            });
        match created {
            Ok(()) => Self::from_hex(&hex::encode(&key[..]), &path.display().to_string()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Self::read(&path),
            Err(error) => Err(AuditKeyError::Io { path, error }),
        }
    }
}

fn rand_key(out: &mut [u8]) {
    use rand::TryRng;
    let _ = rand::rngs::SysRng.try_fill_bytes(out);
}

/// A line's hash as the chain writes it: 64 lowercase hex digits.
pub(crate) struct LineHash([u8; 64]);

impl LineHash {
    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or(GENESIS)
    }
}

fn digest(body: &[u8], key: Option<&AuditKey>) -> [u8; 32] {
    match key {
        Some(AuditKey(keyed)) => {
            let mut mac = keyed.clone();
            mac.update(body);
            mac.finalize().into_bytes().into()
        }
        None => Sha256::digest(body).into(),
    }
}

/// Writes `event` into `line` (cleared first) as one chained line, without
/// the newline, and returns the line's hash. Allocates nothing once `line`
/// has grown to a line's size.
pub(crate) fn link(
    event: &AuditEvent,
    prev: &str,
    key: Option<&AuditKey>,
    line: &mut String,
) -> LineHash {
    line.clear();
    event.write_json(line, Some(prev));
    let mut hash = LineHash([0; 64]);
    // 32 bytes always fit 64 digits.
    let _ = hex::encode_to_slice(digest(line.as_bytes(), key), &mut hash.0);
    // Reopen the object for the last member.
    line.pop();
    line.push_str(if key.is_some() {
        HMAC_MEMBER
    } else {
        HASH_MEMBER
    });
    line.push_str(hash.as_str());
    line.push_str("\"}");
    hash
}

/// Where a writer continues an existing file.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The hash of the last whole record, or the genesis value.
    pub(crate) last_hash: String,
    /// Whether the file ends without a newline (a torn last line) and
    /// needs one before the next record.
    pub(crate) needs_newline: bool,
}

/// Reads where the chain of `file` stands, checking that its records use
/// the same kind of chain (`keyed` or not) that the writer will.
pub(crate) fn tail(file: &mut File, keyed: bool) -> io::Result<Tail> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut last_hash = GENESIS.to_owned();
    for line in bytes.split(|&b| b == b'\n') {
        if let Some(parts) = split(line) {
            if parts.keyed != keyed {
                return Err(io::Error::other(if keyed {
                    "its records are chained without a key; keyed records need a new file"
                } else {
                    "its records are chained with a key; give the sink the audit key"
                }));
            }
            last_hash = parts.hash.to_owned();
        }
    }
    Ok(Tail {
        last_hash,
        needs_newline: bytes.last().is_some_and(|&b| b != b'\n'),
    })
}

struct Parts<'a> {
    /// The hashed body: the line up to the hash member, closed with `}`.
    body: Vec<u8>,
    hash: &'a str,
    keyed: bool,
}

/// Splits a line into its hashed body and its stated hash.
fn split(line: &[u8]) -> Option<Parts<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let (at, keyed) = match (text.rfind(HASH_MEMBER), text.rfind(HMAC_MEMBER)) {
        (Some(at), None) => (at, false),
        (None, Some(at)) => (at, true),
        (Some(a), Some(b)) => (a.max(b), b > a),
        (None, None) => return None,
    };
    let rest = &text[at + HASH_MEMBER.len()..];
    let hash = rest.strip_suffix("\"}")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut body = line[..at].to_vec();
    body.push(b'}');
    Some(Parts { body, hash, keyed })
}

/// A verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainReport {
    /// Whole records checked.
    pub records: u64,
    /// The hash of the last record (keep it elsewhere to detect truncation).
    pub last_hash: String,
    /// Whether the records were checked under a key.
    pub keyed: bool,
    /// 1-based numbers of lines cut short by a crash mid-write, over which
    /// the chain continues: lost records, not edits.
    pub torn_lines: Vec<u64>,
}

/// The first broken link of a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The file could not be read.
    #[error("cannot read the audit file: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a chained record.
    #[error("line {line}: not a chained audit record")]
    Malformed {
        /// 1-based line number.
        line: u64,
    },
    /// A line's content does not match its hash: it was edited.
    #[error("line {line}: content does not match its hash (edited)")]
    HashMismatch {
        /// 1-based line number.
        line: u64,
    },
    /// A line does not link to the line before: lines were removed,
    /// inserted or reordered.
    #[error(
        "line {line}: does not follow the record before it (removed, inserted or reordered lines)"
    )]
    BrokenLink {
        /// 1-based line number.
        line: u64,
    },
    /// A keyed line was checked without a key.
    #[error("line {line}: the chain is keyed; verify it with the audit key (--key-file)")]
    KeyNeeded {
        /// 1-based line number.
        line: u64,
    },
    /// A key was given, and a line is not keyed: anyone could have written it.
    #[error("line {line}: not chained under the audit key (unkeyed or rewritten)")]
    NotKeyed {
        /// 1-based line number.
        line: u64,
    },
}

/// Checks every link of the unkeyed file at `path`.
pub fn verify(path: &Path) -> Result<ChainReport, ChainError> {
    verify_with(path, None)
}

/// Checks every link of the file at `path`; with a key, every record
/// must be keyed under it.
pub fn verify_with(path: &Path, key: Option<&AuditKey>) -> Result<ChainReport, ChainError> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.last() == Some(&b'\n') || bytes.is_empty() {
        lines.pop();
    }
    let mut prev = GENESIS.to_owned();
    let mut records = 0;
    // A line that is no record, waiting to learn whether the chain
    // continues over it (torn) or not (tampering).
    let mut pending: Option<u64> = None;
    let mut torn_lines = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let Some(parts) = split(line) else {
            if let Some(earlier) = pending {
                return Err(ChainError::Malformed { line: earlier });
            }
            pending = Some(number);
            continue;
        };
        match (parts.keyed, key) {
            (true, None) => return Err(ChainError::KeyNeeded { line: number }),
            (false, Some(_)) => return Err(ChainError::NotKeyed { line: number }),
            _ => {}
        }
        if hex::encode(digest(&parts.body, key)) != parts.hash {
            return Err(ChainError::HashMismatch { line: number });
        }
        let parsed: Map<String, Value> = serde_json::from_slice(&parts.body)
            .map_err(|_| ChainError::Malformed { line: number })?;
        if parsed.get("chain.prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(ChainError::BrokenLink { line: number });
        }
        torn_lines.extend(pending.take());
        prev = parts.hash.to_owned();
        records += 1;
    }
    // A last line that is no record is torn only if it is the very end of
    // the file: a crash cuts the last write, never one before it.
    if let Some(last) = pending {
        if bytes.last() == Some(&b'\n') {
            return Err(ChainError::Malformed { line: last });
        }
        torn_lines.push(last);
    }
    Ok(ChainReport {
        records,
        last_hash: prev,
        keyed: key.is_some(),
        torn_lines,
    })
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
