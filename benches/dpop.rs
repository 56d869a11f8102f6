//! What proof of possession costs a Gate request: the same GET through
//! the same Gate with a bearer token (the baseline), a DPoP-bound token
//! with an ES256 proof and with an Ed25519 proof, in one run. Proofs are
//! signed outside the measured time (each request needs a fresh one:
//! a proof is refused the second time); what is measured is the
//! server's whole work: the proof read, its signature verified, its
//! claims checked, its `jti` recorded, the bound key compared.
//!
//! Then the replay record's memory: the growth of the process's resident
//! set per proof recorded, over 200,000 proofs admitted through the Gate,
//! each signed just before its request (everything else a request
//! allocates is freed and reused).
//!
//! Run: `cargo bench --bench dpop`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tokengate::authenticate::Dpop;
use tokengate::authenticate::dpop::DpopSigner;
use tokengate::core::{Binding, KeyId, RateQuota};
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, Lifecycle, MemoryStore,
    Pepper, ScopePolicy, TokenHasher, TokenSpec,
};
use tower::{Layer, Service, service_fn};

#[path = "support/rss.rs"]
mod rss;
use rss::rss;

const URL: &str = "http://api.test/notes";

type Svc = tower::util::BoxCloneService<Request<()>, Response<String>, Infallible>;

struct Bench {
    service: Svc,
    runtime: tokio::runtime::Runtime,
}

/// The tokens: a bearer one, and one bound to each key.
struct Tokens {
    bearer: String,
    es256: (DpopSigner, String),
    ed25519: (DpopSigner, String),
}

fn setup(capacity: usize) -> (Bench, Tokens) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let config = CacheConfig::default().ttl(std::time::Duration::from_secs(3600));
    let cache = CachedStore::new(MemoryStore::new(), config);
    let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
    let unbound = std::num::NonZeroU32::MAX;
    let quota = RateQuota::new(unbound, std::time::Duration::from_secs(1), unbound).unwrap();
    let issue = |binding: Option<Binding>| {
        let mut spec = TokenSpec::new("bench", "alice")
            .scopes(["notes:read".parse().unwrap()])
            .audiences(["notes".parse().unwrap()])
            .rate_quota(quota);
        if let Some(binding) = binding {
            spec = spec.binding(binding);
        }
        let issued = runtime.block_on(lifecycle.issue(spec)).unwrap();
        issued.token.expose_secret().to_owned()
    };
    let (es, ed) = (DpopSigner::generate_es256(), DpopSigner::generate_ed25519());
    let bearer = issue(None);
    let es_token = issue(Some(Binding::Dpop(es.jkt())));
    let ed_token = issue(Some(Binding::Dpop(ed.jkt())));
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let authenticate = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap())
        .dpop(Dpop::new().replay_capacity(capacity));
    let service = Gate::new(authenticate, EnforceScopeLayer::new(policy)).layer(service_fn(
        |_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) },
    ));
    let service = tower::util::BoxCloneService::new(
        tower::util::MapResponseLayer::new(|r: Response<_>| r.map(|_| String::new()))
            .layer(service),
    );
    (
        Bench { service, runtime },
        Tokens {
            bearer,
            es256: (es, es_token),
            ed25519: (ed, ed_token),
        },
    )
}

fn request(authorization: &str, proof: Option<&str>) -> Request<()> {
    let mut request = Request::get("/notes")
        .header("host", "api.test")
        .header("authorization", authorization)
        .extension(tokengate::ipfilter::PeerAddr(([127, 0, 0, 1], 1).into()));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    request.body(()).unwrap()
}

fn send(bench: &mut Bench, request: Request<()>) {
    let response = bench.runtime.block_on(bench.service.call(request)).unwrap();
    assert_eq!(response.status(), 200, "the measured request was refused");
}

fn dpop(c: &mut Criterion) {
    let (mut bench, tokens) = setup(20_000_000);
    let mut group = c.benchmark_group("dpop");
    let bearer = format!("Bearer {}", tokens.bearer);
    group.bench_function("bearer", |b| {
        b.iter_batched(
            || request(&bearer, None),
            |request| send(&mut bench, request),
            BatchSize::SmallInput,
        );
    });
    for (name, (key, token)) in [("es256", &tokens.es256), ("ed25519", &tokens.ed25519)] {
        let auth = format!("DPoP {token}");
        group.bench_function(format!("dpop_{name}"), |b| {
            b.iter_batched(
                || request(&auth, Some(&key.proof("GET", URL, token, None))),
                |request| send(&mut bench, request),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn replay_memory(_: &mut Criterion) {
    const PROOFS: usize = 200_000;
    let (mut bench, tokens) = setup(PROOFS * 2);
    let (key, token) = &tokens.ed25519;
    let auth = format!("DPoP {token}");
    // Some requests first: the cache entry, the principal, the runtime and
    // the allocator's arenas are made before measuring.
    for _ in 0..1_000 {
        send(
            &mut bench,
            request(&auth, Some(&key.proof("GET", URL, token, None))),
        );
    }
    let before = rss();
    for _ in 0..PROOFS {
        send(
            &mut bench,
            request(&auth, Some(&key.proof("GET", URL, token, None))),
        );
    }
    let after = rss();
    #[allow(clippy::cast_precision_loss, reason = "a report")]
    let per_proof = after.saturating_sub(before) as f64 / PROOFS as f64;
    #[allow(clippy::print_stdout, reason = "the bench's report")]
    {
        println!("dpop/replay_memory: {per_proof:.1} bytes per proof recorded ({PROOFS} proofs)");
    }
}

// The memory first: a fresh process's heap, not the last group's freed one.
criterion_group!(benches, replay_memory, dpop);
criterion_main!(benches);
