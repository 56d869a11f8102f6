//! A DPoP-bound token issued by the CLI works on a running axum-notes
//! with no extra flag, with its proof only: the same token as a bearer
//! token, or with another key's proof, is refused and audited.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use hyper::StatusCode;
use serde_json::Value;
use support::send_with as send;
use tokengate::authenticate::dpop::DpopSigner;
use tokengate_tests::process::{audit_reasons, cli, cli_issue_with, start_example_with, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_issued_dpop_bound_token_works_only_with_its_key() {
    let dir = temp_dir("axum-notes-dpop");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example_with(bin, &dir, "axum-notes listening on ", &[]);
    let base = server.addr.clone();
    let db = dir.join("tokengate.db");
    let key = DpopSigner::generate_es256();
    let jkt = key.jkt().to_base64url();
    let token = cli_issue_with(
        bin,
        &db,
        "laptop",
        "alice",
        "notes:read",
        &["--dpop-jkt", &jkt],
    );
    let url = format!("{base}/notes");
    let auth = format!("DPoP {token}");

    let proof = key.proof("GET", &url, &token, None);
    let (status, body) = send(
        &base,
        "GET",
        "/notes",
        &[("authorization", &auth), ("dpop", &proof)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same proof again: a replay.
    let (status, _) = send(
        &base,
        "GET",
        "/notes",
        &[("authorization", &auth), ("dpop", &proof)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Copied without the key.
    let bearer = format!("Bearer {token}");
    let (status, _) = send(&base, "GET", "/notes", &[("authorization", &bearer)], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let thief = DpopSigner::generate_ed25519();
    let stolen = thief.proof("GET", &url, &token, None);
    let (status, _) = send(
        &base,
        "GET",
        "/notes",
        &[("authorization", &auth), ("dpop", &stolen)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Shown and listed as bound.
    let listed = cli(bin, &db, &["list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("laptop") && l.contains("dpop")),
        "{listed}"
    );
    let id = listed
        .lines()
        .find(|l| l.contains("laptop"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let shown = cli(bin, &db, &["show", &id]);
    assert!(
        shown.contains(&format!("bound to:  dpop jkt={jkt}")),
        "{shown}"
    );
    // Unbound by the CLI, it is a bearer token again.
    cli(bin, &db, &["update", &id, "--unbind"]);
    let shown = cli(bin, &db, &["show", &id, "--json"]);
    let view: Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(view["dpop_jkt"], Value::Null);

    assert!(server.interrupt());
    let _ = server.child.wait();
    let reasons = audit_reasons(&dir.join("audit.jsonl"), Some("/notes"));
    assert_eq!(
        reasons,
        [
            "-",
            "dpop_replay",
            "dpop_bound_as_bearer",
            "dpop_key_mismatch"
        ]
    );
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(
        !text.contains(&token[3..]),
        "the token is in the audit file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
