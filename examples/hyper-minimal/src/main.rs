//! hyper-minimal: one route behind the whole tokengate Gate in plain hyper 1.
//!
//! hyper hands each connection's peer address to the accept loop; inserting
//! it into every request as [`PeerAddr`] is all the client-IP layer needs.
//! The rest is one `tower` stack turned into a hyper service with
//! hyper-util's `TowerToHyperService`. Tokens live in memory here: the demo
//! token printed at start is the only one. Every request's audit record
//! goes to stderr (the Gate's default `tracing` sink, with a `fmt`
//! subscriber).
//!
//! ```text
//! cargo run -p hyper-minimal -- --listen 127.0.0.1:3001
//! curl -H "Authorization: Bearer $TOKEN" localhost:3001/
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a server that tells its operator what it does"
)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokengate::core::{ClientIp, KeyId};
use tokengate::ipfilter::PeerAddr;
use tokengate::scope::RequireScope;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, Gate, Lifecycle, MemoryStore, Pepper, Principal,
    TokenHasher, TokenSpec,
};
use tower::ServiceBuilder;

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = request
        .extensions()
        .get::<Principal>()
        .map_or("nobody", Principal::subject);
    let from =
        ClientIp::of(request.extensions()).map_or_else(|| "?".to_owned(), |ip| ip.to_string());
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello {who} from {from}\n"
    )))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The Gate audits to `tracing` by default: show its records (and the
    // library's warnings) on stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(std::io::stderr)
        .init();
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse()?,
        None => "127.0.0.1:3001".parse()?,
    };
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
    let issued = Lifecycle::new(cache.clone(), hasher.clone())
        .issue(
            TokenSpec::new("demo", "demo-user")
                .scopes(["hello:read".parse()?])
                .audiences(["hello".parse()?]),
        )
        .await?;
    println!("  export TOKEN={}", issued.token.expose_secret());

    // One route, one requirement: RequireScope is a ScopeLookup too.
    let gate = Gate::new(
        AuthenticateLayer::new(cache, hasher, "hello".parse()?),
        RequireScope::all(["hello:read"])?,
    );

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("hyper-minimal listening on {}", listener.local_addr()?);
    // SIGTERM (docker, systemd, Kubernetes) and SIGINT stop it cleanly; its
    // audit records go out as they are made, so nothing waits to be flushed.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let service = ServiceBuilder::new()
            // The peer address reaches ResolveClientIpLayer (inside the gate) as PeerAddr.
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .layer(gate.clone())
            .service_fn(hello);
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await
            {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }
    println!("hyper-minimal stopped");
    Ok(())
}
