//! axum-notes as a process, driven by a real HTTP client; a revocation made
//! by the `tokengate` CLI in another process takes effect within a second;
//! the audit file then holds one record per request and no secret.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The `tokengate` CLI built beside this binary (built on demand when this
/// test runs alone).
fn cli() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_axum-notes"))
        .parent()
        .unwrap()
        .to_owned();
    let path = dir.join("tokengate");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "tokengate-cli"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

struct Server {
    child: Child,
    base: String,
    token: String,
    token_id: String,
}

impl Drop for Server {
    /// A failing test must not leave the server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::zombie_processes, reason = "the child is reaped by Server's Drop")]
fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-notes"))
        .current_dir(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("TOKENGATE_PEPPER")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut token, mut token_id) = (String::new(), String::new());
    loop {
        let line = lines
            .next()
            .expect("the server stopped before listening")
            .unwrap();
        if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
            token = t.to_owned();
        }
        if let Some(rest) = line.split(" revoke ").nth(1) {
            token_id = rest.trim().to_owned();
        }
        if let Some(addr) = line.strip_prefix("axum-notes listening on ") {
            std::thread::spawn(move || lines.for_each(drop));
            return Server {
                child,
                base: addr.to_owned(),
                token,
                token_id,
            };
        }
    }
}

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
    let dir = std::env::temp_dir().join(format!("axum-notes-process-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = start(&dir);
    let (base, token) = (server.base.clone(), server.token.clone());
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
    let issued = Command::new(cli())
        .args([
            "--db",
            db.to_str().unwrap(),
            "issue",
            "--name",
            "t",
            "--subject",
            "s",
            "--scope",
            "notes:read",
            "--audience",
            "notes",
            "--json",
        ])
        .env_remove("TOKENGATE_PEPPER")
        .output()
        .unwrap();
    assert!(issued.status.success());
    let second: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    let second = second["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call("GET", "/notes", Some(second.clone()), "").await,
        StatusCode::OK
    );

    let revoked = Command::new(cli())
        .args(["--db", db.to_str().unwrap(), "revoke", &server.token_id])
        .env_remove("TOKENGATE_PEPPER")
        .status()
        .unwrap();
    assert!(revoked.success());
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

    // Stop gracefully: the audit queue is flushed.
    let stopped = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(server.child.wait().unwrap().success());
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().count(),
        requests,
        "one record per request:\n{audit}"
    );
    for secret in [&token, &second] {
        for window in secret.as_bytes().windows(8) {
            assert!(
                !audit.contains(std::str::from_utf8(window).unwrap()),
                "a token fragment is in the audit log"
            );
        }
    }
    let verified = Command::new(cli())
        .args(["audit", "verify", dir.join("audit.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&verified.stdout).starts_with(&format!("ok: {requests} records"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
