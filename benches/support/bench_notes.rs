//! axum-notes' `GET /notes` behind one of the stacks `benches/e2e.sh`
//! measures the gate against, in the same rounds:
//!
//! - `naive` (`MODES="… naive"`): the naive stack of `naive.rs`, which sees
//!   the client address as the gate does (from the connection), audits
//!   through `tracing` to a JSON-lines file via tracing-appender's
//!   non-blocking writer, and knows the one token it is given;
//! - `bearer`: tower-http's `ValidateRequestHeaderLayer::bearer`, a
//!   comparison with the one token: the least a token check can cost, the
//!   floor of what this machine can tell from bare;
//! - `authenticate`: tokengate's authenticate layer alone over the embedded
//!   SQLite store (HMAC, cache, principal, usage, `token-expires`), no other
//!   layer: the first rung of the gate;
//! - `checks`: the gate's checks without the audit layer, as separate
//!   layers in the gate's order (client IP from the connection, an empty
//!   IP filter, the per-IP pre-auth limit, authenticate, the per-token
//!   limit with its headers, the scope of `GET /notes`): the second rung.
//!
//! Usage: `bench-notes --stack naive|bearer|authenticate|checks --listen
//! ADDR --token TOKEN --log PATH [--db PATH]`. `--log` is the naive stack's
//! `tracing` file, or the store's audit file (which no layer here writes);
//! `--db`, for `authenticate` and `checks`, the store the token was issued
//! into.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use governor::{Quota, RateLimiter};
use http::{Method, Request};
use tokengate::core::{ClientIp, RateQuota, RequestTrail};
use tokengate::ipfilter::{IpFilterLayer, IpRules, ResolveClientIpLayer};
use tokengate::rate::{MissingKey, RateLimitLayer};
use tokengate::{Deployment, EnforceScopeLayer, Requirement, ScopePolicy};
use tower::ServiceBuilder;
use tracing_appender::non_blocking::WorkerGuard;

#[path = "naive.rs"]
mod naive;
use naive::{Naive, Tokens, remember};

type Notes = Arc<Mutex<Vec<serde_json::Value>>>;

async fn list(State(notes): State<Notes>) -> Json<Vec<serde_json::Value>> {
    Json(notes.lock().unwrap_or_else(PoisonError::into_inner).clone())
}

const USAGE: &str = "usage: bench-notes --stack naive|bearer|authenticate|checks \
                     --listen ADDR --token TOKEN --log PATH [--db PATH]";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let required = |name: &str| {
        arg(name).unwrap_or_else(|| {
            eprintln!("{USAGE}");
            std::process::exit(2)
        })
    };
    let (stack, listen) = (required("--stack"), required("--listen"));
    let (token, log) = (required("--token"), required("--log"));

    // Kept until the server stops: the naive stack's writer, the store's
    // background tasks.
    let (mut guard, mut embedded) = (None, None);
    let notes: MethodRouter<Notes> = match stack.as_str() {
        "naive" => {
            let (route, writer) = naive_route(&token, &log);
            guard = Some(writer);
            route
        }
        #[allow(deprecated, reason = "the bearer check is the peer being measured")]
        "bearer" => get(list)
            .route_layer(tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&token)),
        "authenticate" | "checks" => {
            let db: tokengate::deployment::Database = required("--db").parse().unwrap();
            let opened = Deployment::builder(db.clone())
                .audit_log(&log)
                .open()
                .await
                .unwrap();
            let authenticate = opened.authenticate("notes".parse().unwrap());
            embedded = Some(opened);
            if stack == "authenticate" {
                get(list).route_layer(authenticate)
            } else {
                checks_route(authenticate)
            }
        }
        other => {
            eprintln!("bench-notes: unknown stack {other:?}\n{USAGE}");
            std::process::exit(2)
        }
    };
    let app = Router::new()
        .route("/notes", notes)
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Notes::default());
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .unwrap();
    drop((guard, embedded));
}

/// `GET /notes` behind the gate's checks as separate layers, configured as
/// axum-notes' gate (`--pre-auth-rate 100000000`), without the audit layer.
fn checks_route(
    authenticate: tokengate::AuthenticateLayer<tokengate::deployment::AnyStore>,
) -> MethodRouter<Notes> {
    let per_second = |n: u32| {
        let n = NonZeroU32::new(n).unwrap();
        RateQuota::new(
            n,
            Duration::from_secs(1),
            n.saturating_mul(NonZeroU32::new(2).unwrap()),
        )
        .unwrap()
    };
    let policy = ScopePolicy::builder()
        .route(
            [Method::GET],
            "/notes",
            Requirement::all(["notes:read"]).unwrap(),
        )
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(ResolveClientIpLayer::new().peer_source(tokengate::axum::peer_addr))
        .layer(IpFilterLayer::new(
            IpRules::deny_list(Vec::<&str>::new()).unwrap(),
        ))
        .layer(RateLimitLayer::per_client_ip(per_second(100_000_000)).success_headers(false))
        .layer(authenticate)
        .layer(RateLimitLayer::per_token(per_second(50)).missing_key(MissingKey::Skip))
        .layer(EnforceScopeLayer::new(policy));
    get(list).route_layer(stack)
}

/// `GET /notes` behind the naive stack, its client address taken from the
/// connection; the guard keeps its `tracing` writer running.
fn naive_route(token: &str, log: &str) -> (MethodRouter<Notes>, WorkerGuard) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
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
    remember(&tokens, token, vec!["notes:read".to_owned()]);
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
                RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new(peer));
            }
            request
        })
        .layer_fn(move |inner| {
            Naive {
                tokens: tokens.clone(),
                limiter: Arc::clone(&limiter),
                deny: Arc::clone(&deny),
            }
            .around(inner)
        });
    (get(list).route_layer(stack), guard)
}
