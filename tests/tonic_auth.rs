//! authenticate + enforce-scope in a real tonic server, called by a real
//! tonic client over TCP: gRPC status codes, never HTTP 401/403.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::uri::PathAndQuery;
use support::World;
use tokengate::core::Token;
use tokengate::{EnforceScopeLayer, Requirement, ScopePolicy};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tower::ServiceBuilder;

use support::grpc::pb::notes_client::NotesClient;
use support::grpc::pb::{CreateNoteRequest, ListNotesRequest};

async fn serve(world: &World) -> Channel {
    let policy = ScopePolicy::builder()
        .grpc_method(
            "/notes.v1.Notes/ListNotes",
            Requirement::all(["notes:read"]).unwrap(),
        )
        .grpc_method(
            "/notes.v1.Notes/CreateNote",
            Requirement::all(["notes:write"]).unwrap(),
        )
        .grpc_service("grpc.health.v1.Health", Requirement::Public)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(world.auth.clone())
        .layer(EnforceScopeLayer::new(policy))
        .into_inner();
    support::grpc::serve(stack).await.0
}

fn with_token<T>(message: T, tokens: &[&str]) -> Request<T> {
    let mut request = Request::new(message);
    for token in tokens {
        request
            .metadata_mut()
            .append("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn secret(token: &Token) -> &str {
    token.expose_secret()
}

#[tokio::test]
async fn the_principal_reaches_the_handler() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let mut client = NotesClient::new(serve(&world).await);
    let reply = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().caller, "alice");
}

#[tokio::test]
async fn no_token_is_unauthenticated_16() {
    let world = World::new();
    let mut client = NotesClient::new(serve(&world).await);
    let status = client
        .list_notes(with_token(ListNotesRequest {}, &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let unknown = tokengate::core::TokenFormat::default().generate();
    let status = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&unknown)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_read_only_token_gets_permission_denied_7_on_writes() {
    let world = World::new();
    let (reader, _) = world.issue("notes:read").await;
    let mut client = NotesClient::new(serve(&world).await);
    let status = client
        .create_note(with_token(
            CreateNoteRequest { text: "x".into() },
            &[secret(&reader)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let (writer, _) = world.issue("notes:write").await;
    let note = client
        .create_note(with_token(
            CreateNoteRequest { text: "x".into() },
            &[secret(&writer)],
        ))
        .await
        .unwrap();
    assert_eq!(note.into_inner().text, "x");
}

#[tokio::test]
async fn two_credentials_are_invalid_argument_3() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let mut client = NotesClient::new(serve(&world).await);
    let status = client
        .list_notes(with_token(
            ListNotesRequest {},
            &[secret(&token), secret(&token)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_revoked_token_fails_on_the_next_call() {
    let world = World::new();
    let (token, id) = world.issue("notes:read").await;
    let mut client = NotesClient::new(serve(&world).await);
    client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap();
    world.lifecycle.revoke(&id).await.unwrap();
    let status = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_store_outage_is_unavailable_14() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    world.probe.set_failing(true);
    let mut client = NotesClient::new(serve(&world).await);
    let status = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn the_health_service_is_public() {
    let world = World::new();
    let mut grpc = tonic::client::Grpc::new(serve(&world).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            Request::new(()),
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    // Past authentication and scopes, the server itself answers: this test
    // server has no health service.
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_spent_quota_is_resource_exhausted_8_with_the_http_quota_headers() {
    use std::num::NonZeroU32;
    use std::time::Duration;
    use tokengate::core::RateQuota;
    use tokengate::rate::RateLimitLayer;

    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let quota = RateQuota::new(
        NonZeroU32::new(1).unwrap(),
        Duration::from_secs(60),
        NonZeroU32::new(1).unwrap(),
    )
    .unwrap();
    let stack = ServiceBuilder::new()
        .layer(world.auth.clone())
        .layer(RateLimitLayer::per_token(quota))
        .into_inner();
    let mut client = NotesClient::new(support::grpc::serve(stack).await.0);
    let admitted = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap();
    let policy = admitted
        .metadata()
        .get("ratelimit-policy")
        .cloned()
        .unwrap();
    assert_eq!(policy, r#""per-token";q=1;w=60"#);
    let status = client
        .list_notes(with_token(ListNotesRequest {}, &[secret(&token)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let metadata = status.metadata();
    assert_eq!(metadata.get("ratelimit-policy").unwrap(), &policy);
    let state = metadata.get("ratelimit").unwrap().to_str().unwrap();
    assert!(state.starts_with(r#""per-token";r=0;t="#), "{state}");
    assert!(metadata.get("retry-after").is_some());
    assert!(metadata.get("grpc-retry-pushback-ms").is_some());
}
