//! A leaked token revokes itself on a running axum-notes with
//! `--secret-scanning`: a report signed in the test, against a key set
//! served by a local server, turns the token's next request into 401;
//! the report is audited (its request, and the token's leak record) in
//! one intact chain; unsigned reports change nothing; a flood meets the
//! per-address limit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use hyper::StatusCode;
use serde_json::{Value, json};
use support::send_with as send;
use tokengate_tests::leaks::{KeyServer, Signer};
use tokengate_tests::process::{cli, start_example_with, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_token_is_refused_on_its_next_request() {
    let signer = Signer::new("github-key-1", 5);
    let keys = KeyServer::start(&[(&signer, true)]).await;
    let dir = temp_dir("axum-notes-leaks");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example_with(
        bin,
        &dir,
        "axum-notes listening on ",
        &["--secret-scanning", "--secret-scanning-keys", &keys.url],
    );
    let base = server.addr.clone();
    let token = server.token.clone();
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        send(&base, "GET", "/notes", &auth, "").await.0,
        StatusCode::OK
    );

    let report = json!([{
        "token": token,
        "type": "tokengate_api_token",
        "url": "https://github.com/octo/notes/blob/main/.env",
        "source": "content",
    }])
    .to_string();
    // Unsigned, then signed over another body: 401, the token still works.
    let (status, _) = send(&base, "POST", "/leaks/github", &[], &report).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = signer.sign(b"[]");
    let forged = [
        ("github-public-key-identifier", signer.id.as_str()),
        ("github-public-key-signature", wrong.as_str()),
    ];
    let (status, _) = send(&base, "POST", "/leaks/github", &forged, &report).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&base, "GET", "/notes", &auth, "").await.0,
        StatusCode::OK
    );

    // Signed: revoked, and refused from the next request on.
    let signature = signer.sign(report.as_bytes());
    let signed = [
        ("github-public-key-identifier", signer.id.as_str()),
        ("github-public-key-signature", signature.as_str()),
    ];
    let (status, body) = send(&base, "POST", "/leaks/github", &signed, &report).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let feedback: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    let (status, _) = send(&base, "GET", "/notes", &auth, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A flood of reports from one address meets the receivers' limit per
    // address (5/s, bursts of 20; four reports spent already) before any
    // signature is checked.
    let mut limited = 0;
    for _ in 0..30 {
        if send(&base, "POST", "/leaks/github", &[], "[]").await.0 == StatusCode::TOO_MANY_REQUESTS
        {
            limited += 1;
        }
    }
    assert!((8..=14).contains(&limited), "{limited} of 30 were limited");

    assert!(server.interrupt());
    let _ = server.child.wait();
    let audit = dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains(&token[3..]),
        "the token is in the audit file"
    );
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let leaks: Vec<&Value> = records
        .iter()
        .filter(|r| r["tokengate.event"] == "leak_reported")
        .collect();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0]["tokengate.leak.outcome"], "revoked");
    assert_eq!(leaks[0]["tokengate.token_id"], server.token_id.as_str());
    assert_eq!(leaks[0]["client.address"], "127.0.0.1");
    assert_eq!(
        leaks[0]["tokengate.leak.source"],
        "https://github.com/octo/notes/blob/main/.env"
    );
    // The report's own request record, public and allowed.
    let reports: Vec<&Value> = records
        .iter()
        .filter(|r| r["url.path"] == "/leaks/github" && r["http.response.status_code"] == 200)
        .collect();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["tokengate.decision"], "allow");
    let verified = cli(
        bin,
        dir.join("tokengate.db"),
        &["audit", "verify", audit.to_str().unwrap()],
    );
    assert!(verified.starts_with("ok: "), "{verified}");
    let shown = cli(bin, dir.join("tokengate.db"), &["show", &server.token_id]);
    assert!(
        shown.contains("leaked_at=https://github.com/octo/notes/blob/main/.env"),
        "{shown}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
