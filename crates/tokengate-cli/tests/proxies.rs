//! `tokengate serve` behind real proxies, beside an in-process Gate built
//! from the same policy file: one table of requests, the same answers.
//!
//! Targets, each with an upstream that echoes what it received:
//! - `in-process`: an axum service with `Deployment::gate_from_config`;
//! - `nginx`: nginx (`auth_request`) with `examples/sidecar/nginx.conf`;
//! - `caddy`: Caddy (`forward_auth`) with `examples/sidecar/Caddyfile`.
//!
//! nginx and Caddy come from Debian's packages; a machine without them
//! skips their targets with one printed line, unless
//! `TOKENGATE_REQUIRE_SERVICES=1` (CI), which fails instead.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

mod sidecar;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::Value;
use sidecar::{Answer, Fixture, Target};

/// Who the upstream was told the caller is.
fn identity(answer: &Answer) -> (String, String) {
    (
        answer.upstream_header("x-tokengate-subject"),
        answer.upstream_header("x-tokengate-scopes"),
    )
}

/// A client address the test policy denies (`deny = ["127.0.0.2/32"]`).
const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Every row of the refusal table a proxy can carry, and the admitted
/// cases, against `target`; the answers in order.
async fn table(fixture: &Fixture, target: &Target) -> Vec<(String, Answer)> {
    let mut answers = Vec::new();
    let mut row = |name: &str, answer: Answer| answers.push((name.to_owned(), answer));
    let read = fixture.issue(&target.name, "reader", &["--scope", "notes:read"]);
    let public = target
        .get("/healthz")
        .header("x-tokengate-subject", "evil")
        .send()
        .await;
    row("public route, no token, a forged identity", public);
    let admitted = target
        .get("/notes")
        .bearer(&read)
        .header("x-tokengate-subject", "evil")
        .header("x-tokengate-scopes", "notes:admin")
        .send()
        .await;
    row("read token, a forged identity", admitted);
    row("no token", target.get("/notes").send().await);
    row(
        "unknown token",
        target
            .get("/notes")
            .bearer("tg_000000000000000000000000000000001YrmTe")
            .send()
            .await,
    );
    row(
        "missing scope",
        target.request("POST", "/notes").bearer(&read).send().await,
    );
    row(
        "missing admin scope",
        target
            .request("DELETE", "/notes/1")
            .bearer(&read)
            .send()
            .await,
    );
    row(
        "undeclared route",
        target.get("/admin").bearer(&read).send().await,
    );
    row(
        "denied client address",
        target.get("/notes").from(DENIED).bearer(&read).send().await,
    );
    let elsewhere = fixture.issue(
        &target.name,
        "elsewhere",
        &["--scope", "notes:read", "--allow-ip", "10.0.0.0/8"],
    );
    row(
        "token used outside its networks",
        target.get("/notes").bearer(&elsewhere).send().await,
    );
    row(
        "token in the query",
        target
            .get(&format!("/notes?access_token={read}"))
            .send()
            .await,
    );
    let limited = fixture.issue(
        &target.name,
        "limited",
        &["--scope", "notes:read", "--rate", "1/min", "--burst", "1"],
    );
    row(
        "quota: first",
        target.get("/notes").bearer(&limited).send().await,
    );
    row(
        "quota: spent",
        target.get("/notes").bearer(&limited).send().await,
    );
    let once = fixture.issue(
        &target.name,
        "once",
        &["--scope", "notes:read", "--uses", "1"],
    );
    row(
        "one use: first",
        target.get("/notes").bearer(&once).send().await,
    );
    row(
        "one use: spent for good",
        target.get("/notes").bearer(&once).send().await,
    );
    let daily = fixture.issue(
        &target.name,
        "daily",
        &["--scope", "notes:read", "--uses", "1", "--refill", "1/1d"],
    );
    row(
        "refilled use: first",
        target.get("/notes").bearer(&daily).send().await,
    );
    row(
        "refilled use: spent until the refill",
        target.get("/notes").bearer(&daily).send().await,
    );
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_answer_as_the_in_process_gate_for_every_row() {
    let fixture = Fixture::new("table").await;
    let targets = fixture.targets().await;
    let expected = table(&fixture, &targets[0]).await;

    // What the in-process Gate answers, row by row.
    let by_name = |name: &str| &expected.iter().find(|(n, _)| n == name).unwrap().1;
    let public = by_name("public route, no token, a forged identity");
    assert_eq!(public.status, 200);
    assert_eq!(identity(public), (String::new(), String::new()));
    let admitted = by_name("read token, a forged identity");
    assert_eq!(admitted.status, 200);
    assert_eq!(
        identity(admitted),
        ("reader".to_owned(), "notes:read".to_owned())
    );
    assert!(
        admitted.header("ratelimit").starts_with("\"per-token\";r="),
        "{admitted:?}"
    );
    let none = by_name("no token");
    assert_eq!(
        (none.status, none.header("www-authenticate")),
        (
            401,
            "Bearer realm=\"tokengate\", DPoP algs=\"ES256 EdDSA\"".to_owned()
        )
    );
    assert_eq!(none.problem(), "urn:tokengate:problem:missing-token");
    let unknown = by_name("unknown token");
    assert_eq!(unknown.status, 401);
    assert!(
        unknown
            .header("www-authenticate")
            .contains("error=\"invalid_token\"")
    );
    let scope = by_name("missing scope");
    assert_eq!(scope.status, 403);
    assert!(
        scope
            .header("www-authenticate")
            .contains("error=\"insufficient_scope\", scope=\"notes:write\"")
    );
    assert_eq!(
        scope.body["missing_scopes"],
        serde_json::json!(["notes:write"])
    );
    assert_eq!(by_name("missing admin scope").status, 403);
    assert_eq!(by_name("undeclared route").status, 403);
    let denied = by_name("denied client address");
    assert_eq!(
        (denied.status, denied.problem()),
        (403, "urn:tokengate:problem:ip-forbidden".to_owned())
    );
    assert_eq!(by_name("token used outside its networks").status, 401);
    let query = by_name("token in the query");
    assert_eq!(
        (query.status, query.problem()),
        (400, "urn:tokengate:problem:invalid-request".to_owned())
    );
    assert_eq!(by_name("quota: first").status, 200);
    let spent = by_name("quota: spent");
    assert_eq!(spent.status, 429);
    assert!(!spent.header("retry-after").is_empty());
    assert!(
        spent.header("ratelimit-policy").contains("q=1;w=60"),
        "{spent:?}"
    );
    assert_eq!(by_name("one use: first").status, 200);
    let gone = by_name("one use: spent for good");
    assert_eq!(
        (gone.status, gone.header("token-uses-remaining")),
        (403, "0".to_owned())
    );
    assert_eq!(gone.problem(), "urn:tokengate:problem:usage-exhausted");
    let later = by_name("refilled use: spent until the refill");
    assert_eq!(
        (later.status, later.header("token-uses-remaining")),
        (429, "0".to_owned())
    );
    assert!(!later.header("retry-after").is_empty());

    // Every proxy in front of `tokengate serve`: the same answers.
    for target in &targets[1..] {
        let answers = table(&fixture, target).await;
        for ((row, want), (_, got)) in expected.iter().zip(&answers) {
            let what = format!("{} / {row}", target.name);
            assert_eq!(got.status, want.status, "{what}: {got:?}");
            assert_eq!(
                identity(got),
                identity(want),
                "{what}: the identity at the upstream"
            );
            for name in [
                "www-authenticate",
                "ratelimit-policy",
                "token-uses-remaining",
                "content-type",
            ] {
                assert_eq!(got.header(name), want.header(name), "{what}: {name}");
            }
            for name in ["retry-after", "ratelimit"] {
                assert_eq!(
                    got.header(name).is_empty(),
                    want.header(name).is_empty(),
                    "{what}: {name}"
                );
            }
            if want.status != 200 {
                assert_eq!(got.problem_body(), want.problem_body(), "{what}: the body");
            }
            // nginx's auth_request keeps one WWW-Authenticate: /auth/nginx
            // sends the challenges (Bearer, DPoP) joined in one, the same
            // text as the Gate's two.
            let challenges = want.header_count("www-authenticate");
            let expected_count = if target.name == "nginx" {
                challenges.min(1)
            } else {
                challenges
            };
            assert_eq!(
                got.header_count("www-authenticate"),
                expected_count,
                "{what}"
            );
        }
        println!(
            "{}: {} rows answered as in-process",
            target.name,
            answers.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_by_the_cli_is_refused_through_each_proxy_within_a_second() {
    let fixture = Fixture::new("revoke").await;
    for target in fixture.targets().await.iter().skip(1) {
        let token = fixture.issue(&target.name, "revoked", &["--scope", "notes:read"]);
        assert_eq!(target.get("/notes").bearer(&token).send().await.status, 200);
        let id = fixture.token_id(&token);
        fixture.cli(&["revoke", &id]);
        let revoked = Instant::now();
        loop {
            let answer = target.get("/notes").bearer(&token).send().await;
            if answer.status == 401 {
                break;
            }
            assert_eq!(answer.status, 200);
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "{}: still admitted a second after the revocation",
                target.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_leaves_one_audit_record_with_the_original_request() {
    let fixture = Fixture::new("audit").await;
    let targets = fixture.targets().await;
    let Some(nginx) = targets.iter().find(|t| t.name == "nginx") else {
        return;
    };
    let token = fixture.issue("nginx", "audited", &["--scope", "notes:read"]);
    let before = fixture.serve_audit_lines().len();
    assert_eq!(
        nginx
            .get("/notes?page=2")
            .bearer(&token)
            .send()
            .await
            .status,
        200
    );
    assert_eq!(
        nginx
            .request("POST", "/notes")
            .bearer(&token)
            .send()
            .await
            .status,
        403
    );
    assert_eq!(nginx.get("/notes").from(DENIED).send().await.status, 403);
    let records = fixture.wait_for_serve_audit(before + 3).await;
    let new: Vec<&Value> = records[before..].iter().collect();
    assert_eq!(new.len(), 3, "{new:?}");
    assert_eq!(
        (
            new[0]["http.request.method"].as_str(),
            new[0]["url.path"].as_str()
        ),
        (Some("GET"), Some("/notes"))
    );
    assert_eq!(new[0]["url.query"].as_str(), Some("page=REDACTED"));
    assert_eq!(new[0]["client.address"].as_str(), Some("127.0.0.1"));
    assert_eq!(new[0]["http.response.status_code"].as_u64(), Some(200));
    assert_eq!(new[0]["enduser.id"].as_str(), Some("audited"));
    assert_eq!(
        (
            new[1]["http.request.method"].as_str(),
            new[1]["http.response.status_code"].as_u64()
        ),
        (Some("POST"), Some(403))
    );
    // The address nginx reported, not nginx's own.
    assert_eq!(new[2]["client.address"].as_str(), Some("127.0.0.2"));
    let text = std::fs::read_to_string(fixture.serve_audit()).unwrap();
    assert!(!text.contains(&token[3..]), "no token in the audit file");
}
