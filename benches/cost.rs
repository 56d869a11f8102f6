//! What request cost costs a Gate request, in one run, beside the same
//! Gate without costs (the baseline):
//!
//! - `memory/*`: an unlimited token on the in-memory store: the baseline
//!   Gate; the same GET through a Gate whose policy has costs and late
//!   charges on (the cost function asked, a `Meter` made); a route of
//!   cost 10 (a GCRA charge of ten intervals: the same arithmetic); a
//!   token with two quotas and with four (one more rate-state key each).
//! - `sqlite/*`: a usage-limited token on a SQLite file, through the
//!   Gate with costs: a route of cost 1 (one `UPDATE ... RETURNING`), of
//!   cost 10 (the same statement), and a route of cost 1 whose handler
//!   charges 9 more through the meter (a second statement).
//!
//! Run: `cargo bench --bench cost`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU64;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response, StatusCode};
use tokengate::core::{KeyId, Meter, UseLimit};
use tokengate::sqlite::SqliteStore;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, MemoryStore, Pepper,
    Requirement, ScopePolicy, TokenHasher, TokenStore,
};
use tower::{Layer, Service, service_fn};

#[path = "support/gate.rs"]
mod gate;
use gate::{gate_over, issue_with, send_to};

/// A Gate whose policy has costs (`/notes` 1, `/notes/export` 10,
/// `/notes/rows` 1 and its handler charges 9 more), late charges on.
fn costly<St: TokenStore>(
    cache: CachedStore<St>,
    hasher: TokenHasher,
) -> impl Service<Request<String>, Response = Response<impl Sized>, Error = Infallible, Future: Send>
+ Clone {
    let read = || Requirement::all(["notes:read"]).unwrap();
    let policy = ScopePolicy::builder()
        .route([Method::GET], "/notes", read())
        .route([Method::GET], "/notes/export", read())
        .route([Method::GET], "/notes/rows", read())
        .cost([Method::GET], "/notes/export", 10)
        .build()
        .unwrap();
    let authenticate = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    let gate = Gate::new(authenticate, EnforceScopeLayer::new(policy)).late_charges();
    gate.layer(service_fn(|request: Request<String>| async move {
        let mut response = Response::new(String::new());
        if request.uri().path() == "/notes/rows" {
            let meter = request.extensions().get::<Meter>().unwrap();
            if meter.charge(9).await.is_err() {
                *response.status_mut() = StatusCode::PAYMENT_REQUIRED;
            }
        }
        Ok::<_, Infallible>(response)
    }))
}

fn cost(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tokengate-bench-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = CacheConfig::default().ttl(Duration::from_secs(3600));
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let memory = CachedStore::new(MemoryStore::new(), config.clone());
    let sqlite = CachedStore::new(SqliteStore::create(&dir.join("tokens.db")).unwrap(), config);
    let billion = Some(UseLimit::new(NonZeroU64::new(1_000_000_000).unwrap()));
    let (one, two, four, metered) = runtime.block_on(async {
        (
            issue_with(&memory, &hasher, None, 1).await,
            issue_with(&memory, &hasher, None, 2).await,
            issue_with(&memory, &hasher, None, 4).await,
            issue_with(&sqlite, &hasher, billion, 1).await,
        )
    });
    let baseline = gate_over(memory.clone(), hasher.clone(), None);
    let with_costs = costly(memory, hasher.clone());
    let on_file = costly(sqlite, hasher);
    let left = |response: &Response<_>| -> u64 {
        response.headers()["token-uses-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // What each measured request spends, checked once.
    let before = left(&send_to(&runtime, &on_file, &metered, "/notes"));
    let after = left(&send_to(&runtime, &on_file, &metered, "/notes/export"));
    assert_eq!(before - after, 10, "an export costs 10");
    let rows = send_to(&runtime, &on_file, &metered, "/notes/rows");
    assert_eq!(rows.status(), StatusCode::OK);

    let mut group = c.benchmark_group("cost");
    group.bench_function("memory/baseline_gate", |b| {
        b.iter(|| black_box(send_to(&runtime, &baseline, &one, "/notes")));
    });
    group.bench_function("memory/gate_with_costs_cost_1", |b| {
        b.iter(|| black_box(send_to(&runtime, &with_costs, &one, "/notes")));
    });
    group.bench_function("memory/gate_with_costs_cost_10", |b| {
        b.iter(|| black_box(send_to(&runtime, &with_costs, &one, "/notes/export")));
    });
    group.bench_function("memory/baseline_gate_two_quotas", |b| {
        b.iter(|| black_box(send_to(&runtime, &baseline, &two, "/notes")));
    });
    group.bench_function("memory/baseline_gate_four_quotas", |b| {
        b.iter(|| black_box(send_to(&runtime, &baseline, &four, "/notes")));
    });
    group.bench_function("sqlite/cost_1", |b| {
        b.iter(|| black_box(send_to(&runtime, &on_file, &metered, "/notes")));
    });
    group.bench_function("sqlite/cost_10", |b| {
        b.iter(|| black_box(send_to(&runtime, &on_file, &metered, "/notes/export")));
    });
    group.bench_function("sqlite/cost_1_and_9_after_the_fact", |b| {
        b.iter(|| black_box(send_to(&runtime, &on_file, &metered, "/notes/rows")));
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, cost);
criterion_main!(benches);
