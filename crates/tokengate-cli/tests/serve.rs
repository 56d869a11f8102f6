//! `tokengate serve` on its own: the forward-auth contract, Envoy's
//! ext_authz at the gRPC level, reloads, and a bad policy file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

mod sidecar;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{self as core, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use sidecar::{Fixture, Target, serve};

/// `tokengate serve` itself, asked as a proxy would.
fn direct(fixture: &Fixture) -> Target {
    Target::unmanaged("direct", format!("http://{}", fixture.serve_addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_reads_the_original_request_from_either_convention() {
    let fixture = Fixture::new("contract").await;
    let auth = direct(&fixture);
    let token = fixture.issue("direct", "reader", &["--scope", "notes:read"]);

    // Traefik and Caddy: X-Forwarded-Method and X-Forwarded-Uri.
    let ok = auth
        .get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/notes?page=2")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-tokengate-subject"), "reader");
    assert_eq!(ok.header("x-tokengate-scopes"), "notes:read");
    assert!(ok.header("x-tokengate-token-id").starts_with("tok_"));
    assert!(ok.header("ratelimit").starts_with("\"per-token\";r="));
    // nginx: X-Original-Method and X-Original-URI; the method decides.
    let write = auth
        .get("/auth")
        .header("x-original-method", "POST")
        .header("x-original-uri", "/notes")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(write.status, 403);
    assert_eq!(write.problem(), "urn:tokengate:problem:insufficient-scope");
    // A public route: 200, the identity headers empty.
    let public = auth
        .get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/healthz")
        .send()
        .await;
    assert_eq!(
        (public.status, public.header("x-tokengate-subject")),
        (200, String::new())
    );
    assert_eq!(public.header_count("x-tokengate-subject"), 1);
    // The client is who the trusted proxy says: 127.0.0.2 is denied.
    let denied = auth
        .get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/notes")
        .header("x-forwarded-for", "127.0.0.2")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(
        (denied.status, denied.problem()),
        (403, "urn:tokengate:problem:ip-forbidden".to_owned())
    );

    // Without the original request: 400 naming the header to send.
    let no_method = auth
        .get("/auth")
        .header("x-forwarded-uri", "/notes")
        .send()
        .await;
    assert_eq!(no_method.status, 400);
    let detail = no_method.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("X-Forwarded-Method") && detail.contains("X-Original-Method"),
        "{detail}"
    );
    let no_uri = auth
        .get("/auth")
        .header("x-original-method", "GET")
        .send()
        .await;
    assert_eq!(no_uri.status, 400);
    assert!(
        no_uri.body["detail"]
            .as_str()
            .unwrap()
            .contains("X-Original-URI")
    );
    let bad_uri = auth
        .get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "notes")
        .send()
        .await;
    assert_eq!(bad_uri.status, 400);

    // A body the proxy sent is never read: the answer closes the connection.
    let with_body = auth
        .request("POST", "/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/notes")
        .bearer(&token)
        .body("a body")
        .send()
        .await;
    assert_eq!(
        (with_body.status, with_body.header("connection")),
        (200, "close".to_owned())
    );
    assert_eq!(
        ok.header("connection"),
        "",
        "a bodiless check keeps the connection"
    );

    // Envoy's HTTP ext_authz: the original request after /auth/envoy.
    let envoy = auth
        .get("/auth/envoy/notes?page=2")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(
        (envoy.status, envoy.header("x-tokengate-subject")),
        (200, "reader".to_owned())
    );
    let envoy = auth
        .request("DELETE", "/auth/envoy/notes/1")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(
        (envoy.status, envoy.problem()),
        (403, "urn:tokengate:problem:insufficient-scope".to_owned())
    );

    // nginx's endpoint: a 429 becomes 403 with the status and body in headers.
    let limited = fixture.issue(
        "direct",
        "limited",
        &["--scope", "notes:read", "--rate", "1/min", "--burst", "1"],
    );
    let nginx = |path: &str| {
        auth.get("/auth/nginx")
            .header("x-original-method", "GET")
            .header("x-original-uri", path)
    };
    assert_eq!(nginx("/notes").bearer(&limited).send().await.status, 200);
    let spent = nginx("/notes").bearer(&limited).send().await;
    assert_eq!(
        (spent.status, spent.header("x-tokengate-status")),
        (403, "429".to_owned())
    );
    assert!(!spent.header("retry-after").is_empty());
    let problem: serde_json::Value =
        serde_json::from_str(&spent.header("x-tokengate-problem")).unwrap();
    assert_eq!(problem["type"], "urn:tokengate:problem:rate-limited");
    assert_eq!(problem, spent.body);
    let missing = nginx("/notes").send().await;
    assert_eq!(
        (missing.status, missing.header("x-tokengate-status")),
        (401, "401".to_owned())
    );
}

fn check_request(method: &str, path: &str, headers: &[(&str, &str)], source: &str) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(core::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: source.to_owned(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn header<'a>(list: &'a [core::HeaderValueOption], name: &str) -> Option<&'a str> {
    list.iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

async fn check(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    request: CheckRequest,
) -> CheckResponse {
    client.check(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_answers_envoy_with_every_field_it_reads_and_writes() {
    let fixture = Fixture::new("ext-authz").await;
    let token = fixture.issue("grpc", "reader", &["--scope", "notes:read"]);
    let bearer = format!("Bearer {token}");
    let url = format!("http://{}", fixture.grpc_addr);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel.clone());

    // Admitted: the identity replaces the client's, the success headers go to the client.
    let ok = check(
        &mut client,
        check_request(
            "GET",
            "/notes?page=2",
            &[
                ("authorization", &bearer),
                ("x-tokengate-subject", "evil"),
                (":authority", "notes"),
            ],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(allowed)) = ok.http_response else {
        panic!("{ok:?}")
    };
    assert_eq!(
        header(&allowed.headers, "x-tokengate-subject"),
        Some("reader")
    );
    assert_eq!(
        header(&allowed.headers, "x-tokengate-scopes"),
        Some("notes:read")
    );
    assert!(
        header(&allowed.headers, "x-tokengate-token-id")
            .unwrap()
            .starts_with("tok_")
    );
    let overwrite =
        i32::from(core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd);
    assert!(allowed.headers.iter().all(|h| h.append_action == overwrite));
    assert!(
        header(&allowed.response_headers_to_add, "ratelimit")
            .unwrap()
            .starts_with("\"per-token\";r=")
    );
    assert!(header(&allowed.response_headers_to_add, "ratelimit-policy").is_some());
    assert!(header(&allowed.response_headers_to_add, "x-tokengate-subject").is_none());
    // The shipped policy keeps the token for the upstream.
    assert!(
        allowed.headers_to_remove.is_empty(),
        "{:?}",
        allowed.headers_to_remove
    );

    // A public route: admitted, any identity the client sent removed.
    let public = check(
        &mut client,
        check_request(
            "GET",
            "/healthz",
            &[("x-tokengate-subject", "evil")],
            "127.0.0.1",
        ),
    )
    .await;
    let Some(HttpResponse::OkResponse(public)) = public.http_response else {
        panic!()
    };
    assert_eq!(
        public.headers_to_remove,
        [
            "x-tokengate-subject",
            "x-tokengate-token-id",
            "x-tokengate-scopes"
        ]
    );
    assert!(public.headers.is_empty());

    // Refusals: the HTTP answer and the matching gRPC code.
    let cases: [(CheckRequest, u16, i32, &str); 4] = [
        (
            check_request("GET", "/notes", &[], "127.0.0.1"),
            401,
            16,
            "urn:tokengate:problem:missing-token",
        ),
        (
            check_request("POST", "/notes", &[("authorization", &bearer)], "127.0.0.1"),
            403,
            7,
            "urn:tokengate:problem:insufficient-scope",
        ),
        // The source address is the client: 127.0.0.2 is denied.
        (
            check_request("GET", "/notes", &[("authorization", &bearer)], "127.0.0.2"),
            403,
            7,
            "urn:tokengate:problem:ip-forbidden",
        ),
        // A trusted source's X-Forwarded-For names the client.
        (
            check_request(
                "GET",
                "/notes",
                &[("authorization", &bearer), ("x-forwarded-for", "127.0.0.2")],
                "127.0.0.1",
            ),
            403,
            7,
            "urn:tokengate:problem:ip-forbidden",
        ),
    ];
    for (request, http, grpc, problem) in cases {
        let answer = check(&mut client, request).await;
        assert_eq!(answer.status.as_ref().unwrap().code, grpc, "{answer:?}");
        let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response else {
            panic!("{answer:?}")
        };
        assert_eq!(denied.status.unwrap().code, i32::from(http));
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["type"], problem);
        assert_eq!(
            header(&denied.headers, "content-type"),
            Some("application/problem+json")
        );
        if http == 401 {
            assert_eq!(
                header(&denied.headers, "www-authenticate"),
                Some("Bearer realm=\"tokengate\"")
            );
        }
    }
    let limited = fixture.issue(
        "grpc",
        "limited",
        &["--scope", "notes:read", "--rate", "1/min", "--burst", "1"],
    );
    let limited = format!("Bearer {limited}");
    let first = check(
        &mut client,
        check_request("GET", "/notes", &[("authorization", &limited)], "127.0.0.1"),
    )
    .await;
    assert_eq!(first.status.unwrap().code, 0);
    let spent = check(
        &mut client,
        check_request("GET", "/notes", &[("authorization", &limited)], "127.0.0.1"),
    )
    .await;
    assert_eq!(spent.status.as_ref().unwrap().code, 8);
    let Some(HttpResponse::DeniedResponse(denied)) = spent.http_response else {
        panic!()
    };
    assert_eq!(denied.status.unwrap().code, 429);
    assert!(header(&denied.headers, "retry-after").is_some());

    // Headers as raw values (Envoy's `encode_raw_headers`), in header_map.
    let mut raw = check_request("GET", "/notes", &[], "127.0.0.1");
    if let Some(http) = raw
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.header_map = Some(core::HeaderMap {
            headers: vec![core::HeaderValue {
                key: "authorization".to_owned(),
                value: String::new(),
                raw_value: bearer.clone().into_bytes(),
            }],
        });
    }
    let raw = check(&mut client, raw).await;
    let Some(HttpResponse::OkResponse(raw)) = raw.http_response else {
        panic!("{raw:?}")
    };
    assert_eq!(header(&raw.headers, "x-tokengate-subject"), Some("reader"));

    // A check naming no source address: the connection's peer is the client.
    let mut sourceless = check_request("GET", "/notes", &[("authorization", &bearer)], "");
    if let Some(attributes) = sourceless.attributes.as_mut() {
        attributes.source = None;
    }
    assert_eq!(check(&mut client, sourceless).await.status.unwrap().code, 0);

    // A check without an HTTP request: 400 and INVALID_ARGUMENT, never a panic.
    let empty = check(&mut client, CheckRequest::default()).await;
    assert_eq!(empty.status.unwrap().code, 3);

    // The standard health service answers on the same connection.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(serving.into_inner().status, 1, "SERVING");

    // Each check left one audit record, with the path Envoy sent.
    // (The check without an HTTP request was no check.)
    let records = fixture.wait_for_serve_audit(10).await;
    assert_eq!(records.len(), 10, "{records:?}");
    assert_eq!(records[9]["client.address"].as_str(), Some("127.0.0.1"));
    assert_eq!(records[0]["url.path"].as_str(), Some("/notes"));
    assert_eq!(records[0]["url.query"].as_str(), Some("page=REDACTED"));
    assert_eq!(records[3]["http.request.method"].as_str(), Some("POST"));
    assert_eq!(records[4]["client.address"].as_str(), Some("127.0.0.2"));
    assert_eq!(records[5]["client.address"].as_str(), Some("127.0.0.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_removes_the_token_when_the_policy_says_so() {
    let fixture = Fixture::new("ext-authz-strip").await;
    let policy = sidecar::policy().replace(
        "remove_authorization = false",
        "remove_authorization = true",
    );
    // A second server, its audit file in a folder of its own.
    let dir = fixture.dir.join("strip");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("strip.toml");
    std::fs::write(&file, policy).unwrap();
    let (_server, _, grpc) = serve(&dir, &fixture.db, &file, &[]);
    let token = fixture.issue("strip", "reader", &["--scope", "notes:read"]);
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let ok = check(
        &mut client,
        check_request(
            "GET",
            "/notes",
            &[("authorization", &format!("Bearer {token}"))],
            "127.0.0.1",
        ),
    )
    .await;
    let Some(HttpResponse::OkResponse(allowed)) = ok.http_response else {
        panic!("{ok:?}")
    };
    assert_eq!(allowed.headers_to_remove, ["authorization"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_policy_and_keeps_the_old_one_over_a_bad_file() {
    let fixture = Fixture::new("reload").await;
    let auth = direct(&fixture);
    let token = fixture.issue("reload", "reader", &["--scope", "notes:read"]);
    let delete = || {
        auth.get("/auth")
            .header("x-forwarded-method", "DELETE")
            .header("x-forwarded-uri", "/notes/1")
            .bearer(&token)
    };
    assert_eq!(delete().send().await.status, 403);

    // DELETE now needs notes:read: in force from a check after the signal.
    let granted =
        sidecar::policy().replace("scopes = [\"notes:admin\"]", "scopes = [\"notes:read\"]");
    std::fs::write(&fixture.policy, granted).unwrap();
    assert!(fixture.serve.hangup());
    let start = Instant::now();
    while delete().send().await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the reloaded policy is not in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A bad file: logged with its place, the policy in force stays.
    std::fs::write(
        &fixture.policy,
        sidecar::policy().replace("scopes = [\"notes:admin\"]", "scopes = [\"notes:amdin\"]"),
    )
    .unwrap();
    assert!(fixture.serve.hangup());
    let start = Instant::now();
    let logged = loop {
        let lines = fixture.serve.stderr_lines();
        if let Some(line) = lines.iter().find(|l| l.contains("not reloaded")) {
            break line.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no word of the bad file: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        logged.contains("routes[3].scopes[0]") && logged.contains("did you mean"),
        "{logged}"
    );
    assert_eq!(
        delete().send().await.status,
        200,
        "the last good policy stays in force"
    );
}

#[test]
fn a_bad_policy_file_starts_nothing_and_names_its_place() {
    let dir = tokengate_tests::process::temp_dir("tokengate-serve-bad");
    let policy = dir.join("bad.toml");
    std::fs::write(
        &policy,
        sidecar::policy().replace(
            "\"notes:write\"]\n\n[[routes]]\npath = \"/notes/{id}\"",
            "\"notes:wirte\"]\n\n[[routes]]\npath = \"/notes/{id}\"",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .current_dir(&dir)
        .args([
            "--db",
            "tokens.db",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:26:11: routes[2].scopes[0]: \"notes:wirte\" is not a scope of this policy; did you mean \"notes:write\"?"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["bad.toml"], "nothing written");
    let missing = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .current_dir(&dir)
        .args(["serve", "--config", "absent.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.toml: cannot read it"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_charges_a_routes_cost_from_the_policy() {
    let fixture = Fixture::new("cost").await;
    let auth = direct(&fixture);
    let token = fixture.issue(
        "cost",
        "reader",
        &[
            "--scope",
            "notes:read",
            "--uses",
            "25",
            "--rate",
            "1/min",
            "--burst",
            "100",
        ],
    );
    let export = || {
        auth.get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/notes/export")
            .bearer(&token)
    };
    // The shipped policy's export costs 10 of the uses and of the quota.
    for left in ["15", "5"] {
        let ok = export().send().await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("token-uses-remaining"), left);
    }
    let ok = auth
        .get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/notes")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(ok.header("token-uses-remaining"), "4");
    assert!(
        ok.header("ratelimit").starts_with("\"per-token\";r=79;"),
        "{}",
        ok.header("ratelimit")
    );
    let refused = export().send().await;
    assert_eq!(refused.status, 403, "4 left, 10 asked");
    assert_eq!(refused.problem(), "urn:tokengate:problem:usage-exhausted");
}

/// `GET url`'s status and body, over a plain connection.
async fn get(url: &str) -> (u16, String) {
    let answer = Target::unmanaged("admin", url.to_owned())
        .get("")
        .send()
        .await;
    let body = match answer.body {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    };
    (answer.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shares_redis_and_reports_readiness_and_metrics_as_the_examples_do() {
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let fixture = Fixture::new("redis").await;
    let prefix = format!("tg-serve-{}", std::process::id());
    // Two instances on one database and one Redis, audit files apart.
    let start = |name: &str| {
        let dir = fixture.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let flags = [
            "--redis",
            url.as_str(),
            "--redis-prefix",
            &prefix,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        serve(&dir, &fixture.db, &fixture.policy, &flags)
    };
    let (first, first_http, _) = start("first");
    let (second, second_http, _) = start("second");
    let admin = first
        .output
        .iter()
        .find_map(|l| l.strip_prefix("tokengate serve: admin (/healthz, /readyz, /metrics) on "))
        .unwrap()
        .to_owned();
    let token = fixture.issue(
        "shared",
        "limited",
        &["--scope", "notes:read", "--rate", "1/min", "--burst", "1"],
    );
    let ask = |addr: std::net::SocketAddr| {
        Target::unmanaged("shared", format!("http://{addr}"))
            .get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/notes")
            .bearer(&token)
            .send()
    };
    assert_eq!(ask(first_http).await.status, 200);
    // The quota is kept in Redis: spent on the first, refused on the second.
    let refused = ask(second_http).await;
    assert_eq!(
        (refused.status, refused.problem()),
        (429, "urn:tokengate:problem:rate-limited".to_owned())
    );

    let (status, ready) = get(&format!("{admin}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["components"]["redis"], "ok");
    assert_eq!(ready["components"]["store"], "ok");
    assert_eq!(ready["components"]["audit"], "ok");
    let (status, metrics) = get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    let decisions: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tokengate_decisions_total{"))
        .collect();
    assert!(
        decisions.iter().any(|l| l.contains("layer=\"gate\"")),
        "{decisions:?}"
    );
    // The rate state's series are the recorder's: listed from the start,
    // with the round trips just made.
    assert!(
        metrics.contains("tokengate_rate_state_fallbacks_total{policy=\"local\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tokengate_rate_state_duration_seconds_count") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    drop((first, second));
    tokengate_tests::remove_redis_keys(&url, &prefix).await;
}

/// `tokengate serve --secret-scanning`: a signed GitHub report revokes the
/// token, and the next check with it is 401; an unsigned one changes
/// nothing; the report's request and the leak record share the audit
/// file's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_secret_scanning_revokes_a_reported_token() {
    use tokengate_tests::leaks::{KeyServer, Signer};
    let fixture = Fixture::new("leaks").await;
    let signer = Signer::new("gh-1", 3);
    let keys = KeyServer::start(&[(&signer, true)]).await;
    // A second server on the same database, its audit file its own.
    let own = fixture.dir.join("leaky");
    std::fs::create_dir_all(&own).unwrap();
    let (mut leaky, addr, _) = serve(
        &own,
        &fixture.db,
        &fixture.policy,
        &["--secret-scanning", "--secret-scanning-keys", &keys.url],
    );
    assert!(
        leaky.addr.contains("leaks: /leaks/github"),
        "{}",
        leaky.addr
    );
    let auth = Target::unmanaged("leaks", format!("http://{addr}"));
    let token = fixture.issue("leaks", "reader", &["--scope", "notes:read"]);
    let check = || {
        auth.get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/notes")
            .bearer(&token)
            .send()
    };
    assert_eq!(check().await.status, 200);

    let report: &'static str = Box::leak(
        serde_json::json!([{"token": token, "type": "tokengate_api_token", "url": "https://github.com/o/r/blob/x/a.txt"}])
            .to_string()
            .into_boxed_str(),
    );
    let unsigned = auth
        .request("POST", "/leaks/github")
        .body(report)
        .send()
        .await;
    assert_eq!(unsigned.status, 401);
    assert_eq!(check().await.status, 200);
    let signature = signer.sign(report.as_bytes());
    let answer = auth
        .request("POST", "/leaks/github")
        .header("github-public-key-identifier", &signer.id)
        .header("github-public-key-signature", &signature)
        .body(report)
        .send()
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body[0]["label"], "true_positive");
    let refused = check().await;
    assert_eq!(refused.status, 401);

    assert!(leaky.interrupt());
    let _ = leaky.child.wait();
    let audit = own.join("serve-audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(&token[3..]));
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let leak = records
        .iter()
        .find(|r| r["tokengate.event"] == "leak_reported")
        .unwrap();
    assert_eq!(leak["tokengate.leak.outcome"], "revoked");
    assert!(
        records
            .iter()
            .any(|r| r["url.path"] == "/leaks/github" && r["http.response.status_code"] == 200)
    );
    let verified = fixture.cli(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
}

#[tokio::test]
async fn serve_checks_dpop_proofs_of_bound_tokens_against_its_origin() {
    use tokengate::authenticate::dpop::DpopSigner;
    let fixture = Fixture::new("dpop").await;
    let own = fixture.dir.join("dpop");
    std::fs::create_dir_all(&own).unwrap();
    let (mut server, addr, _) = serve(
        &own,
        &fixture.db,
        &fixture.policy,
        &["--dpop-origin", "https://api.example.com"],
    );
    let auth = Target::unmanaged("dpop", format!("http://{addr}"));
    let key = DpopSigner::generate_ed25519();
    let jkt = key.jkt().to_base64url();
    let token = fixture.issue(
        "dpop",
        "laptop",
        &["--scope", "notes:read", "--dpop-jkt", &jkt],
    );
    let dpop = format!("DPoP {token}");
    let check = |authorization: String, proof: Option<String>| {
        let mut call = auth
            .get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/notes?page=2")
            .header("authorization", &authorization);
        if let Some(proof) = proof {
            call = call.header("dpop", &proof);
        }
        call.send()
    };
    let proof = key.proof("GET", "https://api.example.com/notes", &token, None);
    let admitted = check(dpop.clone(), Some(proof.clone())).await;
    assert_eq!(admitted.status, 200);
    assert_eq!(admitted.header("x-tokengate-subject"), "laptop");
    // The same proof again, the token alone, a proof for another origin.
    assert_eq!(check(dpop.clone(), Some(proof)).await.status, 401);
    assert_eq!(check(format!("Bearer {token}"), None).await.status, 401);
    let elsewhere = key.proof("GET", "http://127.0.0.1/notes", &token, None);
    assert_eq!(check(dpop, Some(elsewhere)).await.status, 401);

    assert!(server.interrupt());
    let _ = server.child.wait();
    let reasons = tokengate_tests::process::audit_reasons(&own.join("serve-audit.jsonl"), None);
    assert_eq!(
        reasons,
        [
            "-",
            "dpop_replay",
            "dpop_bound_as_bearer",
            "dpop_htu_mismatch"
        ]
    );
}
