//! Per-request cost of authenticate (cache hit) and enforce-scope, beside a
//! bare service and tower-http's `ValidateRequestHeaderLayer::bearer` (a
//! fixed-token string comparison, the cheapest bearer check there is), all
//! in the same run. Each iteration builds the request, polls the service
//! ready, calls it and drives the response future, so the difference to
//! `bare` is the layers' own cost.
//!
//! The `pepper_miss` group measures what a pepper rotation adds to a token
//! the store does not know (a fresh one each iteration, so every call is
//! a store miss): with one previous pepper it is hashed and looked up
//! twice. The in-memory store makes the lookups nearly free; with a real
//! store each adds a round trip.
//!
//! The `uses` group measures what a usage-limited token costs a Gate
//! request: the same Gate and store with an unlimited token (the
//! baseline), with a token of a billion uses in memory, and in a SQLite
//! file (one atomic `UPDATE ... RETURNING` on the blocking pool per
//! request). Every call there runs on the runtime (`block_on`), the
//! baseline too, as the SQLite spend must.
//!
//! Run: `cargo bench --bench layers`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
#![allow(deprecated)] // ValidateRequestHeaderLayer::bearer is the peer being measured.

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response};
use tokengate::core::{KeyId, TokenFormat, UseLimit};
use tokengate::sqlite::SqliteStore;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Lifecycle, MemoryStore, Pepper,
    Requirement, ScopePolicy, TokenHasher, TokenSpec,
};
use tokengate_tests::call_now;

#[path = "support/gate.rs"]
mod gate;
use gate::{gate_over, issue, send};
use tower::{Layer, Service, ServiceBuilder, service_fn};
use tower_http::validate_request::ValidateRequestHeaderLayer;

fn handler()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

/// One request through `service`, start to finish.
fn run<S, B>(service: &mut S, authorization: &str) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::builder()
        .method(Method::GET)
        .uri("/notes")
        .header("authorization", authorization)
        .body(())
        .unwrap();
    call_now(service, request)
}

fn layers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    // Entries must outlive the whole run: every measured call is a hit.
    let config = CacheConfig::default().ttl(std::time::Duration::from_secs(3600));
    let cache = CachedStore::new(MemoryStore::new(), config);
    let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
    let token = runtime.block_on(async {
        lifecycle
            .issue(
                TokenSpec::new("bench", "alice")
                    .scopes(["notes:read".parse().unwrap()])
                    .audiences(["notes".parse().unwrap()]),
            )
            .await
            .unwrap()
            .token
    });
    let bearer = format!("Bearer {}", token.expose_secret());
    let auth = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route([Method::GET], "/whoami", Requirement::Authenticated)
        .build()
        .unwrap();

    let mut bare = handler();
    let mut peer = ValidateRequestHeaderLayer::bearer(token.expose_secret()).layer(handler());
    let mut authenticate = auth.layer(handler());
    let mut full = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(EnforceScopeLayer::new(policy))
        .service(handler());
    // Warm the cache: every measured call below is a hit.
    let _ = runtime.block_on(tower::ServiceExt::oneshot(
        auth.layer(handler()),
        Request::get("/notes")
            .header("authorization", &bearer)
            .body(())
            .unwrap(),
    ));
    assert_eq!(run(&mut authenticate, &bearer).status(), 200);
    assert_eq!(run(&mut full, &bearer).status(), 200);
    assert_eq!(run(&mut peer, &bearer).status(), 200);

    let mut group = c.benchmark_group("layers");
    group.bench_function("bare", |b| b.iter(|| black_box(run(&mut bare, &bearer))));
    group.bench_function("tower_http_bearer", |b| {
        b.iter(|| black_box(run(&mut peer, &bearer)));
    });
    group.bench_function("authenticate_hit", |b| {
        b.iter(|| black_box(run(&mut authenticate, &bearer)));
    });
    group.bench_function("authenticate_hit_and_scope", |b| {
        b.iter(|| black_box(run(&mut full, &bearer)));
    });
    group.finish();
}

fn pepper_miss(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The lookup timeout's timer needs the runtime; the lookup itself
    // (in memory) completes without waiting.
    let _enter = runtime.enter();
    let layer = |hasher: TokenHasher| {
        let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
        AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap()).layer(handler())
    };
    let mut one = layer(TokenHasher::new(Pepper::generate(KeyId::new(1))));
    let mut rotated = layer(
        TokenHasher::new(Pepper::generate(KeyId::new(2)))
            .with_previous([Pepper::generate(KeyId::new(1))]),
    );
    let unknown = || {
        format!(
            "Bearer {}",
            TokenFormat::default().generate().expose_secret()
        )
    };
    assert_eq!(run(&mut one, &unknown()).status(), 401);
    assert_eq!(run(&mut rotated, &unknown()).status(), 401);
    let mut group = c.benchmark_group("pepper_miss");
    group.bench_function("one_pepper", |b| {
        b.iter_batched(
            unknown,
            |bearer| black_box(run(&mut one, &bearer)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("one_previous_pepper", |b| {
        b.iter_batched(
            unknown,
            |bearer| black_box(run(&mut rotated, &bearer)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn uses(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tokengate-bench-uses-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let billion = Some(UseLimit::new(
        std::num::NonZeroU64::new(1_000_000_000).unwrap(),
    ));
    let config = CacheConfig::default().ttl(std::time::Duration::from_secs(3600));
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let memory = CachedStore::new(MemoryStore::new(), config.clone());
    let sqlite = CachedStore::new(SqliteStore::create(&dir.join("tokens.db")).unwrap(), config);
    let (unlimited, limited, on_file) = runtime.block_on(async {
        (
            issue(&memory, &hasher, None).await,
            issue(&memory, &hasher, billion).await,
            issue(&sqlite, &hasher, billion).await,
        )
    });
    let in_memory = gate_over(memory, hasher.clone(), None);
    let in_file = gate_over(sqlite, hasher, None);
    fn told<B>(response: &Response<B>) -> Option<String> {
        assert_eq!(response.status(), 200);
        response
            .headers()
            .get("token-uses-remaining")
            .map(|v| v.to_str().unwrap().to_owned())
    }
    assert_eq!(told(&send(&runtime, &in_memory, &unlimited)), None);
    assert_eq!(
        told(&send(&runtime, &in_memory, &limited)).as_deref(),
        Some("999999999")
    );
    assert_eq!(
        told(&send(&runtime, &in_file, &on_file)).as_deref(),
        Some("999999999")
    );
    let mut group = c.benchmark_group("uses");
    group.bench_function("gate_unlimited", |b| {
        b.iter(|| black_box(send(&runtime, &in_memory, &unlimited)));
    });
    group.bench_function("gate_limited_memory", |b| {
        b.iter(|| black_box(send(&runtime, &in_memory, &limited)));
    });
    group.bench_function("gate_limited_sqlite", |b| {
        b.iter(|| black_box(send(&runtime, &in_file, &on_file)));
    });
    group.finish();
    // Every measured request was admitted, and spent its use.
    assert_eq!(told(&send(&runtime, &in_memory, &unlimited)), None);
    let left: u64 = told(&send(&runtime, &in_memory, &limited))
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 999_999_000, "{left}");
    let left: u64 = told(&send(&runtime, &in_file, &on_file))
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 999_999_000, "{left}");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, layers, pepper_miss, uses);
criterion_main!(benches);
