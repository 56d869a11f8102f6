//! authenticate + enforce-scope in a plain hyper 1 server (through
//! hyper-util's `TowerToHyperService`), with the peer address handed to the
//! layers through the request trail (`ClientIp::of`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use support::{HttpClient, World, listener};
use tokengate::core::{ClientIp, RequestTrail};
use tokengate::{EnforceScopeLayer, Principal, Requirement, ScopePolicy};
use tower::{ServiceBuilder, service_fn};

async fn handler(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let subject = request
        .extensions()
        .get::<Principal>()
        .map_or("nobody", |p| p.subject())
        .to_owned();
    Ok(Response::new(Full::new(Bytes::from(subject))))
}

async fn serve(world: &World) -> SocketAddr {
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route([http::Method::GET], "/healthz", Requirement::Public)
        .build()
        .unwrap();
    let auth = world.auth.clone();
    let scope = EnforceScopeLayer::new(policy);
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            // The peer address reaches every layer through the request trail.
            let service = ServiceBuilder::new()
                .map_request(move |mut request: Request<Incoming>| {
                    RequestTrail::note_client_ip(
                        request.extensions_mut(),
                        ClientIp::new(peer.ip()),
                    );
                    request
                })
                .layer(auth.clone())
                .layer(scope.clone())
                .service(service_fn(handler));
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hyper_gets_the_same_decisions() {
    let world = World::new();
    let (reader, id) = world.issue("notes:read").await;
    let client = HttpClient::new(serve(&world).await);

    let ok = client.get("/notes", Some(&reader)).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "alice"));
    assert_eq!(
        client.get("/notes", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client
            .with_token("POST", "/notes", &reader, "x")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(client.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(
        client.get("/other", Some(&reader)).await.status,
        StatusCode::FORBIDDEN
    );
    let two = format!("Bearer {}", reader.expose_secret());
    let malformed = client
        .send(
            "GET",
            "/notes",
            &[("authorization", &two), ("authorization", &two)],
            "",
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    world.lifecycle.revoke(&id).await.unwrap();
    assert_eq!(
        client.get("/notes", Some(&reader)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn network_bound_tokens_see_the_real_peer_address() {
    let world = World::new();
    let (local, _) = world
        .issue_spec(
            world
                .spec("notes:read")
                .allowed_networks(["127.0.0.0/8".parse().unwrap()]),
        )
        .await;
    let (elsewhere, _) = world
        .issue_spec(
            world
                .spec("notes:read")
                .allowed_networks(["10.0.0.0/8".parse().unwrap()]),
        )
        .await;
    let client = HttpClient::new(serve(&world).await);
    assert_eq!(
        client.get("/notes", Some(&local)).await.status,
        StatusCode::OK
    );
    // Outside its networks a real token is answered like a made-up one.
    let refused = client.get("/notes", Some(&elsewhere)).await;
    let made_up = tokengate::core::TokenFormat::default().generate();
    let unknown = client.get("/notes", Some(&made_up)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body, unknown.body);
    assert!(!refused.body.contains("ip-forbidden"), "{}", refused.body);
}
