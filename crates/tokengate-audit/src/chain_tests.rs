use std::path::PathBuf;

use super::*;
use crate::{AuditRecord, AuditSink, JsonLinesSink};

fn temp_log(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokengate-chain-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("audit.jsonl")
}

fn write_records(path: &Path, key: Option<&AuditKey>, n: usize) {
    let mut builder = JsonLinesSink::builder();
    if let Some(key) = key {
        builder = builder.key(key.clone());
    }
    let sink = builder.open(path).unwrap();
    for _ in 0..n {
        sink.record(AuditRecord::sample());
    }
    sink.shutdown();
}

fn key() -> AuditKey {
    AuditKey::from_hex(&"ab".repeat(32), "test").unwrap()
}

#[test]
fn a_torn_last_line_is_ended_before_the_next_record_and_reported_as_torn() {
    let path = temp_log("torn");
    write_records(&path, None, 3);
    // A crash mid-write: half of a fourth line, no newline.
    let whole = std::fs::read(&path).unwrap();
    let first_line = whole.iter().position(|&b| b == b'\n').unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..first_line / 2]);
    std::fs::write(&path, &torn).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.torn_lines), (3, vec![4]));

    // Reopened, the writer ends the torn line and links to the last whole record.
    write_records(&path, None, 2);
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 5);
    assert_eq!(report.torn_lines, vec![4]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 6);
    for line in text.lines().filter(|l| !l.is_empty()).skip(4) {
        let _: serde_json::Value = serde_json::from_str(line).unwrap();
    }
}

#[test]
fn a_broken_line_in_the_middle_that_the_chain_does_not_cross_is_tampering() {
    let path = temp_log("middle");
    write_records(&path, None, 3);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Cut the second record: the third still links to it, not to the first.
    lines[1].truncate(40);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert!(matches!(
        verify(&path),
        Err(ChainError::BrokenLink { line: 3 })
    ));
}

#[test]
fn verification_is_over_the_exact_bytes_written() {
    let path = temp_log("crlf");
    write_records(&path, None, 2);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen('\n', "\r\n", 1)).unwrap();
    // The first line now holds a byte its hash does not cover, so the
    // second no longer follows it: an edit, not a torn line.
    assert!(matches!(
        verify(&path),
        Err(ChainError::BrokenLink { line: 2 })
    ));
}

#[test]
fn a_second_writer_of_one_file_fails_naming_it() {
    let path = temp_log("lock");
    let first = JsonLinesSink::open(&path).unwrap();
    let err = JsonLinesSink::open(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    first.shutdown();
    drop(first);
    // Released when the first writer is gone.
    JsonLinesSink::open(&path).unwrap().shutdown();
}

#[test]
fn a_keyed_chain_detects_a_rewrite_that_an_unkeyed_chain_cannot() {
    let path = temp_log("keyed");
    write_records(&path, Some(&key()), 3);
    assert_eq!(verify_with(&path, Some(&key())).unwrap().records, 3);
    assert!(matches!(
        verify(&path),
        Err(ChainError::KeyNeeded { line: 1 })
    ));
    let wrong = AuditKey::from_hex(&"cd".repeat(32), "test").unwrap();
    assert!(matches!(
        verify_with(&path, Some(&wrong)),
        Err(ChainError::HashMismatch { line: 1 })
    ));

    // An attacker without the key rewrites the file as an unkeyed chain:
    // it verifies unkeyed, and fails under the key.
    let forged = temp_log("forged");
    write_records(&forged, None, 3);
    std::fs::copy(&forged, &path).unwrap();
    assert_eq!(verify(&path).unwrap().records, 3);
    assert!(matches!(
        verify_with(&path, Some(&key())),
        Err(ChainError::NotKeyed { line: 1 })
    ));
}

#[test]
fn a_keyed_sink_refuses_to_continue_an_unkeyed_file() {
    let path = temp_log("mixed");
    write_records(&path, None, 1);
    let err = JsonLinesSink::builder().key(key()).open(&path).unwrap_err();
    assert!(err.to_string().contains("without a key"), "{err}");
}

#[test]
fn the_key_file_is_created_private_and_reused() {
    let path = temp_log("keyfile");
    let a = AuditKey::load_or_create(&path).unwrap();
    let b = AuditKey::load_or_create(&path).unwrap();
    write_records(&path, Some(&a), 1);
    assert_eq!(verify_with(&path, Some(&b)).unwrap().records, 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(AuditKey::path_for(&path))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!format!("{a:?}").contains("ab"));
}
