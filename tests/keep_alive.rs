//! A refusal sent before the request body was read must not cost the
//! client its next request: a real axum server behind the Gate, and a real
//! pooled client that reuses its connection as browsers and HTTP libraries
//! do. A refused request with a body is answered `Connection: close`, so
//! the client opens a new connection instead of losing the next request on
//! one the server is closing.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn app() -> (std::net::SocketAddr, tokengate::core::Token) {
    let (gate, token) = support::memory_gate().await;
    // Thousands of requests from one address and one token: no limit that
    // would answer 429 here.
    let unlimited = tokengate::core::RateQuota::new(
        std::num::NonZeroU32::new(1_000_000).unwrap(),
        std::time::Duration::from_secs(1),
        std::num::NonZeroU32::new(1_000_000).unwrap(),
    )
    .unwrap();
    let gate = gate
        .pre_auth_quota(unlimited)
        .token_rate(tokengate::rate::RateLimitLayer::per_token(unlimited));
    let notes = Router::new()
        .route(
            "/notes",
            get(|| async { "notes" }).post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(gate);
    (support::serve_axum(notes).await, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_after_a_refused_post_with_a_body_is_answered() {
    let (addr, token) = app().await;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http::<Full<Bytes>>();
    let bearer = format!("Bearer {}", token.expose_secret());
    let body = Bytes::from(vec![b'x'; 256 * 1024]);
    let mut lost = Vec::new();
    for i in 0..1_000 {
        // Refused before its body is read: no token (401), or a read-only
        // token writing (403).
        let mut post = Request::post(format!("http://{addr}/notes"));
        if i % 2 == 1 {
            post = post.header(header::AUTHORIZATION, &bearer);
        }
        let refused = client
            .request(post.body(Full::new(body.clone())).unwrap())
            .await
            .unwrap();
        let want = if i % 2 == 1 {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(refused.status(), want);
        assert_eq!(refused.headers()[header::CONNECTION], "close");
        let _ = refused.into_body().collect().await;
        let next = Request::get(format!("http://{addr}/notes"))
            .header(header::AUTHORIZATION, &bearer)
            .body(Full::new(Bytes::new()))
            .unwrap();
        match client.request(next).await {
            Ok(response) => assert_eq!(response.status(), StatusCode::OK),
            Err(error) => lost.push(format!("{i}: {error:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 1000 GETs lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test]
async fn a_refusal_without_a_body_keeps_the_connection() {
    let (addr, _) = app().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for request in [
        Request::get(format!("http://{addr}/notes")),
        Request::post(format!("http://{addr}/notes")).header(header::CONTENT_LENGTH, "0"),
    ] {
        let refused = client
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().get(header::CONNECTION).is_none());
    }
}

/// One HTTP/1.1 response read off `stream`: its status line and head, and
/// whether it said `Connection: close`. Bodies here are small and sized.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(String, bool)> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        seen.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    let close = head.lines().any(|l| l.trim() == "connection: close");
    Some((head.lines().next().unwrap_or_default().to_owned(), close))
}

#[tokio::test]
async fn a_client_that_finishes_its_body_after_the_refusal_is_told_to_reconnect() {
    use tokio::io::AsyncWriteExt;
    let (addr, token) = app().await;
    let get = format!(
        "GET /notes HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        token.expose_secret()
    );
    for _ in 0..20 {
        // The refusal comes before the body is even sent: the body then
        // arrives, and the next request goes where the server said.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /notes HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n")
            .await
            .unwrap();
        let (status, close) = read_response(&mut stream).await.unwrap();
        assert!(status.contains(" 401 "), "{status}");
        assert!(
            close,
            "a refusal with its body unread says Connection: close"
        );
        let _ = stream.write_all(&[b'x'; 4096]).await;
        if close {
            stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        }
        stream.write_all(get.as_bytes()).await.unwrap();
        let answered = read_response(&mut stream).await;
        assert!(
            answered.as_ref().is_some_and(|(s, _)| s.contains(" 200 ")),
            "the next request was answered: {answered:?}"
        );
    }
}
