//! `tokengate scan` over a real tree of files and a real SQLite database.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{Db, text};

/// A tree holding a live, a revoked, a checksum-broken and a random
/// token, a .gitignored file and a .git folder with the live one, and a
/// binary file with it too.
struct Tree {
    root: PathBuf,
    live: String,
    live_id: String,
    revoked: String,
    revoked_id: String,
}

fn tree(db: &Db) -> Tree {
    let live = db.issue(&[]);
    let revoked = db.issue(&[]);
    let revoked_id = revoked["id"].as_str().unwrap().to_owned();
    db.ok(&["revoke", &revoked_id]);
    let live_token = live["token"].as_str().unwrap().to_owned();
    let revoked_token = revoked["token"].as_str().unwrap().to_owned();
    // One character changed: the checksum no longer holds.
    let mut broken = live_token.clone();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });

    let root = db.dir.join("tree");
    let write = |path: &str, text: &[u8]| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        ".env",
        format!("# local\nNOTES_TOKEN={live_token}\n").as_bytes(),
    );
    write(
        "deploy/values.yaml",
        format!("a: 1\ntoken: \"{revoked_token}\"\n").as_bytes(),
    );
    write("src/broken.txt", format!("x {broken}\n").as_bytes());
    write(
        "src/random.txt",
        b"tg_0123456789abcdefghijABCDEFGHIJ012345 and tg_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n",
    );
    write(".gitignore", b"secrets.txt\n");
    write("secrets.txt", live_token.as_bytes());
    write(".git/config", live_token.as_bytes());
    let mut binary = b"\x00\x01\x02".to_vec();
    binary.extend_from_slice(live_token.as_bytes());
    write("logo.png", &binary);
    Tree {
        root,
        live: live_token,
        live_id: live["id"].as_str().unwrap().to_owned(),
        revoked: revoked_token,
        revoked_id,
    }
}

fn scan_without_db(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("scan")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn scan_reports_exactly_the_live_and_revoked_tokens_masked_with_their_place() {
    let db = Db::new("scan-tree");
    let tree = tree(&db);
    let root = tree.root.to_str().unwrap();

    let out = db.run(&["scan", root]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown: Vec<&str> = stdout.lines().collect();
    let tail = |token: &str| token[token.len() - 4..].to_owned();
    assert_eq!(
        shown,
        vec![
            format!(
                "{root}/.env:2:13: tg_…{} {} active",
                tail(&tree.live),
                tree.live_id
            ),
            format!(
                "{root}/deploy/values.yaml:2:9: tg_…{} {} revoked",
                tail(&tree.revoked),
                tree.revoked_id
            ),
        ]
    );
    // Never the token itself, on either stream.
    let all = text(&out);
    assert!(!all.contains(&tree.live[3..30]));
    assert!(!all.contains(&tree.revoked[3..30]));

    // As JSON lines.
    let out = db.run(&["scan", "--json", root]);
    assert_eq!(out.status.code(), Some(1));
    let found = lines(&out);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0]["line"], 2);
    assert_eq!(found[0]["column"], 13);
    assert_eq!(found[0]["status"], "active");
    assert_eq!(found[0]["token_id"], tree.live_id.as_str());
    assert_eq!(found[1]["status"], "revoked");

    // Only the revoked one left: nothing live, exit 0.
    std::fs::remove_file(tree.root.join(".env")).unwrap();
    let out = db.run(&["scan", root]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn scan_without_a_database_counts_every_token_live_and_honours_its_options() {
    let db = Db::new("scan-nodb");
    let tree = tree(&db);
    // No --db: no lookup, every token found may be live.
    let out = scan_without_db(&["."], &tree.root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.starts_with(".env:2:13: tg_…"), "{stdout}");
    assert!(!stdout.contains("tok_"));

    // --no-ignore: the .gitignored file too (never .git, never binaries).
    let out = scan_without_db(&["--no-ignore", "."], &tree.root);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("secrets.txt:1:1: "), "{stdout}");

    // --prefix of another issuer: nothing, exit 0.
    let out = scan_without_db(&["--prefix", "acme", "."], &tree.root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty());

    // An unreadable path or a bad prefix: exit 2, named.
    let out = scan_without_db(&["no-such-dir"], &tree.root);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no-such-dir"));
    let out = scan_without_db(&["--prefix", "Bad!", "."], &tree.root);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("\"Bad!\""), "{}", text(&out));
}

#[test]
fn scan_revoke_revokes_live_tokens_once_records_where_and_audits_without_the_token() {
    let db = Db::new("scan-revoke");
    let tree = tree(&db);
    let root = tree.root.to_str().unwrap();
    // Without --yes and without a terminal to ask on: refused, nothing done.
    let out = db.run(&["scan", "--revoke", root]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(db.ok(&["show", &tree.live_id]).contains("active"));

    let audit = db.dir.join("leaks.jsonl");
    let revoke = || {
        db.run(&[
            "scan",
            "--revoke",
            "--yes",
            "--audit-log",
            audit.to_str().unwrap(),
            root,
        ])
    };
    let out = revoke();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("{} revoked (revoked now)", tree.live_id)),
        "{shown}"
    );
    // Found live: exit 1 although it is revoked now (the file still holds it).
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let record: Value = serde_json::from_str(&db.ok(&["show", &tree.live_id, "--json"])).unwrap();
    assert_eq!(record["status"], "revoked");
    assert_eq!(
        record["metadata"]["leaked_at"],
        format!("{root}/.env:2:13").as_str()
    );
    assert_eq!(record["metadata"]["leak_reported_by"], "scan");

    // One audit record, for the token revoked now; chained and keyed.
    let written = std::fs::read_to_string(&audit).unwrap();
    assert!(!written.contains(&tree.live[3..30]));
    let records: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["tokengate.event"], "leak_reported");
    assert_eq!(records[0]["tokengate.leak.outcome"], "revoked");
    assert_eq!(records[0]["tokengate.leak.reporter"], "scan");
    assert_eq!(records[0]["tokengate.token_id"], tree.live_id.as_str());
    assert_eq!(
        records[0]["tokengate.leak.source"],
        format!("{root}/.env:2:13").as_str()
    );
    assert!(
        db.ok(&["audit", "verify", audit.to_str().unwrap()])
            .starts_with("ok: 1 records (keyed)")
    );

    // Again: nothing live, nothing revoked, nothing written.
    let out = revoke();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&audit).unwrap().lines().count(), 1);

    // From standard input.
    let fresh = db.issue(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args([
            "--db",
            db.path().to_str().unwrap(),
            "scan",
            "--revoke",
            "--yes",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("log: {}\n", fresh["token"].as_str().unwrap()).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stdin:1:6: tg_…"));
    let record: Value =
        serde_json::from_str(&db.ok(&["show", fresh["id"].as_str().unwrap(), "--json"])).unwrap();
    assert_eq!(record["status"], "revoked");
    let _ = tree.revoked;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_looks_up_and_revokes_tokens_in_a_postgres_database() {
    let Some(database) = tokengate_postgres::testing::TestDatabase::create().await else {
        return;
    };
    let db = Db::new("scan-postgres");
    let pepper = db.dir.join("pepper");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["--db", database.url(), "--pepper-file"])
            .arg(&pepper)
            .args(args)
            .env_remove("TOKENGATE_PEPPER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut issue = support::ISSUE.to_vec();
    issue.push("--json");
    let out = run(&issue);
    assert!(out.status.success(), "{}", text(&out));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = issued["token"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    let file = db.dir.join("notes.txt");
    std::fs::write(&file, format!("use {token} here\n")).unwrap();
    let file = file.to_str().unwrap();

    let out = run(&["scan", "--json", file]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let found = lines(&out);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["status"], "active");
    assert_eq!(found[0]["token_id"], id);
    assert_eq!(found[0]["column"], 5);

    let out = run(&["scan", "--revoke", "--yes", file]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked (revoked now)"));
    let out = run(&["show", id, "--json"]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "revoked");
    assert_eq!(
        shown["metadata"]["leaked_at"],
        format!("{file}:1:5").as_str()
    );
    let out = run(&["scan", file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    drop(database);
}
