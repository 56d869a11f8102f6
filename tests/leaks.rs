//! The secret-scanning receivers on a real port, with reports signed in
//! the test (P-256), key sets served by a local server, and the tokens in
//! a real SQLite file or PostgreSQL database.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{HttpClient, Reply, serve_axum};
use tokengate::core::TokenStatus;
use tokengate::deployment::Database;
use tokengate::leaks::{LeakNotice, SecretScanning};
use tokengate::store::LeakAction;
use tokengate::{Deployment, TokenId, TokenSpec};
use tokengate_tests::leaks::{KeyServer, Signer};

struct Setup {
    deployment: Deployment,
    client: HttpClient,
    keys: KeyServer,
    current: Signer,
    old: Signer,
    notices: Arc<Mutex<Vec<LeakNotice>>>,
    dir: std::path::PathBuf,
}

impl Setup {
    async fn new(name: &str, database: Option<Database>, action: LeakAction) -> Self {
        let dir = tokengate_tests::process::temp_dir(name);
        let mut builder = match database {
            Some(database) => Deployment::builder(database).pepper_file(dir.join("pepper")),
            None => Deployment::builder(Database::Sqlite(dir.join("tokens.db"))),
        };
        builder = builder.audit_log(dir.join("audit.jsonl"));
        let deployment = builder.open().await.unwrap();
        let current = Signer::new("current-key", 7);
        let old = Signer::new("old-key", 9);
        let keys = KeyServer::start(&[(&current, true), (&old, false)]).await;
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&notices);
        let receivers = SecretScanning::new(deployment.lifecycle.clone())
            .github_keys(keys.url.parse().unwrap())
            .gitlab_keys(keys.url.parse().unwrap())
            .gitlab_revocation_token("gitlab-shared-secret")
            .action(action)
            .audit(deployment.audit.clone())
            .notify(move |notice: LeakNotice| {
                let seen = Arc::clone(&seen);
                async move { seen.lock().unwrap().push(notice) }
            })
            .body_limit(64 * 1024)
            .max_tokens(50)
            .key_refresh(Duration::from_secs(3600))
            .router();
        let client = HttpClient::new(serve_axum(receivers).await);
        Self {
            deployment,
            client,
            keys,
            current,
            old,
            notices,
            dir,
        }
    }

    async fn issue(&self, name: &str) -> (String, TokenId) {
        let issued = self
            .deployment
            .lifecycle
            .issue(
                TokenSpec::new(name, "team-a")
                    .scopes(["notes:read".parse().unwrap()])
                    .audiences(["notes".parse().unwrap()]),
            )
            .await
            .unwrap();
        (
            issued.token.expose_secret().to_owned(),
            issued.record.id.clone(),
        )
    }

    async fn status(&self, id: &TokenId) -> TokenStatus {
        let record = self.deployment.lifecycle.get(id).await.unwrap().unwrap();
        record.status(std::time::SystemTime::now())
    }

    /// A GitHub report of `tokens` signed with the current key.
    async fn report(&self, tokens: &[&str]) -> Reply {
        self.post(
            "/leaks/github",
            "Github",
            &self.current,
            &github_report(tokens),
        )
        .await
    }

    async fn post(&self, path: &str, provider: &str, signer: &Signer, body: &str) -> Reply {
        let signature = signer.sign(body.as_bytes());
        self.post_signed(path, provider, &signer.id, &signature, body)
            .await
    }

    async fn post_signed(
        &self,
        path: &str,
        provider: &str,
        key_id: &str,
        signature: &str,
        body: &str,
    ) -> Reply {
        let id_header = format!("{provider}-Public-Key-Identifier");
        let signature_header = format!("{provider}-Public-Key-Signature");
        self.client
            .send(
                "POST",
                path,
                &[
                    (id_header.as_str(), key_id),
                    (signature_header.as_str(), signature),
                    ("x-request-id", "report-1"),
                ],
                body,
            )
            .await
    }

    /// The audit file's records, once the sink has written them.
    fn audit_records(&self) -> Vec<Value> {
        self.deployment.audit.flush();
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    async fn finish(self) {
        self.deployment.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn github_report(tokens: &[&str]) -> String {
    let entries: Vec<Value> = tokens
        .iter()
        .map(|token| {
            json!({
                "token": token,
                "type": "tokengate_api_token",
                "url": "https://github.com/octo/app/blob/abc123/.env#L2",
                "source": "content",
            })
        })
        .collect();
    Value::Array(entries).to_string()
}

/// A signed GitHub report with a live, a revoked, an unknown and a
/// malformed token: the live one is revoked, the feedback labels the two
/// the store knows true positives, each distinct token has one audit
/// record without the token, the owner hook hears of the live one; the
/// same report again changes nothing and answers the same.
async fn a_signed_report_revokes_the_live_token(setup: Setup) {
    let (live, live_id) = setup.issue("leaky").await;
    let (revoked, revoked_id) = setup.issue("old").await;
    setup
        .deployment
        .lifecycle
        .revoke(&revoked_id)
        .await
        .unwrap();
    let unknown = tokengate::core::TokenFormat::default().generate();
    let unknown = unknown.expose_secret().to_owned();
    let body = github_report(&[&live, &revoked, &unknown, "not-a-token", &live]);

    let reply = setup
        .post("/leaks/github", "Github", &setup.current, &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let feedback: Value = serde_json::from_str(&reply.body).unwrap();
    let labels: Vec<&str> = feedback
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "true_positive"
        ]
    );
    assert_eq!(feedback[0]["token_hash"], sha256_hex(&live).as_str());
    assert_eq!(feedback[0]["token_type"], "tokengate_api_token");
    assert!(feedback[0].get("token_raw").is_none());
    assert!(!reply.body.contains(&live[3..]));

    assert_eq!(setup.status(&live_id).await, TokenStatus::Revoked);
    let record = setup
        .deployment
        .lifecycle
        .get(&live_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.metadata.get("leaked_at").map(String::as_str),
        Some("https://github.com/octo/app/blob/abc123/.env#L2")
    );
    assert_eq!(
        record.metadata.get("leak_reported_by").map(String::as_str),
        Some("github")
    );

    // One record per distinct token, in order; never a token.
    let records = setup.audit_records();
    let leaks: Vec<&Value> = records
        .iter()
        .filter(|r| r["tokengate.event"] == "leak_reported")
        .collect();
    let outcomes: Vec<&str> = leaks
        .iter()
        .map(|r| r["tokengate.leak.outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["revoked", "already_dead", "unknown", "unknown"]);
    assert_eq!(leaks[0]["tokengate.token_id"], live_id.as_str());
    assert_eq!(leaks[0]["tokengate.leak.reporter"], "github");
    assert_eq!(
        leaks[0]["tokengate.leak.source"],
        "https://github.com/octo/app/blob/abc123/.env#L2"
    );
    assert_eq!(leaks[0]["http.request.id"], "report-1");
    assert_eq!(leaks[0]["client.address"], "127.0.0.1");
    assert!(leaks[2].get("tokengate.token_id").is_none());
    let written = std::fs::read_to_string(setup.dir.join("audit.jsonl")).unwrap();
    for token in [&live, &revoked, &unknown] {
        assert!(!written.contains(&token[3..]), "a token in the audit file");
    }

    // The owner hook heard of the live token only (off the request: wait
    // for the queue's worker).
    for _ in 0..100 {
        if !setup.notices.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        let notices = setup.notices.lock().unwrap();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].token_id, live_id);
        assert_eq!(notices[0].subject, "team-a");
        assert_eq!(notices[0].reporter, "github");
    }

    // The same report again: the same answer, nothing more done.
    let again = setup
        .post("/leaks/github", "Github", &setup.current, &body)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, reply.body);
    assert_eq!(setup.status(&live_id).await, TokenStatus::Revoked);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(setup.notices.lock().unwrap().len(), 1);

    // A key listed but not current still verifies.
    let (other, other_id) = setup.issue("other").await;
    let reply = setup
        .post(
            "/leaks/github",
            "Github",
            &setup.old,
            &github_report(&[&other]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(setup.status(&other_id).await, TokenStatus::Revoked);
    setup.finish().await;
}

#[tokio::test]
async fn a_signed_github_report_revokes_a_live_sqlite_token_and_answers_feedback() {
    let setup = Setup::new("leaks-sqlite", None, LeakAction::Revoke).await;
    a_signed_report_revokes_the_live_token(setup).await;
}

#[tokio::test]
async fn a_signed_github_report_revokes_a_live_postgres_token_and_answers_feedback() {
    let Some(database) = tokengate_postgres::testing::TestDatabase::create().await else {
        return;
    };
    let setup = Setup::new(
        "leaks-postgres",
        Some(database.url().parse().unwrap()),
        LeakAction::Revoke,
    )
    .await;
    a_signed_report_revokes_the_live_token(setup).await;
    drop(database);
}

#[tokio::test]
async fn unsigned_mis_signed_unknown_key_and_tampered_reports_change_nothing() {
    let setup = Setup::new("leaks-refused", None, LeakAction::Revoke).await;
    let (live, live_id) = setup.issue("leaky").await;
    let body = github_report(&[&live]);
    let stranger = Signer::new("current-key", 11);
    let hits = setup.keys.hits();

    // No signature headers at all.
    let reply = setup.client.send("POST", "/leaks/github", &[], &body).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.body.contains("leak-report-unsigned"),
        "{}",
        reply.body
    );
    // Signed by another key under a listed key id.
    let reply = setup
        .post("/leaks/github", "Github", &stranger, &body)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("bad-signature"), "{}", reply.body);
    // A valid signature of another body: a replayed signature, a changed body.
    let other = github_report(&["tg_nothing"]);
    let signature = setup.current.sign(other.as_bytes());
    let reply = setup
        .post_signed("/leaks/github", "Github", "current-key", &signature, &body)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Garbage for a signature.
    let reply = setup
        .post_signed(
            "/leaks/github",
            "Github",
            "current-key",
            "%%%not base64",
            &body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A key id the set does not list: one fetch to learn of it, and no
    // more within the refresh interval however many come.
    let unknown = Signer::new("rotated-in", 13);
    for _ in 0..5 {
        let reply = setup.post("/leaks/github", "Github", &unknown, &body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.body.contains("unknown-key"), "{}", reply.body);
    }
    assert_eq!(
        setup.keys.hits(),
        hits + 1,
        "one fetch; unknown ids within the refresh interval fetch nothing more"
    );
    assert_eq!(setup.status(&live_id).await, TokenStatus::Active);

    // Over the size bound; malformed JSON; too many tokens: verified
    // first, then refused, nothing revoked.
    let huge = format!("[{}]", "\"x\",".repeat(20_000));
    let reply = setup
        .post("/leaks/github", "Github", &setup.current, &huge)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Its body was not read: the answer closes the connection, so the
    // client's next request goes on a new one and is not lost.
    assert_eq!(reply.headers["connection"], "close");
    let reply = setup
        .post("/leaks/github", "Github", &setup.current, "{\"token\":")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.headers["content-type"], "application/problem+json",
        "{}",
        reply.body
    );
    let many: Vec<String> = (0..51).map(|i| format!("tg_{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let reply = setup
        .post(
            "/leaks/github",
            "Github",
            &setup.current,
            &github_report(&many),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(setup.status(&live_id).await, TokenStatus::Active);

    // Nothing of it in the audit file, and no token in any answer.
    assert!(
        setup
            .audit_records()
            .iter()
            .all(|r| r.get("tokengate.event").is_none())
    );
    assert!(setup.notices.lock().unwrap().is_empty());
    setup.finish().await;
}

#[tokio::test]
async fn keys_are_fetched_again_for_a_new_key_id_and_a_down_key_server_is_503() {
    let setup = Setup::new("leaks-keys", None, LeakAction::Revoke).await;
    let (live, live_id) = setup.issue("leaky").await;
    // The key server is down before the first report: retry later.
    setup.keys.set_down(true);
    let reply = setup.report(&[&live]).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.headers["retry-after"], "60");
    assert_eq!(setup.status(&live_id).await, TokenStatus::Active);
    setup.finish().await;

    // Up, with a key rotated in after the first fetch: a short refresh
    // interval lets the receiver learn of it.
    let dir = tokengate_tests::process::temp_dir("leaks-rotated");
    let deployment = Deployment::builder(Database::Sqlite(dir.join("tokens.db")))
        .audit_log(dir.join("audit.jsonl"))
        .open()
        .await
        .unwrap();
    let first = Signer::new("k1", 21);
    let keys = KeyServer::start(&[(&first, true)]).await;
    let client = HttpClient::new(
        serve_axum(
            SecretScanning::new(deployment.lifecycle.clone())
                .github_keys(keys.url.parse().unwrap())
                .key_refresh(Duration::from_millis(1))
                .router(),
        )
        .await,
    );
    let issued = deployment
        .lifecycle
        .issue(
            TokenSpec::new("x", "team-b")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()]),
        )
        .await
        .unwrap();
    let body = github_report(&[issued.token.expose_secret()]);
    let send = |signer: Signer| {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let signature = signer.sign(body.as_bytes());
            client
                .send(
                    "POST",
                    "/leaks/github",
                    &[
                        ("Github-Public-Key-Identifier", signer.id.as_str()),
                        ("Github-Public-Key-Signature", signature.as_str()),
                    ],
                    &body,
                )
                .await
        }
    };
    let second = Signer::new("k2", 23);
    assert_eq!(send(second.clone()).await.status, StatusCode::UNAUTHORIZED);
    keys.add(&second, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reply = send(second).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("true_positive"));
    deployment.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn gitlab_reports_and_its_revocation_api_act_like_githubs() {
    let setup = Setup::new("leaks-gitlab", None, LeakAction::Revoke).await;
    let (live, live_id) = setup.issue("leaky").await;
    let body = json!([{"type": "tokengate_api_token", "token": live, "url": "https://gitlab.com/g/p/-/blob/main/x"}])
        .to_string();
    // GitHub's headers on GitLab's receiver: unsigned there.
    let reply = setup
        .post("/leaks/gitlab", "Github", &setup.current, &body)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(setup.status(&live_id).await, TokenStatus::Active);
    let reply = setup
        .post("/leaks/gitlab", "Gitlab", &setup.current, &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let feedback: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(setup.status(&live_id).await, TokenStatus::Revoked);

    // The self-managed token revocation API, behind GitLab's shared token.
    let types = setup
        .client
        .send(
            "GET",
            "/leaks/gitlab/v1/revocable_token_types",
            &[("authorization", "gitlab-shared-secret")],
            "",
        )
        .await;
    assert_eq!(types.status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&types.body).unwrap(),
        json!({"types": ["tokengate_api_token"]})
    );
    let (second, second_id) = setup.issue("second").await;
    let body = json!([{"type": "tokengate_api_token", "token": second, "url": "https://gitlab.example/x"}])
        .to_string();
    for wrong in ["", "Bearer nope", "gitlab-shared-secre"] {
        let reply = setup
            .client
            .send(
                "POST",
                "/leaks/gitlab/v1/revoke_tokens",
                &[("authorization", wrong)],
                &body,
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        // Refused before its body was read: the connection closes.
        assert_eq!(reply.headers["connection"], "close");
    }
    assert_eq!(setup.status(&second_id).await, TokenStatus::Active);
    let reply = setup
        .client
        .send(
            "POST",
            "/leaks/gitlab/v1/revoke_tokens",
            &[("authorization", "Bearer gitlab-shared-secret")],
            &body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(setup.status(&second_id).await, TokenStatus::Revoked);
    setup.finish().await;
}

#[tokio::test]
async fn disable_and_notify_actions_do_what_they_say() {
    let setup = Setup::new("leaks-disable", None, LeakAction::Disable).await;
    let (live, live_id) = setup.issue("leaky").await;
    let reply = setup.report(&[&live]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(setup.status(&live_id).await, TokenStatus::Disabled);
    setup.finish().await;

    let setup = Setup::new("leaks-notify", None, LeakAction::Notify).await;
    let (live, live_id) = setup.issue("leaky").await;
    let reply = setup.report(&[&live]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("true_positive"));
    assert_eq!(setup.status(&live_id).await, TokenStatus::Active);
    let records = setup.audit_records();
    let leak = records
        .iter()
        .find(|r| r["tokengate.event"] == "leak_reported")
        .unwrap();
    assert_eq!(leak["tokengate.leak.outcome"], "notified");
    for _ in 0..100 {
        if !setup.notices.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(setup.notices.lock().unwrap().len(), 1);
    setup.finish().await;
}
