//! Per-token usage across processes: three axum-notes on one SQLite file
//! count every request of a token (admitted, refused by reason, the last
//! client) in memory and add it to the file every 200 ms; `tokengate
//! usage` and `GET /admin/tokens/{id}/usage` read the sums, exactly, and
//! `tokengate usage --top` ranks the tokens. The same on PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};
use tokengate_tests::process::{Started, cli, start_example_with, temp_dir};

use support::{send, send_with};

const FLAGS: &[&str] = &["--usage-flush", "200ms", "--admin"];

fn issue_args<'a>(name: &'a str, scope: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "issue",
        "--name",
        name,
        "--subject",
        "team-a",
        "--scope",
        scope,
        "--audience",
        "notes",
    ];
    args.extend(more);
    args
}

/// Sends `count` `method path` with `token`, spread over `bases`, and
/// checks each answer is `expect`.
async fn each(
    bases: &[String],
    method: &str,
    path: &str,
    token: &str,
    count: usize,
    expect: StatusCode,
) {
    for i in 0..count {
        let body = if method == "POST" {
            r#"{"body":"x"}"#
        } else {
            ""
        };
        let status = send(&bases[i % bases.len()], method, path, Some(token), body).await;
        assert_eq!(status, expect, "{method} {path} #{i}");
    }
}

/// Every hour's counts of a `usage --json` answer together: (admitted,
/// refused by reason, the last bucket's client).
fn summed(usage: &Value) -> (u64, Value, Value) {
    let buckets = usage["buckets"].as_array().unwrap();
    let mut refused = serde_json::Map::new();
    let mut admitted = 0;
    for bucket in buckets {
        admitted += bucket["admitted"].as_u64().unwrap();
        for (reason, n) in bucket["refused"].as_object().unwrap() {
            let sum = refused.get(reason).and_then(Value::as_u64).unwrap_or(0);
            refused.insert(reason.clone(), json!(sum + n.as_u64().unwrap()));
        }
    }
    let last = buckets
        .last()
        .map_or(Value::Null, |b| b["last_client"].clone());
    (admitted, Value::Object(refused), last)
}

/// Reads `read` until it answers `want` (the servers flush every 200 ms),
/// for ten seconds at most; the last answer.
async fn until(want: impl Fn(&Value) -> bool, read: impl Fn() -> Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = read();
        if want(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the test checks of three servers on one store, whatever it is.
async fn count_across(servers: &mut [Started], tokengate: impl Fn(&[&str]) -> String) {
    let bases: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let tokengate = &tokengate;
    let reader = tokengate(&issue_args("reader", "notes:read", &[]));
    let busy = tokengate(&issue_args("busy", "notes:read", &[]));
    let limited = tokengate(&issue_args(
        "limited",
        "notes:read",
        &["--rate", "1/min", "--burst", "2"],
    ));
    let admin = tokengate(&issue_args("admin", "tokengate:admin", &[]));
    let id = |token: &str| support::token_id_by(tokengate, token);
    let (reader_id, busy_id, limited_id) = (id(&reader), id(&busy), id(&limited));

    each(&bases, "GET", "/notes", &reader, 30, StatusCode::OK).await;
    // A read-only token that writes: refused, and counted under its reason.
    each(&bases, "POST", "/notes", &reader, 6, StatusCode::FORBIDDEN).await;
    each(&bases, "GET", "/notes", &busy, 45, StatusCode::OK).await;
    each(&bases[..1], "GET", "/notes", &limited, 2, StatusCode::OK).await;
    each(
        &bases[..1],
        "GET",
        "/notes",
        &limited,
        3,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // No token is verified here: nobody's usage.
    each(
        &bases,
        "GET",
        "/notes",
        "tg_not_a_token",
        3,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let read =
        |id: &str| -> Value { serde_json::from_str(&tokengate(&["usage", id, "--json"])).unwrap() };
    // Each process flushes on its own: wait for all three.
    let usage = until(
        |u| summed(u).0 == 30 && summed(u).1 == json!({"insufficient_scope": 6}),
        || read(&reader_id),
    )
    .await;
    assert_eq!(usage["token_id"], reader_id.as_str());
    let (admitted, refused, last) = summed(&usage);
    assert_eq!(admitted, 30, "every process's admitted requests: {usage}");
    assert_eq!(refused, json!({"insufficient_scope": 6}), "{usage}");
    assert_eq!(last, "127.0.0.1");
    let start = usage["buckets"][0]["start"].as_str().unwrap();
    assert!(start.ends_with(":00:00.000Z"), "an hour's start: {start}");

    let usage = until(
        |u| summed(u).0 == 2 && summed(u).1 == json!({"rate_limited": 3}),
        || read(&limited_id),
    )
    .await;
    let (admitted, refused, _) = summed(&usage);
    assert_eq!(admitted, 2);
    assert_eq!(refused, json!({"rate_limited": 3}), "{usage}");

    let ranked = json!([
        {"token_id": busy_id, "admitted": 45, "refused": 0},
        {"token_id": reader_id, "admitted": 30, "refused": 6},
        {"token_id": limited_id, "admitted": 2, "refused": 3},
    ]);
    let top = until(
        |t| *t == ranked,
        || {
            serde_json::from_str(&tokengate(&[
                "usage", "--top", "3", "--since", "2h", "--json",
            ]))
            .unwrap()
        },
    )
    .await;
    assert_eq!(top, ranked, "most requests first");

    // The admin API serves the same (its own calls are the admin token's).
    let (status, body) = send_with(
        &bases[0],
        "GET",
        &format!("/admin/tokens/{reader_id}/usage?since_seconds=7200"),
        &[("authorization", &format!("Bearer {admin}"))],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summed(&body).0, 30, "{body}");
    assert_eq!(summed(&body).1, json!({"insufficient_scope": 6}));
    let (status, body) = send_with(
        &bases[0],
        "GET",
        &format!("/admin/tokens/{reader_id}/usage?since_seconds=-1"),
        &[("authorization", &format!("Bearer {admin}"))],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The table, and requests counted on the way out: SIGTERM flushes.
    let table = tokengate(&["usage", &reader_id]);
    assert!(table.starts_with("HOUR (UTC)"), "{table}");
    assert!(table.contains("insufficient_scope=6"), "{table}");
    each(&bases[1..2], "GET", "/notes", &reader, 4, StatusCode::OK).await;
    for server in servers.iter_mut() {
        assert!(server.terminate(), "a clean shutdown");
    }
    let usage = read(&reader_id);
    assert_eq!(summed(&usage).0, 34, "counted before the shutdown: {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_sqlite_file_count_every_tokens_requests() {
    let dir = temp_dir("axum-notes-usage");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let mut servers = vec![start_example_with(
        bin,
        &dir,
        "axum-notes listening on ",
        &[FLAGS, &["--pre-auth-rate", "100000"]].concat(),
    )];
    servers.extend((1..3).map(|i| {
        let audit = format!("audit-{i}.jsonl");
        let flags = [FLAGS, &["--pre-auth-rate", "100000", "--audit-log", &audit]].concat();
        start_example_with(bin, &dir, "axum-notes listening on ", &flags)
    }));
    count_across(&mut servers, |args| cli(bin, &db, args).trim().to_owned()).await;
    let missing = std::process::Command::new(tokengate_tests::process::tokengate_cli(bin))
        .args([
            "--db",
            db.to_str().unwrap(),
            "usage",
            "tok_0000000000000000",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no token with id"),
        "{missing:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_postgres_database_count_every_tokens_requests() {
    let Some(mut deployment) =
        support::Deployment::start_with_flags("axum-notes-usage-pg", FLAGS).await
    else {
        return;
    };
    let pg = deployment.clone_cli();
    count_across(&mut deployment.servers, |args| pg(args)).await;
    deployment.stop().await;
}
