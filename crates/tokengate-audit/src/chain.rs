//! Tamper evidence: every line of the JSON-lines file links to the one before.
//!
//! A line is the record's JSON object with two more members:
//! `"chain.prev"`, the previous line's hash (64 zeros for the first line),
//! and last `"chain.hash"`, the SHA-256 of the line as it reads without its
//! `"chain.hash"` member (that is, the text up to the member, closed with
//! `}`). Editing, removing, reordering or inserting a line breaks a link;
//! [`verify`] reports the first broken one. Truncating the end of the file
//! cannot be detected from the file alone: keep the last hash elsewhere if
//! that matters.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use crate::event::AuditEvent;
use sha2::{Digest, Sha256};

/// The `chain.prev` of a file's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_MEMBER: &str = ",\"chain.hash\":\"";

/// A line's hash as the chain writes it: 64 lowercase hex digits.
pub(crate) struct LineHash([u8; 64]);

impl LineHash {
    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or(GENESIS)
    }
}

/// Writes `event` into `line` (cleared first) as one chained line, without
/// the newline, and returns the line's hash. Allocates nothing once `line`
/// has grown to a line's size.
pub(crate) fn link(event: &AuditEvent, prev: &str, line: &mut String) -> LineHash {
    line.clear();
    event.write_json(line, Some(prev));
    let mut hash = LineHash([0; 64]);
    // 32 bytes always fit 64 digits.
    let _ = hex::encode_to_slice(Sha256::digest(line.as_bytes()), &mut hash.0);
    // Reopen the object for the last member.
    line.pop();
    line.push_str(HASH_MEMBER);
    line.push_str(hash.as_str());
    line.push_str("\"}");
    hash
}

/// The hash of the last line of `path`, to continue its chain, or the
/// genesis value for a missing or empty file.
pub(crate) fn last_hash(path: &Path) -> std::io::Result<String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GENESIS.to_owned()),
        Err(e) => return Err(e),
    };
    let mut last = GENESIS.to_owned();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Some((_, hash)) = split(&line) {
            last = hash.to_owned();
        }
    }
    Ok(last)
}

/// Splits a line into its hashed body (closed with `}`) and its stated hash.
fn split(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(HASH_MEMBER)?;
    let rest = &line[at + HASH_MEMBER.len()..];
    let hash = rest.strip_suffix("\"}")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{}}}", &line[..at]), hash))
}

/// A verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Lines checked.
    pub records: u64,
    /// The hash of the last line (keep it elsewhere to detect truncation).
    pub last_hash: String,
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
    #[error("line {line}: does not follow line {} (removed, inserted or reordered lines)", line - 1)]
    BrokenLink {
        /// 1-based line number.
        line: u64,
    },
}

/// Checks every link of the file at `path`.
pub fn verify(path: &Path) -> Result<ChainReport, ChainError> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev = GENESIS.to_owned();
    let mut records = 0;
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let (body, stated) = split(&line).ok_or(ChainError::Malformed { line: number })?;
        if hex::encode(Sha256::digest(body.as_bytes())) != stated {
            return Err(ChainError::HashMismatch { line: number });
        }
        let parsed: Map<String, Value> =
            serde_json::from_str(&body).map_err(|_| ChainError::Malformed { line: number })?;
        if parsed.get("chain.prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(ChainError::BrokenLink { line: number });
        }
        prev = stated.to_owned();
        records += 1;
    }
    Ok(ChainReport {
        records,
        last_hash: prev,
    })
}
