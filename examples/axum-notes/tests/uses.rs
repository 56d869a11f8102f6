//! Usage-limited tokens across processes: three axum-notes on one SQLite
//! file (the store's atomic decrement), three on one PostgreSQL database
//! (the same), then three on one PostgreSQL database and one Redis
//! (leases in Redis, taken from the store), each
//! admit a token with ten uses exactly ten times between them under 64
//! concurrent requests; the count survives a restart; a reset holds on
//! every server; the audit says `usage_exhausted`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use hyper::StatusCode;
use tokengate_tests::process::{cli, start_example, temp_dir};

use support::{Deployment, send};

const ISSUE: &[&str] = &[
    "issue",
    "--name",
    "metered",
    "--subject",
    "team-a",
    "--scope",
    "notes:read",
    "--audience",
    "notes",
];

/// `count` GET /notes with `token` at once, spread over `bases`; how many
/// were admitted, after checking every other answer is `refused`.
async fn admitted(bases: &[String], token: &str, count: usize, refused: StatusCode) -> usize {
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let (base, token) = (bases[i % bases.len()].clone(), token.to_owned());
            tokio::spawn(async move { send(&base, "GET", "/notes", Some(&token), "").await })
        })
        .collect();
    let mut admitted = 0;
    for request in requests {
        match request.await.unwrap() {
            StatusCode::OK => admitted += 1,
            status => assert_eq!(status, refused),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_sqlite_file_admit_exactly_the_uses_and_a_restart_keeps_the_count() {
    let dir = temp_dir("axum-notes-uses");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let start = |i: usize| support::start_sqlite(bin, &dir, i);
    let mut servers = vec![start_example(bin, &dir, "axum-notes listening on ")];
    servers.extend((1..3).map(start));
    let bases: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();

    let args = [ISSUE, &["--uses", "10"]].concat();
    let token = cli(bin, &db, &args).trim().to_owned();
    assert_eq!(
        admitted(&bases, &token, 64, StatusCode::FORBIDDEN).await,
        10,
        "ten uses across three processes"
    );
    let inspected = cli(bin, &db, &["inspect", &token]);
    let id = inspected
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&cli(bin, &db, &["show", &id, "--json"])).unwrap();
    assert_eq!(shown["uses"]["remaining"], 0, "{shown}");

    // Five more, two spent: three are left, in the file, over a restart.
    cli(bin, &db, &["reset-uses", &id, "--remaining", "5"]);
    for _ in 0..2 {
        assert_eq!(
            send(&bases[0], "GET", "/notes", Some(&token), "").await,
            StatusCode::OK
        );
    }
    for server in &mut servers {
        assert!(server.terminate(), "a clean shutdown");
    }
    let restarted = [start(3)];
    let bases: Vec<String> = restarted.iter().map(|s| s.addr.clone()).collect();
    assert_eq!(
        admitted(&bases, &token, 8, StatusCode::FORBIDDEN).await,
        3,
        "the count left survived the restart"
    );
    drop(restarted);

    let audits: String = (0..4)
        .map(|i| {
            let name = if i == 0 {
                "audit.jsonl".to_owned()
            } else {
                format!("audit-{i}.jsonl")
            };
            std::fs::read_to_string(dir.join(name)).unwrap_or_default()
        })
        .collect();
    let exhausted = audits
        .lines()
        .filter(|l| l.contains(r#""tokengate.reason":"usage_exhausted""#))
        .count();
    assert!(exhausted >= 54, "every refusal audited: {exhausted}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issues a ten-use token on `deployment`, sends 64 requests at once over
/// its three servers, and checks exactly ten were admitted and the store
/// has none left; the token and its id.
async fn ten_of_64(deployment: &Deployment) -> (String, String) {
    let args = [ISSUE, &["--uses", "10"]].concat();
    let token = deployment.cli(&args);
    assert_eq!(
        admitted(&deployment.bases, &token, 64, StatusCode::FORBIDDEN).await,
        10,
        "ten uses across three servers"
    );
    let id = deployment.token_id(&token);
    let shown: serde_json::Value =
        serde_json::from_str(&deployment.cli(&["show", &id, "--json"])).unwrap();
    assert_eq!(shown["uses"]["remaining"], 0, "{shown}");
    (token, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_and_redis_admit_exactly_the_uses() {
    let Some(deployment) = Deployment::start("axum-notes-uses-pg").await else {
        return;
    };
    let (token, id) = ten_of_64(&deployment).await;
    // With --redis the servers spend from a lease there, taken from the
    // store in one write.
    let (keys, _) = deployment.redis_keys().await;
    assert!(
        keys.iter().any(|k| k.contains(&format!(":uses:{id}:0:"))),
        "{keys:?}"
    );

    // A reset holds on every server from the next request.
    deployment.cli(&["reset-uses", &id, "--remaining", "4"]);
    assert_eq!(
        admitted(&deployment.bases, &token, 20, StatusCode::FORBIDDEN).await,
        4
    );
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_without_redis_admit_exactly_the_uses() {
    let Some(deployment) = Deployment::start_without_redis("axum-notes-uses-pg-alone").await else {
        return;
    };
    // Each use spent in the store, one atomic UPDATE each.
    ten_of_64(&deployment).await;
    deployment.stop().await;
}
