//! Peppers on running servers: three axum-notes processes on one SQLite
//! file, and three on one PostgreSQL database, pick up a `pepper rotate`
//! and a `pepper retire` through their change feed, without a restart: a
//! token issued under the new pepper works on all three within a second,
//! and a token left under a retired pepper fails on all three, for good.
//! SIGHUP loads a pepper the feed never announced.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::{Deployment, send};
use tokengate_tests::process::{Started, cli, cli_issue, start_example, temp_dir};

/// How long every server has to agree after a CLI command returns.
const BOUND: Duration = Duration::from_secs(1);

async fn get(base: &str, token: &str) -> StatusCode {
    send(base, "GET", "/notes", Some(token), "").await
}

/// Polls until `token` gets `want` on every server, or `BOUND` passes;
/// the statuses last seen.
async fn all_become(bases: &[String], token: &str, want: StatusCode) -> Vec<StatusCode> {
    let deadline = Instant::now() + BOUND;
    loop {
        let mut seen = Vec::new();
        for base in bases {
            seen.push(get(base, token).await);
        }
        if seen.iter().all(|s| *s == want) || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scenario both stores run: `old` is in use, `idle` was issued under
/// the first pepper and not used since the rotation; `cli` runs the CLI
/// on the servers' database, `issue` issues a `notes:read` token.
async fn rotate_then_retire(
    bases: &[String],
    cli: impl Fn(&[&str]) -> String,
    issue: impl Fn(&str) -> String,
    old: &str,
    idle: &str,
) {
    let rotated = cli(&["pepper", "rotate"]);
    assert!(rotated.starts_with("key 2 is current"), "{rotated}");
    let fresh = issue("fresh");
    let seen = all_become(bases, &fresh, StatusCode::OK).await;
    assert!(
        seen.iter().all(|s| *s == StatusCode::OK),
        "a token issued under the new pepper, within {BOUND:?} on every server: {seen:?}"
    );
    // The old token still works everywhere (moved to key 2 on first use).
    for base in bases {
        assert_eq!(get(base, old).await, StatusCode::OK, "{base}");
    }
    let status = cli(&["pepper", "status"]);
    assert!(status.contains("key 1: previous, 1 tokens"), "{status}");

    // Retired with the idle token still under it: it fails everywhere and
    // is never moved to key 2 by a server that still knew key 1.
    cli(&["pepper", "retire", "1", "--force"]);
    let seen = all_become(bases, idle, StatusCode::UNAUTHORIZED).await;
    assert!(
        seen.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "a token under a retired pepper, within {BOUND:?} on every server: {seen:?}"
    );
    for _ in 0..3 {
        for base in bases {
            assert_eq!(get(base, idle).await, StatusCode::UNAUTHORIZED, "{base}");
            assert_eq!(get(base, &fresh).await, StatusCode::OK, "{base}");
            assert_eq!(get(base, old).await, StatusCode::OK, "{base}");
        }
    }
    let status = cli(&["pepper", "status"]);
    assert!(
        status.contains("key 1: retired, 1 tokens (they never verify again)"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_sqlite_file_follow_a_rotation_and_a_retirement() {
    let dir = temp_dir("axum-notes-peppers");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let start = |i: usize| support::start_sqlite(bin, &dir, i);
    let servers: Vec<Started> = (0..3).map(start).collect();
    let bases: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let old = servers[0].token.clone();
    let idle = cli_issue(bin, &db, "idle", "s", "notes:read");
    for base in &bases {
        assert_eq!(get(base, &old).await, StatusCode::OK);
        assert_eq!(get(base, &idle).await, StatusCode::OK);
    }
    // The old token's first use after the rotation must happen after the
    // fresh token's check: send it nowhere until then.
    rotate_then_retire(
        &bases,
        |args| cli(bin, &db, args),
        |name| cli_issue(bin, &db, name, "s", "notes:read"),
        &old,
        &idle,
    )
    .await;
    // A restart keeps the retirement: the file no longer lists key 1, and
    // the database refuses it even where a pepper source still would.
    let mut servers = servers;
    assert!(servers[0].terminate());
    let restarted = start(0);
    assert_eq!(get(&restarted.addr, &idle).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&restarted.addr, &old).await, StatusCode::OK);
    drop(servers);
    drop(restarted);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_follow_a_rotation_and_a_retirement() {
    let Some(deployment) = Deployment::start_without_redis("peppers").await else {
        return;
    };
    let issue = |name: &str| {
        deployment.cli(&[
            "issue",
            "--name",
            name,
            "--subject",
            "s",
            "--scope",
            "notes:read",
            "--audience",
            "notes",
        ])
    };
    let old = issue("old");
    let idle = issue("idle");
    for base in &deployment.bases {
        assert_eq!(get(base, &old).await, StatusCode::OK);
        assert_eq!(get(base, &idle).await, StatusCode::OK);
    }
    rotate_then_retire(
        &deployment.bases,
        |args| deployment.cli(args),
        issue,
        &old,
        &idle,
    )
    .await;
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_loads_a_pepper_the_feed_never_announced() {
    let dir = temp_dir("axum-notes-sighup");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let server = start_example(bin, &dir, "axum-notes listening on ");
    // A rotation the feed never saw (say, a database restored from a
    // backup taken after it): the pepper file and the database's record
    // are written by hand, with no change announced.
    let file = dir.join("tokengate.db.pepper");
    let rotated = tokengate::store::PepperSource::found(Some(&file))
        .unwrap()
        .unwrap()
        .rotated(&[]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO peppers (key_id, check_value, created_at) VALUES (2, ?1, 0)",
        [rotated.check_value()],
    )
    .unwrap();
    rotated.write(&file).unwrap();
    let fresh = cli_issue(bin, &db, "fresh", "s", "notes:read");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&server.addr, &fresh).await,
        StatusCode::UNAUTHORIZED,
        "unknown here until the server loads its peppers again"
    );
    assert!(server.hangup());
    let seen = all_become(std::slice::from_ref(&server.addr), &fresh, StatusCode::OK).await;
    assert_eq!(seen, [StatusCode::OK], "after SIGHUP");
    assert_eq!(get(&server.addr, &server.token).await, StatusCode::OK);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
