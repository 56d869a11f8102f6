//! Usage-limited tokens across processes: three axum-notes on one SQLite
//! file (the store's atomic decrement), three on one PostgreSQL database
//! (the same), then three on one PostgreSQL database and one Redis
//! (leases in Redis, taken from the store), each
//! admit a token with ten uses exactly ten times between them under 64
//! concurrent requests; the count survives a restart; a reset holds on
//! every server; the audit says `usage_exhausted`. An export costs ten
//! uses, atomically, on every store and with Redis leases beside it, and
//! its `RateLimit` and `token-uses-remaining` count in those units.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use hyper::StatusCode;
use tokengate_tests::process::{cli, start_example, temp_dir};

use support::{Deployment, exchange, send};

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
    admitted_at(bases, "/notes", token, count, refused).await
}

/// The id of `token` in the SQLite file `db`, after checking the file
/// holds none of its uses.
fn spent_in_file(bin: &str, db: &std::path::Path, token: &str) -> String {
    let id = cli(bin, db, &["inspect", token])
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&cli(bin, db, &["show", &id, "--json"])).unwrap();
    assert_eq!(shown["uses"]["remaining"], 0, "{shown}");
    id
}

/// [`admitted`] for GET `path`.
async fn admitted_at(
    bases: &[String],
    path: &'static str,
    token: &str,
    count: usize,
    refused: StatusCode,
) -> usize {
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let (base, token) = (bases[i % bases.len()].clone(), token.to_owned());
            tokio::spawn(async move { send(&base, "GET", path, Some(&token), "").await })
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
    let id = spent_in_file(bin, &db, &token);

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

/// The `token-uses-remaining` and `RateLimit` remaining of GET `path`.
async fn left_after(base: &str, path: &str, token: &str) -> (StatusCode, Option<u64>, String) {
    let bearer = format!("Bearer {token}");
    let (status, headers, _) = exchange(base, "GET", path, &[("authorization", &bearer)], "").await;
    let uses = headers
        .get("token-uses-remaining")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let rate = headers
        .get("ratelimit")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, uses, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_sqlite_file_charge_an_export_ten_uses_and_ten_of_the_quota() {
    let dir = temp_dir("axum-notes-cost");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let db = dir.join("tokengate.db");
    let mut servers = vec![start_example(bin, &dir, "axum-notes listening on ")];
    servers.extend((1..3).map(|i| support::start_sqlite(bin, &dir, i)));
    let bases: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();

    // 100 uses are ten exports, across three processes, under 64 at once.
    let wide = ["--rate", "1000/s", "--burst", "1000"];
    let token = cli(bin, &db, &[ISSUE, &["--uses", "100"], &wide].concat())
        .trim()
        .to_owned();
    assert_eq!(
        admitted_at(&bases, "/notes/export", &token, 64, StatusCode::FORBIDDEN).await,
        10,
        "ten exports of ten uses"
    );
    let id = spent_in_file(bin, &db, &token);

    // What is left is told in uses; an export never takes less than ten.
    cli(bin, &db, &["reset-uses", &id, "--remaining", "15"]);
    assert_eq!(
        left_after(&bases[1], "/notes/export", &token).await.1,
        Some(5)
    );
    let (status, _, _) = left_after(&bases[2], "/notes/export", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "5 left, 10 asked");
    for left in (0..5).rev() {
        let (status, told, _) = left_after(&bases[0], "/notes", &token).await;
        assert_eq!(
            (status, told),
            (StatusCode::OK, Some(left)),
            "the 5 serve plain reads"
        );
    }

    // The quota counts in the same units: 30 of burst is three exports.
    let quota = ["--rate", "1/min", "--burst", "30"];
    let limited = cli(bin, &db, &[ISSUE, &quota].concat()).trim().to_owned();
    for left in [20, 10, 0] {
        let (status, _, rate) = left_after(&bases[0], "/notes/export", &limited).await;
        assert_eq!(status, StatusCode::OK);
        assert!(rate.contains(&format!(";r={left};")), "{rate}");
    }
    let (status, _, _) = left_after(&bases[0], "/notes/export", &limited).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for server in &mut servers {
        assert!(server.terminate(), "a clean shutdown");
    }
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(audit.contains(r#""tokengate.reason":"rate_limited""#));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_and_redis_never_admit_more_than_the_uses_at_mixed_costs() {
    let Some(deployment) = Deployment::start("axum-notes-cost-pg").await else {
        return;
    };
    let token = deployment.cli(
        &[
            ISSUE,
            &["--uses", "100", "--rate", "1000/s", "--burst", "1000"],
        ]
        .concat(),
    );
    // Exports (10, from the store) and reads (1, from Redis leases) at once.
    let mut requests = Vec::new();
    for i in 0..96 {
        let base = deployment.bases[i % 3].clone();
        let (token, path) = (
            token.clone(),
            if i % 3 == 0 {
                "/notes/export"
            } else {
                "/notes"
            },
        );
        requests.push(tokio::spawn(async move {
            (path, send(&base, "GET", path, Some(&token), "").await)
        }));
    }
    let mut spent = 0;
    for request in requests {
        match request.await.unwrap() {
            (path, StatusCode::OK) => spent += if path == "/notes" { 1 } else { 10 },
            (_, status) => assert_eq!(status, StatusCode::FORBIDDEN),
        }
    }
    assert!(spent <= 100, "never more than the uses: {spent}");
    assert!(spent >= 32, "the reads alone fit: {spent}");

    // Exports alone, after a reset: exactly three of 30.
    let id = deployment.token_id(&token);
    deployment.cli(&["reset-uses", &id, "--remaining", "30"]);
    assert_eq!(
        admitted_at(
            &deployment.bases,
            "/notes/export",
            &token,
            30,
            StatusCode::FORBIDDEN
        )
        .await,
        3
    );
    deployment.stop().await;
}
