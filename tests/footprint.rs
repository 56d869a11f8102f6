//! What every admitted request moves around: the full `Gate`'s response
//! future and response stay small. Refusals are boxed in each layer's
//! future and the audit record is boxed once, so the forwarding path
//! carries pointers rather than whole responses; holding either inline
//! again would grow these sizes by hundreds of bytes (the gate's future
//! was 712 bytes before both changes, its response 472).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::World;
use tokengate::{AuditEvent, AuditLayer, EnforceScopeLayer, Gate, PeerAddr, ScopePolicy};
use tokengate_tests::ready_now;
use tower::{Layer, Service, service_fn};

/// Generous bounds with room for compiler layout changes, well below the
/// sizes the inline variants gave.
const MAX_FUTURE: usize = 384;
const MAX_RESPONSE: usize = 256;

#[tokio::test]
async fn the_gates_future_and_response_stay_small() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy))
        .audit(AuditLayer::new(|_: AuditEvent| {}));
    let mut service = gate.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"[]"))))
    }));

    let mut request = Request::get("/notes")
        .header("authorization", format!("Bearer {}", token.expose_secret()))
        .body(())
        .unwrap();
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    request.extensions_mut().insert(PeerAddr(peer));
    assert!(
        service
            .poll_ready(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    );
    let future = service.call(request);
    let future_size = std::mem::size_of_val(&future);
    let response = ready_now(future).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response_size = std::mem::size_of_val(&response);

    assert!(
        future_size <= MAX_FUTURE,
        "the gate's response future is {future_size} bytes"
    );
    assert!(
        response_size <= MAX_RESPONSE,
        "the gate's response is {response_size} bytes"
    );
}
