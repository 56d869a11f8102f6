//! Envoy's ext_authz `Check` as `tokengate serve` answers it, beside a gRPC
//! health check on the same connection in the same run: what asking
//! tokengate costs a proxy over the cheapest gRPC call the server has.
//!
//! The server runs in this process, over loopback TCP, with the shipped
//! policy (its quotas raised so the run is never limited), an embedded
//! SQLite store in a temporary folder, and the audit file written.
//!
//! Run: `cargo bench --bench ext_authz`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tokengate::config::GateConfig;
use tokengate::sidecar::{Current, ExtAuthz, checking};
use tokengate::{Deployment, TokenSpec};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn check_request(token: &str) -> CheckRequest {
    let headers = HashMap::from([("authorization".to_owned(), format!("Bearer {token}"))]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/notes".to_owned(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn ext_authz(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("tokengate-bench-ext-authz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let policy = include_str!("../examples/sidecar/notes.toml")
        .replace(
            "{ rate = \"100/s\", burst = 200 }",
            "{ rate = \"1000000/s\", burst = 1000000 }",
        )
        .replace(
            "{ rate = \"50/s\", burst = 100 }",
            "{ rate = \"1000000/s\", burst = 1000000 }",
        );
    let config = GateConfig::parse(&policy, "notes.toml").unwrap();
    let (token, channel) = runtime.block_on(async {
        let db = dir.join("tokens.db");
        let deployment = Deployment::builder(db.to_str().unwrap().parse().unwrap())
            .config(&config)
            .open()
            .await
            .unwrap();
        let gate = deployment.gate_from_config(&config).await.unwrap();
        let spec = TokenSpec::new("bench", "bench")
            .scopes(["notes:read".parse().unwrap()])
            .audiences(["notes".parse().unwrap()]);
        let token = deployment.lifecycle.issue(spec).await.unwrap().token;
        let service = ExtAuthz::new(Current::new(checking(&gate)), false).into_server();
        let (_, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _keep = deployment;
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming(
                    // As `tokengate serve` does: every answer at once.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await
                .unwrap();
        });
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        (token.expose_secret().to_owned(), channel)
    });

    let mut group = c.benchmark_group("ext_authz");
    group.measurement_time(Duration::from_secs(5));
    let mut health = HealthClient::new(channel.clone());
    group.bench_function("grpc_health_check (baseline)", |b| {
        b.iter(|| {
            runtime
                .block_on(health.check(HealthCheckRequest {
                    service: String::new(),
                }))
                .unwrap()
        });
    });
    let mut client = AuthorizationClient::new(channel);
    let request = check_request(&token);
    group.bench_function("check_admitted", |b| {
        b.iter(|| {
            let answer = runtime.block_on(client.check(request.clone())).unwrap();
            assert_eq!(answer.get_ref().status.as_ref().map(|s| s.code), Some(0));
        });
    });
    let refused = check_request("tg_000000000000000000000000000000001YrmTe");
    group.bench_function("check_refused_unknown_token", |b| {
        b.iter(|| runtime.block_on(client.check(refused.clone())).unwrap());
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, ext_authz);
criterion_main!(benches);
