//! The whole stack in one ServiceBuilder on a real axum server, auditing to
//! a real JSON-lines file: every outcome leaves exactly one record with its
//! final status and precise reason, the file holds no secret, and its hash
//! chain verifies.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::Value;
use support::{HttpClient, World, serve_axum};
use tokengate::audit::{AuditLayer, JsonLinesSink};
use tokengate::core::{RateQuota, TokenFormat};
use tokengate::ipfilter::{IpFilterLayer, IpRules, ResolveClientIpLayer};
use tokengate::rate::RateLimitLayer;
use tokengate::{EnforceScopeLayer, Requirement, ScopePolicy};
use tower::ServiceBuilder;

#[tokio::test]
async fn every_outcome_is_recorded_once_without_secrets() {
    let world = World::new();
    let dir = std::env::temp_dir().join(format!("tokengate-audit-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&path);
    let sink = JsonLinesSink::open(&path).unwrap();

    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route([http::Method::GET], "/boom", Requirement::Authenticated)
        .build()
        .unwrap();
    let roomy = RateQuota::new(
        NonZeroU32::new(1000).unwrap(),
        Duration::from_secs(1),
        NonZeroU32::new(1000).unwrap(),
    )
    .unwrap();
    let app = Router::new()
        .route(
            "/notes",
            get(|| async { "notes" }).post(|| async { "created" }),
        )
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new(sink.clone()))
                .layer(
                    ResolveClientIpLayer::trusted_proxies(["127.0.0.0/8"])
                        .unwrap()
                        .peer_source(tokengate::axum::peer_addr),
                )
                .layer(IpFilterLayer::new(
                    IpRules::deny_list(["198.51.100.0/24"]).unwrap(),
                ))
                .layer(world.auth.clone())
                .layer(RateLimitLayer::per_token(roomy).clock(world.clock.shared()))
                .layer(EnforceScopeLayer::new(policy)),
        );
    let client = HttpClient::new(serve_axum(app).await);

    let (reader, reader_id) = world.issue("notes:read").await;
    let (limited, _) = world
        .issue_spec(
            world.spec("notes:read").rate_quota(
                RateQuota::new(
                    NonZeroU32::new(1).unwrap(),
                    Duration::from_secs(60),
                    NonZeroU32::new(1).unwrap(),
                )
                .unwrap(),
            ),
        )
        .await;
    let bearer = format!("Bearer {}", reader.expose_secret());
    let unknown = TokenFormat::default().generate();

    let mut expected: Vec<(u16, Option<&str>)> = Vec::new();
    let mut expect = |reply: support::Reply, status: u16, reason: Option<&'static str>| {
        assert_eq!(reply.status.as_u16(), status, "{reason:?}: {}", reply.body);
        expected.push((status, reason));
    };

    expect(
        client
            .send(
                "GET",
                "/notes",
                &[
                    ("x-forwarded-for", "198.51.100.9"),
                    ("authorization", &bearer),
                ],
                "",
            )
            .await,
        403,
        Some("ip_denied"),
    );
    expect(
        client
            .send(
                "GET",
                "/notes",
                &[("authorization", &bearer), ("authorization", &bearer)],
                "",
            )
            .await,
        400,
        Some("multiple_credentials"),
    );
    expect(client.get("/notes", None).await, 401, Some("missing_token"));
    expect(
        client.with_token("POST", "/notes", &reader, "x").await,
        403,
        Some("insufficient_scope"),
    );
    expect(client.get("/notes", Some(&limited)).await, 200, None);
    expect(
        client.get("/notes", Some(&limited)).await,
        429,
        Some("rate_limited"),
    );
    world.probe.set_failing(true);
    expect(
        client.get("/notes", Some(&unknown)).await,
        503,
        Some("store_unavailable"),
    );
    world.probe.set_failing(false);
    expect(client.get("/boom", Some(&reader)).await, 500, None);
    expect(
        client
            .send(
                "GET",
                "/notes?access_token=leak",
                &[("authorization", &bearer), ("user-agent", "ua\twith tab")],
                "",
            )
            .await,
        400,
        Some("query_token_not_allowed"),
    );
    expect(client.get("/notes", Some(&reader)).await, 200, None);

    sink.shutdown();
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        expected.len(),
        "one record per request:\n{text}"
    );
    for (record, (status, reason)) in records.iter().zip(&expected) {
        assert_eq!(record["http.response.status_code"], *status, "{record}");
        assert_eq!(record["tokengate.reason"].as_str(), *reason, "{record}");
        assert_eq!(
            record["tokengate.decision"],
            if reason.is_some() { "deny" } else { "allow" }
        );
    }
    assert_eq!(records[0]["client.address"], "198.51.100.9");
    assert_eq!(records[3]["tokengate.token_id"], reader_id.as_str());
    assert_eq!(records[8]["url.query"], "access_token=REDACTED");

    for token in [&reader, &limited, &unknown] {
        let secret = token.expose_secret();
        for window in secret.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(
                !text.contains(window),
                "{window} of a token is in the audit file"
            );
        }
    }
    assert!(!text.contains("leak"));
    assert_eq!(
        tokengate::audit::hash_chain::verify(&path).unwrap().records,
        expected.len() as u64
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn head_requests_to_axum_are_recorded_completed_not_cancelled() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = records.clone();
    let sink = move |event: tokengate::audit::AuditEvent| kept.lock().unwrap().push(event);
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/notes", get(|| async { "a body axum drops for HEAD" }))
        .layer(
            tokengate::Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy))
                .audit(AuditLayer::new(sink)),
        );
    let client = HttpClient::new(serve_axum(app).await);
    let auth = format!("Bearer {}", token.expose_secret());
    let reply = client
        .send("HEAD", "/notes", &[("authorization", &auth)], "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "");
    // The record is made when the exchange ends; give the server a moment.
    for _ in 0..100 {
        if !records.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].ending.as_str(), records[0].status),
        ("completed", 200)
    );
}
