//! Client-IP resolution and IP filtering in real axum and tonic servers:
//! the peer (127.0.0.1) is a trusted proxy in one setup and not in the other.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use http::StatusCode;
use support::grpc::pb::CreateNoteRequest;
use support::grpc::pb::notes_client::NotesClient;
use support::{HttpClient, serve_axum};
use tokengate::core::RequestTrail;
use tokengate::ipfilter::{IpFilterLayer, IpRules, ResolveClientIpLayer};
use tower::ServiceBuilder;

fn denied() -> IpFilterLayer {
    IpFilterLayer::new(IpRules::deny_list(["198.51.100.0/24"]).unwrap())
}

async fn axum_client(trusted: &str) -> HttpClient {
    let app = Router::new()
        .route(
            "/ip",
            get(|Extension(trail): Extension<RequestTrail>| async move {
                // The client address lives in the request's trail.
                trail
                    .client_ip()
                    .map(|ip| ip.to_string())
                    .unwrap_or_default()
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(
                    ResolveClientIpLayer::trusted_proxies([trusted])
                        .unwrap()
                        .peer_source(tokengate::axum::peer_addr),
                )
                .layer(denied()),
        );
    HttpClient::new(serve_axum(app).await)
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_decided_on() {
    let client = axum_client("127.0.0.0/8").await;
    let allowed = client
        .send("GET", "/ip", &[("x-forwarded-for", "203.0.113.1")], "")
        .await;
    assert_eq!(
        (allowed.status, allowed.body.as_str()),
        (StatusCode::OK, "203.0.113.1")
    );
    let spoofed_left = client
        .send(
            "GET",
            "/ip",
            &[("x-forwarded-for", "198.51.100.9, 203.0.113.1")],
            "",
        )
        .await;
    assert_eq!(
        spoofed_left.body, "203.0.113.1",
        "the rightmost untrusted address wins"
    );
    let denied = client
        .send("GET", "/ip", &[("x-forwarded-for", "198.51.100.9")], "")
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let malformed = client
        .send("GET", "/ip", &[("x-forwarded-for", "198.51.100.9:80")], "")
        .await;
    assert_eq!(malformed.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_claim_an_address() {
    let client = axum_client("10.0.0.0/8").await;
    let reply = client
        .send("GET", "/ip", &[("x-forwarded-for", "198.51.100.9")], "")
        .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "127.0.0.1")
    );
}

async fn grpc_status(trusted: &str, forwarded_for: &str) -> Result<(), tonic::Code> {
    let stack = ServiceBuilder::new()
        .layer(
            ResolveClientIpLayer::trusted_proxies([trusted])
                .unwrap()
                .peer_source(tokengate::tonic::peer_addr),
        )
        .layer(denied())
        .into_inner();
    let mut client = NotesClient::new(support::grpc::serve(stack).await.0);
    let mut request = tonic::Request::new(CreateNoteRequest { text: "x".into() });
    request
        .metadata_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    client
        .create_note(request)
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[tokio::test]
async fn tonic_servers_resolve_through_trusted_proxies_too() {
    assert_eq!(
        grpc_status("127.0.0.0/8", "198.51.100.9").await,
        Err(tonic::Code::PermissionDenied)
    );
    assert_eq!(grpc_status("127.0.0.0/8", "203.0.113.1").await, Ok(()));
    assert_eq!(grpc_status("10.0.0.0/8", "198.51.100.9").await, Ok(()));
}
