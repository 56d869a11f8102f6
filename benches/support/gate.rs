//! A Gate around a handler over any store, and a request through it on
//! a runtime: shared by the benches of usage-limited tokens.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tokengate::core::{RateQuota, UseLimit};
use tokengate::store::{SharedUses, TokenAdmin};
use tokengate::{
    AuthenticateLayer, CachedStore, EnforceScopeLayer, Gate, Lifecycle, ScopePolicy, TokenHasher,
    TokenSpec, TokenStore,
};
use tower::{Layer, Service, service_fn};

/// A Gate (`/notes` read/write by `notes`) over `cache`, around a
/// handler; usage-limited tokens lease their uses in `shared` if given.
pub fn gate_over<St: TokenStore>(
    cache: CachedStore<St>,
    hasher: TokenHasher,
    shared: Option<Arc<dyn SharedUses>>,
) -> impl Service<Request<String>, Response = Response<impl Sized>, Error = Infallible, Future: Send>
+ Clone {
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let mut authenticate = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    if let Some(shared) = shared {
        authenticate = authenticate.shared_uses(shared);
    }
    Gate::new(authenticate, EnforceScopeLayer::new(policy)).layer(service_fn(
        |_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) },
    ))
}

/// One GET /notes with `bearer` through `service`, on `runtime`; it must
/// be admitted (a bench of refusals would measure the wrong path).
pub fn send<S, B>(runtime: &tokio::runtime::Runtime, service: &S, bearer: &str) -> Response<B>
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible> + Clone,
{
    send_to(runtime, service, bearer, "/notes")
}

/// [`send`] to GET `path`.
pub fn send_to<S, B>(
    runtime: &tokio::runtime::Runtime,
    service: &S,
    bearer: &str,
    path: &str,
) -> Response<B>
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible> + Clone,
{
    let request = Request::get(path)
        .header("authorization", bearer)
        .extension(tokengate::ipfilter::PeerAddr(([127, 0, 0, 1], 1).into()))
        .body(String::new())
        .unwrap();
    let response = runtime
        .block_on(tower::ServiceExt::oneshot(service.clone(), request))
        .unwrap();
    assert_eq!(response.status(), 200, "the measured request was refused");
    response
}

pub async fn issue<St: TokenStore + TokenAdmin>(
    cache: &CachedStore<St>,
    hasher: &TokenHasher,
    limit: Option<UseLimit>,
) -> String {
    issue_with(cache, hasher, limit, 1).await
}

/// [`issue`] with `quotas` quotas that never bind (1 to 4).
pub async fn issue_with<St: TokenStore + TokenAdmin>(
    cache: &CachedStore<St>,
    hasher: &TokenHasher,
    limit: Option<UseLimit>,
    quotas: u32,
) -> String {
    // Quotas that never bind: the Gate's default (50/s) would answer
    // most measured requests with 429.
    let unbound = std::num::NonZeroU32::MAX;
    let mut spec = TokenSpec::new("bench", "alice")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()]);
    for period in 1..=u64::from(quotas) {
        let every = std::time::Duration::from_secs(period);
        spec = spec.rate_quota(RateQuota::new(unbound, every, unbound).unwrap());
    }
    if let Some(limit) = limit {
        spec = spec.uses(limit);
    }
    let issued = Lifecycle::new(cache.clone(), hasher.clone())
        .issue(spec)
        .await
        .unwrap();
    format!("Bearer {}", issued.token.expose_secret())
}
