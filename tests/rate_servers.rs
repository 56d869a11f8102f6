//! rate-by-token behind authenticate in real axum and tonic servers: the
//! headers and codes a client sees over TCP, on a manual clock.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use support::grpc::pb::ListNotesRequest;
use support::grpc::pb::notes_client::NotesClient;
use support::{HttpClient, World, serve_axum};
use tokengate::core::RateQuota;
use tokengate::rate::RateLimitLayer;
use tower::ServiceBuilder;

fn one_per_minute(burst: u32) -> RateQuota {
    RateQuota::new(
        NonZeroU32::new(1).unwrap(),
        Duration::from_secs(60),
        NonZeroU32::new(burst).unwrap(),
    )
    .unwrap()
}

fn rate(world: &World, burst: u32) -> RateLimitLayer {
    RateLimitLayer::per_token(one_per_minute(burst)).clock(world.clock.shared())
}

#[tokio::test]
async fn http_clients_see_ratelimit_headers_then_429_then_recovery() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let app = Router::new()
        .route("/notes", get(|| async { "notes" }))
        .layer(
            ServiceBuilder::new()
                .layer(world.auth.clone())
                .layer(rate(&world, 2)),
        );
    let client = HttpClient::new(serve_axum(app).await);

    for remaining in [1, 0] {
        let ok = client.get("/notes", Some(&token)).await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.headers["ratelimit-policy"], r#""per-token";q=2;w=120"#);
        let expected = format!("\"per-token\";r={remaining};t={}", 60 * (2 - remaining));
        assert_eq!(ok.headers["ratelimit"], expected.as_str());
    }
    let limited = client.get("/notes", Some(&token)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "60");
    assert_eq!(limited.headers["ratelimit"], r#""per-token";r=0;t=60"#);
    assert_eq!(limited.headers["content-type"], "application/problem+json");
    assert!(
        limited.body.contains("urn:tokengate:problem:rate-limited"),
        "{}",
        limited.body
    );

    world.advance(Duration::from_secs(60));
    assert_eq!(
        client.get("/notes", Some(&token)).await.status,
        StatusCode::OK
    );

    // Another token has its own bucket.
    let (other, _) = world.issue("notes:read").await;
    assert_eq!(
        client.get("/notes", Some(&other)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn grpc_clients_get_resource_exhausted_with_a_retry_hint() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let stack = ServiceBuilder::new()
        .layer(world.auth.clone())
        .layer(rate(&world, 1))
        .into_inner();
    let mut client = NotesClient::new(support::grpc::serve(stack).await.0);
    let call = || {
        let mut request = tonic::Request::new(ListNotesRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.expose_secret()).parse().unwrap(),
        );
        request
    };
    client.list_notes(call()).await.unwrap();
    let status = client.list_notes(call()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "60");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "60000"
    );
    world.advance(Duration::from_secs(60));
    client.list_notes(call()).await.unwrap();
}
