//! The defects a first deployment hits, through the real binary: secrets
//! never echoed, stores never created or re-peppered by accident, input
//! checked before anything is written.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Db, ISSUE, ISSUE_UNSCOPED, text};

#[test]
fn a_token_given_where_an_id_belongs_is_never_echoed_and_its_id_is_named() {
    let dir = Db::new("token-as-id");
    let issued = dir.issue(&[]);
    let token = issued["token"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    for command in ["show", "revoke", "rotate"] {
        let out = dir.run(&[command, token]);
        assert!(!out.status.success());
        let shown = text(&out);
        assert!(!shown.contains(&token[3..]), "{command}: {shown}");
        assert!(shown.contains("is a token, not a token id"), "{shown}");
        assert!(shown.contains(id), "{command}: the id is named: {shown}");
    }
    // A token this store does not know, and a cut one: still never echoed.
    let mut unknown = token.to_owned();
    unknown.replace_range(10..11, if &token[10..11] == "A" { "B" } else { "A" });
    for input in [unknown.as_str(), &token[..30]] {
        let shown = text(&dir.run(&["revoke", input]));
        assert!(!shown.contains(&input[3..25]), "{shown}");
        assert!(shown.contains("looks like a token"), "{shown}");
    }
}

#[test]
fn a_missing_database_is_an_error_naming_it_and_nothing_is_created() {
    let dir = Db::new("missing");
    for args in [
        &["list"][..],
        &["show", "tok_AAAAAAAAAAAAAAAA"],
        &["revoke", "tok_AAAAAAAAAAAAAAAA"],
        &["scopes"],
        &["inspect", "tg_x"],
    ] {
        let out = dir.run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains(&dir.path().display().to_string()),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(dir.files().is_empty(), "{:?}", dir.files());
    let out = dir.run(&["init"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dir.files(), ["tokens.db", "tokens.db.pepper"]);
    assert!(dir.run(&["list"]).status.success());
}

#[test]
fn rejected_issue_input_leaves_no_file_behind() {
    let dir = Db::new("no-leftovers");
    let cases: &[&[&str]] = &[
        &["--ttl", "0s"],
        &["--ttl", "91d"],
        &["--ttl", "1ns"],
        &["--ttl", "1us"],
        &["--ttl", "500us"],
        &["--ttl", "999ms"],
        &["--rate", "0/s", "--burst", "1"],
        &["--rate", "5/s", "--burst", "0"],
        &["--expires", "2001-01-01T00:00:00Z"],
        &["--name", ""],
    ];
    for extra in cases {
        let mut args = ISSUE.to_vec();
        args.extend_from_slice(extra);
        let out = dir.run(&args);
        assert!(!out.status.success(), "{extra:?}");
        assert!(dir.files().is_empty(), "{extra:?} left {:?}", dir.files());
    }
    let out = dir.run(ISSUE_UNSCOPED);
    assert!(
        text(&out).contains("at least one --scope"),
        "{}",
        text(&out)
    );
    assert!(dir.files().is_empty());
}

#[test]
fn a_lost_pepper_stops_every_command_with_a_clear_error() {
    let dir = Db::new("lost-pepper");
    dir.issue(&[]);
    std::fs::remove_file(dir.dir.join("tokens.db.pepper")).unwrap();
    for args in [&["list"][..], ISSUE] {
        let out = dir.run(args);
        assert!(!out.status.success());
        assert!(text(&out).contains("pepper"), "{}", text(&out));
        assert!(text(&out).contains("is missing"), "{}", text(&out));
    }
    assert!(
        !dir.dir.join("tokens.db.pepper").exists(),
        "never silently re-created"
    );
}

#[test]
fn eight_processes_issuing_on_a_fresh_database_at_once_all_succeed() {
    let dir = Db::new("concurrent");
    let children: Vec<_> = (0..8)
        .map(|_| {
            let mut args = ISSUE.to_vec();
            args.push("--json");
            Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .arg("--db")
                .arg(dir.path())
                .args(&args)
                .env_remove("TOKENGATE_PEPPER")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let listed = dir.run(&["list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 8);
}

#[test]
fn rotating_a_token_without_expiry_keeps_it_without_expiry() {
    let dir = Db::new("rotate-no-expiry");
    let issued = dir.issue(&["--no-expiry"]);
    let out = dir.run(&["rotate", issued["id"].as_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["expires_at"], Value::Null);
}

#[test]
fn issue_checks_scopes_against_the_catalogue_the_servers_registered() {
    let dir = Db::new("catalogue");
    // Empty catalogue: accepted, with one warning.
    let out = dir.run(ISSUE);
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning"))
        .count();
    assert_eq!(warnings, 1);

    // A server registers its policy's scopes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokengate::store::TokenAdmin;
        let store = tokengate::sqlite::SqliteStore::open(&dir.path()).unwrap();
        store
            .register_scopes(&"notes:read notes:write".parse().unwrap())
            .await
            .unwrap();
    });
    let listed = dir.run(&["scopes"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "notes:read\nnotes:write\n"
    );

    for (typo, nearest) in [("notes:raed", "notes:read"), ("Notes:Read", "notes:read")] {
        let out = dir.run(&[ISSUE_UNSCOPED, &["--scope", typo]].concat());
        assert!(!out.status.success(), "{typo}");
        let shown = text(&out);
        assert!(shown.contains(typo) && shown.contains(nearest), "{shown}");
        assert!(shown.contains("--allow-unknown-scope"), "{shown}");
    }
    let out = dir.run(
        &[
            ISSUE_UNSCOPED,
            &["--scope", "billing:read", "--allow-unknown-scope"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn list_has_a_header_and_shows_expiry() {
    let dir = Db::new("list");
    let issued = dir.issue(&["--ttl", "1h"]);
    let out = dir.run(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = listed.lines();
    let header = lines.next().unwrap();
    for column in ["ID", "STATUS", "NAME", "SUBJECT", "EXPIRES", "SCOPES"] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.next().unwrap();
    // The JSON has milliseconds; the table shows whole seconds.
    let expires = &issued["expires_at"].as_str().unwrap()[..19];
    assert!(row.contains(expires), "{row} should show {expires}");
}

#[test]
fn audit_verify_tells_a_torn_line_from_tampering_by_exit_status() {
    let dir = Db::new("verify");
    let log = dir.dir.join("audit.jsonl");
    let whole = chained_lines(2).into_bytes();
    std::fs::write(&log, &whole).unwrap();
    let out = dir.run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..50]);
    std::fs::write(&log, &torn).unwrap();
    let out = dir.run(&["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).starts_with("torn"), "{}", text(&out));

    let edited = String::from_utf8(whole).unwrap().replacen(
        "\"http.response.status_code\":",
        "\"http.response.status_code\":1",
        1,
    );
    std::fs::write(&log, edited).unwrap();
    let out = dir.run(&["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// `n` records chained as the JSON-lines sink chains them (unkeyed).
fn chained_lines(n: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for i in 0..n {
        let body =
            format!("{{\"chain.prev\":\"{prev}\",\"http.response.status_code\":200,\"n\":{i}}}");
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        out.push_str(&body[..body.len() - 1]);
        out.push_str(&format!(",\"chain.hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    out
}

#[test]
fn a_database_url_is_never_printed_with_its_credentials() {
    let dir = Db::new("pg-secrets");
    let pepper = dir.dir.join("pepper");
    for url in [
        "postgres://app:pw1secret@127.0.0.1:1/tokens",
        "postgres://app@127.0.0.1:1/tokens?password=hunter2&sslmode=disable",
        "postgresql://app@127.0.0.1:1/tokens?sslpassword=hunter2",
    ] {
        for command in [&["init"][..], &["list"][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .arg("--db")
                .arg(url)
                .arg("--pepper-file")
                .arg(&pepper)
                .args(command)
                .env_remove("TOKENGATE_PEPPER")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{url}: nothing listens on port 1");
            let shown = text(&out);
            assert!(shown.contains("127.0.0.1:1"), "{url}: {shown}");
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
            assert!(!shown.contains("pw1secret"), "{url}: {shown}");
        }
    }
}

#[test]
fn text_an_operator_reads_is_escaped_and_control_characters_are_refused() {
    let db = Db::new("text");
    // Stored through the library's rules (no control characters), but bidi
    // overrides and zero-width characters are legal in a name: shown escaped.
    let issued: Value = serde_json::from_str(&db.ok(&[
        "issue",
        "--name",
        "invoice\u{202e}fdp.exe\u{200b}",
        "--subject",
        "team-a",
        "--scope",
        "notes:read",
        "--audience",
        "notes",
        "--allow-unknown-scope",
        "--json",
    ]))
    .unwrap();
    let id = issued["id"].as_str().unwrap();
    db.ok(&["update", id, "--meta", "owner=eve\u{2066}x\u{2069}"]);
    for out in [
        db.ok(&["show", id]),
        db.ok(&["list"]),
        db.ok(&["list", "--json"]),
        db.ok(&["show", id, "--json"]),
    ] {
        for raw in ['\u{202e}', '\u{200b}', '\u{2066}', '\u{2069}'] {
            assert!(!out.contains(raw), "{raw:?} printed raw: {out:?}");
        }
        assert!(
            out.contains("\\u{202e}") || out.contains("\\u202e"),
            "{out}"
        );
    }
    // JSON output is still the same value to a parser.
    let json: Value = serde_json::from_str(db.ok(&["show", id, "--json"]).trim()).unwrap();
    assert_eq!(json["name"], "invoice\u{202e}fdp.exe\u{200b}");

    // Control characters in any argument: refused before the parser can
    // echo them, named escaped, nothing written.
    for bad in ["\u{9b}2J", "\u{1b}[2J", "a\rb", "x\u{c}y"] {
        for args in [
            &["show", bad][..],
            &["issue", "--name", bad, "--subject", "s", "--scope", "a:b"][..],
            &["list", "--status", bad][..],
        ] {
            let out = db.run(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.chars().any(|c| c.is_control() && c != '\n'),
                "{stderr:?}"
            );
            assert!(stderr.contains("control character"), "{stderr}");
            assert!(stderr.contains("\\u{"), "{stderr}");
        }
    }
    assert_eq!(db.ok(&["list", "--json"]).lines().count(), 1);
}

#[test]
fn inspect_finds_a_token_under_a_previous_pepper_and_none_under_a_retired_one() {
    let db = Db::new("inspect-peppers");
    let old = db.issue(&[]);
    let token = old["token"].as_str().unwrap();
    db.ok(&["pepper", "rotate"]);
    let shown = db.ok(&["inspect", token]);
    assert!(
        shown.starts_with("valid (under previous pepper k1: a server moves it to k2"),
        "{shown}"
    );
    let fresh = db.issue(&[]);
    assert!(
        db.ok(&["inspect", fresh["token"].as_str().unwrap()])
            .starts_with("valid\n")
    );
    let retired = db.ok(&["pepper", "retire", "1", "--force"]);
    assert_eq!(retired.trim(), "retired key 1");
    let out = db.run(&["inspect", token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).starts_with("invalid: token unknown"),
        "{}",
        text(&out)
    );
    let status = db.ok(&["pepper", "status"]);
    assert!(status.contains("key 1: retired, 1 tokens"), "{status}");
    // The newest pepper cannot be retired; an unknown one is named.
    for (key, says) in [("2", "current pepper"), ("7", "not in the pepper file")] {
        let out = db.run(&["pepper", "retire", key]);
        assert!(!out.status.success());
        assert!(text(&out).contains(says), "{}", text(&out));
    }
}
