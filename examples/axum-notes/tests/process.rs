//! axum-notes as a process, driven by a real HTTP client; a revocation made
//! by the `tokengate` CLI in another process takes effect within a second;
//! the audit file then holds one record per request and no secret.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokengate_tests::process::{
    assert_no_fragment, cli, cli_issue, start_example, start_example_with, temp_dir,
};

async fn send(base: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

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
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(bad);
        let (ok, stderr) = run_to_exit(&second_dir, &args);
        assert!(!ok, "{bad:?}");
        assert!(stderr.starts_with("axum-notes: "), "{bad:?}: {stderr}");
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
/// the CLI.
fn issue_limited(bin: &str, db: &std::path::Path, name: &str, burst: u32) -> String {
    let burst = burst.to_string();
    let quota = ["--rate", "10/min", "--burst", &burst];
    let scope = ["--scope", "notes:read", "--audience", "notes"];
    let args = [
        &["issue", "--name", name, "--subject", "team-a"][..],
        &scope,
        &quota,
    ]
    .concat();
    cli(bin, db, &args).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_sharing_redis_give_a_token_its_quota_once() {
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let dir = temp_dir("axum-notes-shared-rate");
    let prefix = format!("tg-notes-{}", std::process::id());
    let servers: Vec<_> = (0..3)
        .map(|i| {
            let audit = format!("audit-{i}.jsonl");
            let flags = [
                "--redis",
                &url,
                "--redis-prefix",
                &prefix,
                "--audit-log",
                &audit,
            ];
            start_example_with(bin, &dir, "axum-notes listening on ", &flags)
        })
        .collect();
    let bases: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let db = dir.join("tokengate.db");
    let issue = |name: &str| issue_limited(bin, &db, name, 10);

    // 30 requests, round robin over the three: exactly the burst passes.
    let token = issue("round-robin");
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
    let token = issue("concurrent");
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

    drop(servers);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the servers kept their buckets in Redis");
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_redis_is_down_serves_with_local_limits() {
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let dir = temp_dir("axum-notes-redis-down");
    // Nothing listens on port 1: every call fails, the server still serves.
    let flags = ["--redis", "redis://127.0.0.1:1"];
    let server = start_example_with(bin, &dir, "axum-notes listening on ", &flags);
    let db = dir.join("tokengate.db");
    let token = issue_limited(bin, &db, "limited", 3);
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
