//! axum-notes' `GET /notes` behind the naive stack of `naive.rs`, for
//! `benches/e2e.sh` (`MODES="bare gate naive"`): the end-to-end peer the
//! gate is measured against in the same run. The stack sees the client
//! address as the gate does (from the connection), audits through
//! `tracing` to a JSON-lines file via tracing-appender's non-blocking
//! writer, and knows the one token it is given.
//!
//! Usage: `naive-notes --listen ADDR --token TOKEN --log PATH`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum::{Json, Router};
use governor::{Quota, RateLimiter};
use http::Request;
use tokengate::ClientIp;
use tower::ServiceBuilder;

#[path = "naive.rs"]
mod naive;
use naive::{Naive, Tokens, remember};

type Notes = Arc<Mutex<Vec<serde_json::Value>>>;

async fn list(State(notes): State<Notes>) -> Json<Vec<serde_json::Value>> {
    Json(notes.lock().unwrap_or_else(PoisonError::into_inner).clone())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| {
                eprintln!("usage: naive-notes --listen ADDR --token TOKEN --log PATH");
                std::process::exit(2)
            })
            .clone()
    };
    let (listen, token, log) = (arg("--listen"), arg("--token"), arg("--log"));

    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::fs::File::create(log).unwrap());
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .json()
            .with_writer(writer)
            .finish(),
    )
    .unwrap();

    let tokens = Tokens::builder().max_capacity(1024).build();
    remember(&tokens, &token, vec!["notes:read".to_owned()]);
    let limiter = Arc::new(RateLimiter::keyed(
        Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX),
    ));
    let deny = Arc::new(Vec::new());
    let stack = ServiceBuilder::new()
        .map_request(|mut request: Request<axum::body::Body>| {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if let Some(peer) = peer {
                request.extensions_mut().insert(ClientIp::new(peer));
            }
            request
        })
        .layer_fn(move |inner| Naive {
            inner,
            tokens: tokens.clone(),
            limiter: Arc::clone(&limiter),
            deny: Arc::clone(&deny),
        });
    let app = Router::new()
        .route("/notes", get(list).route_layer(stack))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Notes::default());
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .unwrap();
}
