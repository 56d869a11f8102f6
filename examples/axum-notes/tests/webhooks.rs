//! Lifecycle webhooks end to end: `tokengate webhooks add`, tokens issued,
//! revoked and rotated with the CLI, and three axum-notes on one SQLite
//! file posting the outbox to a local receiver that checks every
//! signature: each event arrives exactly once. Then a receiver that is
//! down, then answers 503, then 200: the event is retried and delivered,
//! the log and the metrics say so.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokengate_tests::process::{cli, start_example_with, temp_dir};

/// What the receiver saw: each post's body, and whether its signature held.
#[derive(Default)]
struct Seen {
    posts: Vec<(Value, bool)>,
    /// Statuses to answer, first to last (200 once they run out).
    answers: Vec<StatusCode>,
}

type Shared = Arc<(Mutex<Seen>, String)>;

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get(tokengate::webhooks::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signed = tokengate::webhooks::verify(
        &shared.1,
        signature,
        &body,
        SystemTime::now(),
        Duration::from_secs(300),
    )
    .is_ok();
    let json = headers
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    let mut seen = shared.0.lock().unwrap();
    seen.posts.push((
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed && json,
    ));
    if seen.answers.is_empty() {
        StatusCode::OK
    } else {
        seen.answers.remove(0)
    }
}

/// A receiver on `addr` for deliveries signed with `secret`.
async fn receiver(addr: SocketAddr, secret: &str, answers: Vec<StatusCode>) -> Shared {
    let shared: Shared = Arc::new((
        Mutex::new(Seen {
            posts: Vec::new(),
            answers,
        }),
        secret.to_owned(),
    ));
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    shared
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first post of event type `kind` (the test fails without one).
fn post_of<'a>(posts: &'a [(Value, bool)], kind: &str) -> &'a (Value, bool) {
    posts.iter().find(|(body, _)| body["type"] == kind).unwrap()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn issue_with(tokengate: &dyn Fn(&[&str]) -> String, name: &str) -> String {
    let args = [
        "issue",
        "--name",
        name,
        "--subject",
        "team-w",
        "--scope",
        "notes:read",
        "--audience",
        "notes",
    ];
    tokengate(&args).trim().to_owned()
}

/// Three servers on one store post each of eight events once, signed.
async fn post_each_event_once(tokengate: &dyn Fn(&[&str]) -> String) {
    let addr = free_addr();
    let url = format!("http://{addr}/hook");
    let added = tokengate(&[
        "webhooks",
        "add",
        &url,
        "--events",
        "issued,revoked,token.rotated",
    ]);
    let secret = added
        .lines()
        .find_map(|l| l.strip_prefix("signing secret (shown once): "))
        .expect("the secret is printed once")
        .trim()
        .to_owned();
    let hook_id = added.split_whitespace().nth(1).unwrap().to_owned();
    let seen = receiver(addr, &secret, Vec::new()).await;
    let listed = tokengate(&["webhooks", "list"]);
    assert!(
        listed.contains(&hook_id) && listed.contains(&url),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "never the secret: {listed}");

    let tokens: Vec<String> = (0..5)
        .map(|i| issue_with(tokengate, &format!("hooked-{i}")))
        .collect();
    let ids: Vec<String> = tokens
        .iter()
        .map(|t| support::token_id_by(tokengate, t))
        .collect();
    tokengate(&["revoke", &ids[0]]);
    tokengate(&["revoke", &ids[1]]);
    tokengate(&["rotate", &ids[2]]);
    // Not subscribed: no delivery.
    tokengate(&["disable", &ids[3]]);

    until("eight deliveries", || {
        seen.0.lock().unwrap().posts.len() >= 8
    })
    .await;
    // Three servers poll every 200 ms: a second post would come by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = seen.0.lock().unwrap().posts.clone();
    assert_eq!(posts.len(), 8, "each event once: {posts:?}");
    assert!(
        posts.iter().all(|(_, signed)| *signed),
        "every signature holds"
    );
    let mut event_ids: Vec<&str> = posts
        .iter()
        .map(|(b, _)| b["id"].as_str().unwrap())
        .collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 8, "eight distinct events");
    let of = |kind: &str| -> Vec<String> {
        let mut ids: Vec<String> = posts
            .iter()
            .filter(|(b, _)| b["type"] == kind)
            .map(|(b, _)| b["data"]["token_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut issued = ids.clone();
    issued.sort();
    assert_eq!(of("token.issued"), issued);
    let mut revoked = vec![ids[0].clone(), ids[1].clone()];
    revoked.sort();
    assert_eq!(of("token.revoked"), revoked);
    assert_eq!(of("token.rotated"), [ids[2].clone()]);
    let rotated = post_of(&posts, "token.rotated");
    assert!(
        rotated.0["data"]["replacement_id"]
            .as_str()
            .unwrap()
            .starts_with("tok_")
    );
    assert!(rotated.0["created"].as_u64().unwrap() > 1_700_000_000);
    for (body, _) in &posts {
        let text = body.to_string();
        assert!(
            tokens.iter().all(|t| !text.contains(t.as_str())),
            "never a token: {text}"
        );
    }

    let log = tokengate(&["webhooks", "log", "--json"]);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{log}");
    assert!(
        lines
            .iter()
            .all(|d| d["state"] == "delivered" && d["attempts"] == 1 && d["last_status"] == 200),
        "{log}"
    );
    assert!(
        tokengate(&["webhooks", "log", "--failed", "--json"])
            .trim()
            .is_empty()
    );
    tokengate(&["webhooks", "remove", &hook_id]);
    assert!(!tokengate(&["webhooks", "list"]).contains(&hook_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_post_each_event_once_signed() {
    let dir = temp_dir("axum-notes-webhooks");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let flags = |audit: &'static str| ["--webhook-poll", "200ms", "--audit-log", audit];
    let mut servers = vec![start_example_with(
        bin,
        &dir,
        "axum-notes listening on ",
        &flags("audit.jsonl"),
    )];
    for audit in ["audit-1.jsonl", "audit-2.jsonl"] {
        servers.push(start_example_with(
            bin,
            &dir,
            "axum-notes listening on ",
            &flags(audit),
        ));
    }
    post_each_event_once(&|args| cli(bin, &db, args)).await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_post_each_event_once_signed() {
    let Some(deployment) = support::Deployment::start_with_flags(
        "axum-notes-webhooks-pg",
        &["--webhook-poll", "200ms"],
    )
    .await
    else {
        return;
    };
    let tokengate = deployment.clone_cli();
    post_each_event_once(&|args| tokengate(args)).await;
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_failing_gets_the_event_when_it_is_back() {
    let dir = temp_dir("axum-notes-webhooks-down");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let admin_addr = free_addr().to_string();
    let server = start_example_with(
        bin,
        &dir,
        "axum-notes listening on ",
        &["--webhook-poll", "200ms", "--admin-listen", &admin_addr],
    );
    let admin = server
        .output
        .iter()
        .find_map(|line| line.split(" on ").nth(1).filter(|_| line.contains("admin")))
        .expect("the admin address was printed")
        .trim()
        .to_owned();
    let addr = free_addr();
    let secret = "a-signing-secret-from-a-file-0123456789";
    let secret_file = dir.join("hook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let added = cli(
        bin,
        &db,
        &[
            "webhooks",
            "add",
            &format!("http://{addr}/hook"),
            "--events",
            "issued,revoked",
            "--secret-file",
            secret_file.to_str().unwrap(),
        ],
    );
    assert!(
        !added.contains("signing secret"),
        "a given secret is not printed: {added}"
    );

    let token = issue_with(&|args| cli(bin, &db, args), "waiting");
    let id = support::token_id_by(&|args| cli(bin, &db, args), &token);
    // Nobody listens: the first attempt fails and is kept for later.
    until("a failed attempt in the log", || {
        cli(bin, &db, &["webhooks", "log", "--failed", "--json"]).contains("\"attempts\":1")
    })
    .await;
    let failed: Value =
        serde_json::from_str(cli(bin, &db, &["webhooks", "log", "--failed", "--json"]).trim())
            .unwrap();
    assert_eq!(failed["state"], "pending", "{failed}");
    assert_eq!(failed["last_status"], Value::Null);

    // Back, but answering 503 once: retried again, then delivered.
    let seen = receiver(addr, secret, vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    until("the delivery after the 503", || {
        seen.0.lock().unwrap().posts.len() >= 2
    })
    .await;
    let posts = seen.0.lock().unwrap().posts.clone();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].0["id"], posts[1].0["id"], "the same event again");
    assert_eq!(posts[1].0["data"]["token_id"], id.as_str());
    assert!(posts.iter().all(|(_, signed)| *signed));
    until("the log to say delivered", || {
        cli(bin, &db, &["webhooks", "log", "--json"]).contains("\"delivered\"")
    })
    .await;
    let log: Value =
        serde_json::from_str(cli(bin, &db, &["webhooks", "log", "--json"]).trim()).unwrap();
    assert_eq!(log["last_status"], 200);
    let attempts = log["attempts"].as_u64().unwrap();
    assert!(attempts >= 3, "refused, 503, 200: {log}");

    let metrics = support::send_with(&admin, "GET", "/metrics", &[], "")
        .await
        .1;
    let count = |result: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tokengate_webhook_deliveries_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("retried"), attempts - 1, "{metrics}");
    assert_eq!(count("delivered"), 1, "{metrics}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_and_spent_tokens_are_told_once_by_two_scanning_servers() {
    let dir = temp_dir("axum-notes-webhooks-scan");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    // Polled every 100 ms: each server scans the tokens every second.
    let flags = |audit: &'static str| ["--webhook-poll", "100ms", "--audit-log", audit];
    let servers = [
        start_example_with(bin, &dir, "axum-notes listening on ", &flags("audit.jsonl")),
        start_example_with(
            bin,
            &dir,
            "axum-notes listening on ",
            &flags("audit-1.jsonl"),
        ),
    ];
    let addr = free_addr();
    let added = cli(
        bin,
        &db,
        &[
            "webhooks",
            "add",
            &format!("http://{addr}/hook"),
            "--events",
            "expiring,uses_threshold,uses_exhausted",
        ],
    );
    let secret = added
        .lines()
        .find_map(|l| l.strip_prefix("signing secret (shown once): "))
        .unwrap()
        .trim()
        .to_owned();
    let seen = receiver(addr, &secret, Vec::new()).await;
    let args = [
        "issue",
        "--name",
        "short-lived",
        "--subject",
        "team-w",
        "--scope",
        "notes:read",
        "--audience",
        "notes",
        "--ttl",
        "1d",
        "--uses",
        "5",
    ];
    let token = cli(bin, &db, &args).trim().to_owned();
    let id = support::token_id_by(&|args| cli(bin, &db, args), &token);
    let of = |kind: &str| -> usize {
        seen.0
            .lock()
            .unwrap()
            .posts
            .iter()
            .filter(|(b, _)| b["type"] == kind && b["data"]["token_id"] == id.as_str())
            .count()
    };
    until("token.expiring", || of("token.expiring") == 1).await;

    let base = &servers[0].addr;
    for _ in 0..4 {
        let status = support::send(base, "GET", "/notes", Some(&token), "").await;
        assert_eq!(status, hyper::StatusCode::OK);
    }
    until("token.uses_threshold", || of("token.uses_threshold") == 1).await;
    assert_eq!(of("token.uses_exhausted"), 0, "one use is left");
    let status = support::send(base, "GET", "/notes", Some(&token), "").await;
    assert_eq!(status, hyper::StatusCode::OK);
    until("token.uses_exhausted", || of("token.uses_exhausted") == 1).await;

    // Both servers scanned every second meanwhile: each event once (the
    // demo token of the first start expires within the window too).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let posts: Vec<(Value, bool)> = seen.0.lock().unwrap().posts.clone();
    assert!(posts.iter().all(|(_, signed)| *signed));
    let posts: Vec<_> = posts
        .into_iter()
        .filter(|(b, _)| b["data"]["token_id"] == id.as_str())
        .collect();
    assert_eq!(posts.len(), 3, "{posts:?}");
    let exhausted = post_of(&posts, "token.uses_exhausted");
    assert_eq!(exhausted.0["data"]["uses_remaining"], "0");
    let expiring = post_of(&posts, "token.expiring");
    assert!(
        expiring.0["data"]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // A reset is a new count: its exhaustion is told again.
    cli(bin, &db, &["reset-uses", &id, "--remaining", "1"]);
    let status = support::send(base, "GET", "/notes", Some(&token), "").await;
    assert_eq!(status, hyper::StatusCode::OK);
    until("a second token.uses_exhausted", || {
        of("token.uses_exhausted") == 2
    })
    .await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
