//! Shared by the real-server integration tests: a token world on a manual
//! clock, servers on 127.0.0.1, and a real HTTP/1 client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate::authenticate::PublicPaths;
use tokengate::core::{KeyId, ManualClock, Token};
use tokengate::store::testing::ProbeStore;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, Lifecycle, Pepper, TokenHasher, TokenId, TokenSpec,
};
use tokio::net::TcpListener;

pub mod grpc;

/// The shared test world ([`tokengate_cache::testing::World`]: a cache in
/// front of a probed store, and a lifecycle, on one manual clock) and an
/// authenticate layer over it.
pub struct World {
    pub world: tokengate_cache::testing::World,
    pub probe: ProbeStore,
    pub clock: ManualClock,
    pub lifecycle: Lifecycle<CachedStore<ProbeStore>>,
    pub auth: AuthenticateLayer<ProbeStore>,
}

impl World {
    /// A world whose layer guards audience `notes` and lets `/healthz` and
    /// the gRPC health service through.
    pub fn new() -> Self {
        let world = tokengate_cache::testing::World::new();
        let auth = AuthenticateLayer::new(
            world.cache.clone(),
            world.hasher().clone(),
            "notes".parse().unwrap(),
        )
        .clock(world.clock.shared())
        .public(PublicPaths::new().exact("/healthz").grpc_health());
        Self {
            probe: world.probe.clone(),
            clock: world.clock.clone(),
            lifecycle: world.lifecycle.clone(),
            auth,
            world,
        }
    }

    /// Issues a token for `notes` with `scopes` (space-separated).
    pub async fn issue(&self, scopes: &str) -> (Token, TokenId) {
        self.issue_spec(self.spec(scopes)).await
    }

    pub fn spec(&self, scopes: &str) -> TokenSpec {
        self.world.spec(scopes)
    }

    pub async fn issue_spec(&self, spec: TokenSpec) -> (Token, TokenId) {
        self.world.issue_spec(spec).await
    }

    pub fn advance(&self, by: Duration) {
        self.world.advance(by);
    }
}

/// Binds 127.0.0.1 on a free port.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Serves an axum router on 127.0.0.1, with the peer address available.
pub async fn serve_axum(app: axum::Router) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// What came back over the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A real HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// Sends `method path` with `headers` and `body`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&Token>) -> Reply {
        let auth = token.map(|t| format!("Bearer {}", t.expose_secret()));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send("GET", path, &headers, "").await
    }

    pub async fn with_token(&self, method: &str, path: &str, token: &Token, body: &str) -> Reply {
        let auth = format!("Bearer {}", token.expose_secret());
        self.send(method, path, &[("authorization", &auth)], body)
            .await
    }
}

/// A Gate over an in-memory store (policy: `/notes` read/write by
/// `notes:*`), and a token with `notes:read` for the audience `notes`.
pub async fn memory_gate() -> (
    tokengate::Gate<tokengate::MemoryStore, tokengate::ScopePolicy>,
    Token,
) {
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let cache = CachedStore::new(tokengate::MemoryStore::new(), CacheConfig::default());
    let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
    let spec = TokenSpec::new("ci", "team-a")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()]);
    let token = lifecycle.issue(spec).await.unwrap().token;
    let policy = tokengate::ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = tokengate::Gate::new(
        AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap()),
        tokengate::EnforceScopeLayer::new(policy),
    );
    (gate, token)
}
