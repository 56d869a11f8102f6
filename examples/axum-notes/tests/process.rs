//! axum-notes as a process, driven by a real HTTP client; a revocation made
//! by the `tokengate` CLI in another process takes effect within a second;
//! the audit file then holds one record per request and no secret.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokengate_tests::process::{
    assert_no_fragment, cli, cli_issue, start_example, start_example_with, temp_dir,
};

mod support;

use support::{Deployment, issue_limited, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_use_revoke_from_another_process_then_audit() {
    let dir = temp_dir("axum-notes-process");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example(bin, &dir, "axum-notes listening on ");
    let (base, token) = (server.addr.clone(), server.token.clone());
    assert!(token.starts_with("tg_"), "the demo token was printed");

    let mut requests = 0;
    let mut call =
        |method: &'static str, path: &'static str, token: Option<String>, body: &'static str| {
            requests += 1;
            let base = base.clone();
            async move { send(&base, method, path, token.as_deref(), body).await }
        };
    assert_eq!(call("GET", "/healthz", None, "").await, StatusCode::OK);
    assert_eq!(
        call("GET", "/notes", Some(token.clone()), "").await,
        StatusCode::OK
    );
    assert_eq!(
        call("POST", "/notes", Some(token.clone()), r#"{"text":"hi"}"#).await,
        StatusCode::CREATED
    );
    assert_eq!(
        call("DELETE", "/notes/1", Some(token.clone()), "").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("GET", "/notes", None, "").await,
        StatusCode::UNAUTHORIZED
    );

    // Another process issues a token and revokes the demo one.
    let db = dir.join("tokengate.db");
    let second = cli_issue(bin, &db, "t", "s", "notes:read");
    assert_eq!(
        call("GET", "/notes", Some(second.clone()), "").await,
        StatusCode::OK
    );

    cli(bin, &db, &["revoke", &server.token_id]);
    let since = Instant::now();
    loop {
        let status = call("GET", "/notes", Some(token.clone()), "").await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "still {status} a second after revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call("GET", "/notes", Some(second.clone()), "").await,
        StatusCode::OK
    );

    // Stop as docker, systemd and Kubernetes do: the audit queue is flushed.
    assert!(server.terminate(), "a clean shutdown on SIGTERM");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().count(),
        requests,
        "one record per request:\n{audit}"
    );
    assert_no_fragment(&audit, &token);
    assert_no_fragment(&audit, &second);
    let verified = cli(
        bin,
        &db,
        &["audit", "verify", dir.join("audit.jsonl").to_str().unwrap()],
    );
    assert!(
        verified.starts_with(&format!("ok: {requests} records")),
        "{verified}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs axum-notes in `dir` with `args` until it exits; its exit status
/// and standard error.
fn run_to_exit(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_axum-notes"))
        .current_dir(dir)
        .args(args)
        .env_remove("TOKENGATE_PEPPER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_port_or_a_bad_flag_fails_before_writing_anything() {
    let first_dir = temp_dir("axum-notes-first");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut first = start_example(bin, &first_dir, "axum-notes listening on ");
    let second_dir = temp_dir("axum-notes-second");
    let taken = first.addr.trim_start_matches("http://");
    let (ok, stderr) = run_to_exit(&second_dir, &["--listen", taken]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
    assert!(
        files_in(&second_dir).is_empty(),
        "{:?}",
        files_in(&second_dir)
    );

    for bad in [
        &["--allow-ip", "10.0.0.0/33"][..],
        &["--trusted-proxy", "proxy.example"],
        &["--pre-auth-rate", "0"],
        &["--audience", "has space"],
        &["--audit-overflow", "dorp"],
        &["--audit-capacity", "0"],
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(bad);
        let (ok, stderr) = run_to_exit(&second_dir, &args);
        assert!(!ok, "{bad:?}");
        // The server's own checks, or clap's for a value it parses.
        assert!(
            stderr.starts_with("axum-notes: ") || stderr.starts_with("error: invalid value"),
            "{bad:?}: {stderr}"
        );
        assert!(
            stderr.contains(bad[0]) || stderr.contains(bad[1]),
            "names the flag or the value: {stderr}"
        );
        assert!(
            files_in(&second_dir).is_empty(),
            "{bad:?} left {:?}",
            files_in(&second_dir)
        );
    }
    assert!(first.terminate());
    std::fs::remove_dir_all(&first_dir).unwrap();
    std::fs::remove_dir_all(&second_dir).unwrap();
}

/// A token for `notes:read` limited to 10 a minute with `burst`, issued by
/// the CLI on `db` (`global` holds `--pepper-file FILE` for PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_and_redis_give_a_token_its_quota_once() {
    let Some(deployment) = Deployment::start("axum-notes-shared-rate").await else {
        return;
    };
    let bases = &deployment.bases;

    // 30 requests, round robin over the three: exactly the burst passes.
    let token = deployment.issue("round-robin", 10);
    let mut admitted = 0;
    for i in 0..30 {
        let status = send(&bases[i % 3], "GET", "/notes", Some(&token), "").await;
        if status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(admitted, 10, "one quota across three servers");

    // 64 at once across the three: exactly the burst again.
    let token = deployment.issue("concurrent", 10);
    let requests = (0..64).map(|i| {
        let (base, token) = (bases[i % 3].clone(), token.clone());
        tokio::spawn(async move { send(&base, "GET", "/notes", Some(&token), "").await })
    });
    let mut admitted = 0;
    for request in requests.collect::<Vec<_>>() {
        if request.await.unwrap() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "64 concurrent requests, one burst");

    // The tokens are in PostgreSQL, the buckets in Redis.
    let listed = deployment.cli(&["list", "--json"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let (keys, _) = deployment.redis_keys().await;
    assert!(!keys.is_empty(), "the servers kept their buckets in Redis");
    deployment.stop().await;
}

/// Sends to `base` until the token is refused; when that was.
async fn first_refusal(base: String, token: String) -> Instant {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let status = send(&base, "GET", "/notes", Some(&token), "").await;
        if status == StatusCode::UNAUTHORIZED {
            return Instant::now();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < give_up,
            "the revocation never reached {base}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::print_stdout,
    reason = "the test prints the latency distribution"
)]
async fn a_revocation_by_the_cli_reaches_three_servers_within_100_ms_at_p99() {
    let Some(deployment) = Deployment::start("axum-notes-revocation").await else {
        return;
    };
    let cli_bin = tokengate_tests::process::tokengate_cli(env!("CARGO_BIN_EXE_axum-notes"));
    let mut latencies = Vec::new();
    for trial in 0..20 {
        let token = deployment.issue(&format!("trial-{trial}"), 1000);
        // Cached on every server first: the revocation must reach the caches.
        for base in &deployment.bases {
            assert_eq!(
                send(base, "GET", "/notes", Some(&token), "").await,
                StatusCode::OK
            );
        }
        let id = deployment.token_id(&token);
        let pollers: Vec<_> = deployment
            .bases
            .iter()
            .map(|base| tokio::spawn(first_refusal(base.clone(), token.clone())))
            .collect();
        let revoked = tokio::task::spawn_blocking({
            let (cli_bin, url, pepper) = (
                cli_bin.clone(),
                deployment.db.url().to_owned(),
                deployment.pepper.clone(),
            );
            move || {
                let out = std::process::Command::new(cli_bin)
                    .args(["--db", &url, "--pepper-file", &pepper, "revoke", &id])
                    .env_remove("TOKENGATE_PEPPER")
                    .output()
                    .unwrap();
                let exited = Instant::now();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                exited
            }
        })
        .await
        .unwrap();
        for poller in pollers {
            let refused = poller.await.unwrap();
            latencies.push(refused.saturating_duration_since(revoked));
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "revocation -> refusal on each of 3 servers (from the CLI's exit; 0 = refused before it had exited), {} samples: min {:.2} ms, p50 {:.2} ms, \
         p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(latencies[0]),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies[latencies.len() - 1]),
    );
    assert_eq!(latencies.len(), 60);
    assert!(
        percentile(&latencies, 99.0) <= Duration::from_millis(100),
        "p99 {:?}",
        percentile(&latencies, 99.0)
    );
    deployment.stop().await;
}

/// How many feed connections the test database has.
async fn feeds(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&tokengate::postgres::FEED_APPLICATION],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_reconnect_and_a_revocation_meanwhile_takes_effect() {
    let Some(deployment) = Deployment::start("axum-notes-pg-killed").await else {
        return;
    };
    let keep = deployment.issue("keep", 1000);
    let revoke = deployment.issue("revoke", 1000);
    for base in &deployment.bases {
        assert_eq!(
            send(base, "GET", "/notes", Some(&keep), "").await,
            StatusCode::OK
        );
        assert_eq!(
            send(base, "GET", "/notes", Some(&revoke), "").await,
            StatusCode::OK
        );
    }
    let postgres = deployment.postgres().await;
    assert_eq!(feeds(&postgres).await, 3, "one feed connection per server");

    // Every server connection (pools and feeds) killed, then a revocation
    // behind the servers' backs before the feeds can listen again.
    postgres
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND application_name IN ('tokengate', 'tokengate-feed')",
        )
        .await
        .unwrap();
    let id = deployment.token_id(&revoke);
    postgres
        .execute(
            "UPDATE tokengate_tokens SET revoked_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();

    // The feeds come back, flush, and the revocation holds everywhere; the
    // other token keeps working throughout.
    let give_up = Instant::now() + Duration::from_secs(10);
    while feeds(&postgres).await < 3 {
        assert!(Instant::now() < give_up, "the feeds never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for base in &deployment.bases {
        let refused = first_refusal(base.clone(), revoke.clone()).await;
        assert!(refused < give_up);
        assert_eq!(
            send(base, "GET", "/notes", Some(&keep), "").await,
            StatusCode::OK
        );
    }
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_redis_is_down_serves_with_local_limits() {
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let dir = temp_dir("axum-notes-redis-down");
    // Nothing listens on port 1: every call fails, the server still serves.
    let flags = ["--redis", "redis://127.0.0.1:1"];
    let server = start_example_with(bin, &dir, "axum-notes listening on ", &flags);
    let db = dir.join("tokengate.db");
    let token = issue_limited(bin, db.to_str().unwrap(), &[], "limited", 3);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(&server.addr, "GET", "/notes", Some(&token), "")
                .await
                .as_u16(),
        );
    }
    // The default policy (Local): the instance's own limits hold.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `GET`/`POST` on `path` with `token` until it answers `want`, at
/// most `bound` after `since`.
async fn answers_within(
    base: &str,
    (method, path, body): (&str, &str, &str),
    token: &str,
    want: StatusCode,
    bound: Duration,
) {
    let since = Instant::now();
    loop {
        let status = send(base, method, path, Some(token), body).await;
        if status == want {
            return;
        }
        assert!(
            since.elapsed() < bound,
            "{method} {path} still {status}, {bound:?} after the change (wanted {want})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_scope_and_a_disable_reach_the_server_within_a_second() {
    let dir = temp_dir("axum-notes-update");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example(bin, &dir, "axum-notes listening on ");
    let (base, token, id) = (
        server.addr.clone(),
        server.token.clone(),
        server.token_id.clone(),
    );
    let db = dir.join("tokengate.db");
    let post = ("POST", "/notes", r#"{"text":"hi"}"#);
    let get = ("GET", "/notes", "");
    assert_eq!(
        send(&base, post.0, post.1, Some(&token), post.2).await,
        StatusCode::CREATED
    );

    // Narrowed by another process: the write is refused within the bound.
    let shown = cli(
        bin,
        &db,
        &["update", &id, "--remove-scope", "notes:write", "--json"],
    );
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(
        shown["scopes"],
        serde_json::json!(["notes:read"]),
        "{shown}"
    );
    let second = Duration::from_secs(1);
    answers_within(&base, post, &token, StatusCode::FORBIDDEN, second).await;
    assert_eq!(
        send(&base, get.0, get.1, Some(&token), "").await,
        StatusCode::OK
    );

    // A scope the servers never registered is refused, and nothing changes.
    let refused = std::process::Command::new(tokengate_tests::process::tokengate_cli(bin))
        .arg("--db")
        .arg(&db)
        .args(["update", &id, "--add-scope", "notes:wirte"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("did you mean notes:write"), "{said}");

    // Disabled: 401 like a revoked token; enabled: served again.
    cli(bin, &db, &["disable", &id]);
    answers_within(&base, get, &token, StatusCode::UNAUTHORIZED, second).await;
    let listed = cli(bin, &db, &["list", "--status", "disabled", "--json"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&id), "{listed}");
    cli(bin, &db, &["enable", &id]);
    answers_within(&base, get, &token, StatusCode::OK, second).await;

    assert!(server.terminate(), "a clean shutdown");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains(r#""tokengate.reason":"token_disabled""#),
        "{audit}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_scope_and_a_disable_reach_three_servers_on_postgres_within_100_ms() {
    let Some(deployment) = Deployment::start("axum-notes-update-pg").await else {
        return;
    };
    let token = deployment.cli(&[
        "issue",
        "--name",
        "writer",
        "--subject",
        "team-a",
        "--scope",
        "notes:read",
        "--scope",
        "notes:write",
        "--audience",
        "notes",
    ]);
    let id = deployment.token_id(&token);
    let post = |base: &str| {
        let (base, token) = (base.to_owned(), token.clone());
        async move { send(&base, "POST", "/notes", Some(&token), r#"{"text":"hi"}"#).await }
    };
    let get = |base: &str| {
        let (base, token) = (base.to_owned(), token.clone());
        async move { send(&base, "GET", "/notes", Some(&token), "").await }
    };
    // Cached on every server first: the change must reach the caches.
    for base in &deployment.bases {
        assert_eq!(post(base).await, StatusCode::CREATED);
    }
    let bound = Duration::from_millis(100);

    deployment.cli(&["update", &id, "--remove-scope", "notes:write"]);
    tokio::time::sleep(bound).await;
    for base in &deployment.bases {
        assert_eq!(post(base).await, StatusCode::FORBIDDEN, "{base}");
        assert_eq!(get(base).await, StatusCode::OK, "{base}");
    }

    deployment.cli(&["disable", &id]);
    tokio::time::sleep(bound).await;
    for base in &deployment.bases {
        assert_eq!(get(base).await, StatusCode::UNAUTHORIZED, "{base}");
    }
    deployment.cli(&["enable", &id]);
    tokio::time::sleep(bound).await;
    for base in &deployment.bases {
        assert_eq!(get(base).await, StatusCode::OK, "{base}");
    }
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pepper_rotation_keeps_old_tokens_working_and_moves_them_on_first_use() {
    let dir = temp_dir("axum-notes-pepper");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example(bin, &dir, "axum-notes listening on ");
    let db = dir.join("tokengate.db");
    let demo = server.token.clone();
    let idle = cli_issue(bin, &db, "idle", "s", "notes:read");
    assert_eq!(
        send(&server.addr, "GET", "/notes", Some(&demo), "").await,
        StatusCode::OK
    );

    let rotated = cli(bin, &db, &["pepper", "rotate"]);
    assert!(
        rotated.starts_with("key 2 is current; 2 tokens under key 1"),
        "{rotated}"
    );
    let pepper_file = std::fs::read_to_string(dir.join("tokengate.db.pepper")).unwrap();
    assert_eq!(pepper_file.lines().count(), 2, "both peppers are kept");
    // Restarted, as the rotation says to: old tokens still work and move.
    assert!(server.terminate());
    let server = start_example(bin, &dir, "axum-notes listening on ");
    assert_eq!(
        send(&server.addr, "GET", "/notes", Some(&demo), "").await,
        StatusCode::OK
    );
    let fresh = cli_issue(bin, &db, "fresh", "s", "notes:read");
    assert_eq!(
        send(&server.addr, "GET", "/notes", Some(&fresh), "").await,
        StatusCode::OK
    );
    let status = cli(bin, &db, &["pepper", "status"]);
    assert!(status.contains("key 2: current, 2 tokens"), "{status}");
    assert!(status.contains("key 1: previous, 1 tokens"), "{status}");

    // Key 1 cannot be retired while the idle token is under it...
    let refused = std::process::Command::new(tokengate_tests::process::tokengate_cli(bin))
        .arg("--db")
        .arg(&db)
        .args(["pepper", "retire", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("1 tokens are still hashed under key 1")
    );
    // ...until its first use moves it.
    assert_eq!(
        send(&server.addr, "GET", "/notes", Some(&idle), "").await,
        StatusCode::OK
    );
    assert!(cli(bin, &db, &["pepper", "status"]).contains("key 1: previous, 0 tokens"));
    assert_eq!(
        cli(bin, &db, &["pepper", "retire", "1"]).trim(),
        "retired key 1"
    );
    let mut server = server;
    assert!(server.terminate());
    let mut server = start_example(bin, &dir, "axum-notes listening on ");
    for token in [&demo, &idle, &fresh] {
        assert_eq!(
            send(&server.addr, "GET", "/notes", Some(token), "").await,
            StatusCode::OK
        );
    }
    assert!(server.terminate());
    std::fs::remove_dir_all(&dir).unwrap();
}
