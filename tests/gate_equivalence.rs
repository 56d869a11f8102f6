//! The `Gate` runs its seven checks after audit as one `Chain` in one
//! `CheckService`; stacked by hand, the same layers run each check in a
//! `CheckService` of its own, in the Gate's order (ARCHITECTURE.md). Both must answer every
//! request exactly alike: the same status, headers and body, refusals
//! included (an outer layer's headers reach an inner layer's refusal), and
//! the same audit record.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokengate::audit::{AuditEvent, AuditLayer};
use tokengate::authenticate::PublicPaths;
use tokengate::check::{Chain, CheckLayer, Shield};
use tokengate::core::{KeyId, ManualClock, RateQuota, Token};
use tokengate::ipfilter::{IpFilterLayer, IpRules, PeerAddr, ResolveClientIpLayer};
use tokengate::rate::{MissingKey, RateLimitLayer};
use tokengate::store::testing::ProbeStore;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, Lifecycle, Pepper,
    Requirement, ScopePolicy, TokenHasher, TokenSpec,
};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

type Stack = BoxCloneService<Request<Full<Bytes>>, Response<String>, Infallible>;

fn quota(count: u32, burst: u32) -> RateQuota {
    let n = |v| NonZeroU32::new(v).unwrap();
    RateQuota::new(n(count), Duration::from_secs(60), n(burst)).unwrap()
}

fn policy() -> ScopePolicy {
    ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route([http::Method::GET], "/healthz", Requirement::Public)
        .build()
        .unwrap()
}

/// One stack's audit records, in order.
type Records = Arc<Mutex<Vec<AuditEvent>>>;

fn audit(records: &Records) -> AuditLayer<impl tokengate::audit::AuditSink + use<>> {
    let records = Arc::clone(records);
    AuditLayer::new(move |event: AuditEvent| records.lock().unwrap().push(event))
}

/// A handler that answers 200 with a body and a header of its own.
fn handler() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_: Request<Full<Bytes>>| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"handled")));
        response
            .headers_mut()
            .insert("x-handler", http::HeaderValue::from_static("yes"));
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// `service` with its response bodies collected to strings.
fn boxed<S, B>(service: S) -> Stack
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
{
    BoxCloneService::new(service.and_then(|response: Response<B>| async move {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_or_else(|_| Bytes::new(), |c| c.to_bytes());
        Ok(Response::from_parts(
            parts,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }))
}

struct Pair {
    gate: Stack,
    stacked: Stack,
    gate_records: Records,
    stacked_records: Records,
    tokens: Tokens,
    store: ProbeStore,
}

struct Tokens {
    read: Token,
    write: Token,
    tight: Token,
    elsewhere: Token,
    fenced: Token,
    unknown: Token,
    /// Stored, and never sent before the store goes down.
    unseen: Token,
}

/// The same configuration twice: as a `Gate`, and stacked by hand (audit,
/// client IP and IP filter as layers, then the per-address limit shielding
/// authentication, the token limit and the scopes). Each gets its own verifying cache (over one store) and
/// its own rate state, so neither warms or spends the other's.
async fn pair() -> Pair {
    let clock = ManualClock::new();
    let probe = ProbeStore::default();
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let auth = || {
        let cache = CachedStore::with_clock(probe.clone(), CacheConfig::default(), clock.shared());
        AuthenticateLayer::new(cache, hasher.clone(), "notes".parse().unwrap())
            .clock(clock.shared())
            .public(PublicPaths::new().exact("/healthz"))
    };
    let issuer = Lifecycle::new(
        CachedStore::with_clock(probe.clone(), CacheConfig::default(), clock.shared()),
        hasher.clone(),
    )
    .with_clock(clock.shared());
    let issue = |spec: TokenSpec| {
        let issuer = &issuer;
        async move { issuer.issue(spec).await.unwrap().token }
    };
    let spec = |scopes: &str| {
        TokenSpec::new("test", "alice")
            .scopes(scopes.split_whitespace().map(|s| s.parse().unwrap()))
            .audiences(["notes".parse().unwrap()])
    };
    let tokens = Tokens {
        read: issue(spec("notes:read")).await,
        write: issue(spec("notes:read notes:write")).await,
        tight: issue(spec("notes:read").rate_quota(quota(1, 2))).await,
        elsewhere: issue(
            TokenSpec::new("test", "bob")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["billing".parse().unwrap()]),
        )
        .await,
        fenced: issue(spec("notes:read").allowed_networks(["10.0.0.0/8".parse().unwrap()])).await,
        unseen: issue(spec("notes:read")).await,
        unknown: {
            // Well formed, checksum right, never stored.
            let other = Lifecycle::new(
                CachedStore::new(ProbeStore::default(), CacheConfig::default()),
                hasher.clone(),
            );
            other.issue(spec("notes:read")).await.unwrap().token
        },
    };

    let rules = || IpRules::deny_list(["198.51.100.0/24"]).unwrap();
    let ip_quota = quota(1, 12);
    let token_rate = || {
        RateLimitLayer::per_token(quota(100, 100))
            .missing_key(MissingKey::Skip)
            .clock(clock.shared())
    };

    let gate_records = Records::default();
    let gate = Gate::new(auth(), EnforceScopeLayer::new(policy()))
        .audit(audit(&gate_records))
        .client_ip(ResolveClientIpLayer::new())
        .ip_filter(IpFilterLayer::new(rules()))
        .pre_auth_quota(ip_quota)
        .token_rate(token_rate())
        .clock(clock.shared());

    let stacked_records = Records::default();
    let stacked = ServiceBuilder::new()
        .layer(audit(&stacked_records))
        .layer(ResolveClientIpLayer::new())
        .layer(IpFilterLayer::new(rules()))
        // The per-address limit shields the rest (charged only on a cache
        // miss or a 4xx): not a layer of its own, so one check here.
        .layer(CheckLayer::new(Shield::new(
            RateLimitLayer::per_client_ip(ip_quota)
                .success_headers(false)
                .clock(clock.shared()),
            Chain::new(
                auth(),
                Chain::new(token_rate(), EnforceScopeLayer::new(policy())),
            ),
        )));

    Pair {
        gate: boxed(gate.layer(handler())),
        stacked: boxed(stacked.service(handler())),
        gate_records,
        stacked_records,
        tokens,
        store: probe,
    }
}

/// A request from `peer` (none: no peer address) with `headers`.
fn request(
    method: &str,
    path: &str,
    peer: Option<&str>,
    headers: &[(&str, String)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let mut request = builder.body(Full::new(Bytes::new())).unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(PeerAddr(addr));
    }
    request
}

fn bearer(token: &Token) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", token.expose_secret()))
}

/// What must be equal between the two stacks' answers.
fn answer(response: &Response<String>) -> (StatusCode, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = headers(response.headers());
    headers.sort();
    (response.status(), headers, response.body().clone())
}

fn headers(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// What must be equal between the two stacks' audit records.
fn record(e: &AuditEvent) -> String {
    format!(
        "{:?} {:?} {} {} {:?} {:?} {:?} {:?} {} {:?} {:?}",
        e.client_address,
        e.method,
        e.path,
        e.status,
        e.token_id,
        e.subject,
        e.decision,
        e.reason,
        e.ending.as_str(),
        e.grpc_status,
        e.truncated,
    )
}

#[tokio::test]
async fn the_gate_answers_every_request_as_the_stacked_layers_do() {
    let p = pair().await;
    let t = &p.tokens;
    let peer = Some("192.0.2.10:5000");
    let grpc = ("content-type", "application/grpc".to_owned());
    let (inside, denied, tight) = (
        Some("10.1.2.3:5000"),
        Some("198.51.100.7:5000"),
        Some("192.0.2.20:1"),
    );
    let auth = |token: &Token| vec![bearer(token)];
    let basic = ("authorization", "Basic eA==".to_owned());
    let bad_sum = (
        "authorization",
        "Bearer tg_notatokenatallnotatokenatall000000".to_owned(),
    );
    let list = "/notes.v1.Notes/List";
    // One request a row: what it is, method, path, peer address, headers.
    #[rustfmt::skip]
    let cases = [
        ("no token", "GET", "/notes", peer, vec![]),
        ("malformed header", "GET", "/notes", peer, vec![("authorization", "Bearer".into())]),
        ("two credentials", "GET", "/notes", peer, vec![bearer(&t.read), basic]),
        ("bad checksum", "GET", "/notes", peer, vec![bad_sum]),
        ("unknown token (cache miss, store miss)", "GET", "/notes", peer, auth(&t.unknown)),
        ("read token reads (miss, then the rest)", "GET", "/notes", peer, auth(&t.read)),
        ("read token reads (cache hit)", "GET", "/notes", peer, auth(&t.read)),
        ("read token writes", "POST", "/notes", peer, auth(&t.read)),
        ("write token writes", "POST", "/notes", peer, auth(&t.write)),
        ("unmapped route", "GET", "/admin", peer, auth(&t.write)),
        ("public route, no token", "GET", "/healthz", peer, vec![]),
        ("public route with a token", "GET", "/healthz", peer, auth(&t.read)),
        ("wrong audience", "GET", "/notes", peer, auth(&t.elsewhere)),
        ("token fenced to another network", "GET", "/notes", peer, auth(&t.fenced)),
        ("token fenced, client inside", "GET", "/notes", inside, auth(&t.fenced)),
        ("denied client address", "GET", "/notes", denied, auth(&t.read)),
        ("no peer address", "GET", "/notes", None, auth(&t.read)),
        ("gRPC without a token", "POST", list, peer, vec![grpc.clone()]),
        ("gRPC read token, unmapped method", "POST", list, peer, vec![grpc, bearer(&t.read)]),
        ("tight token 1", "GET", "/notes", tight, auth(&t.tight)),
        ("tight token 2", "GET", "/notes", tight, auth(&t.tight)),
        ("tight token spent", "GET", "/notes", tight, auth(&t.tight)),
        ("tight token spent, writing", "POST", "/notes", tight, auth(&t.tight)),
    ]
    .map(|(name, method, path, peer, headers)| (name, request(method, path, peer, &headers)));
    let mut statuses = Vec::new();
    for (name, request) in cases {
        let (parts, body) = request.into_parts();
        let copy = {
            let mut r = Request::from_parts(parts.clone(), body.clone());
            *r.extensions_mut() = parts.extensions.clone();
            r
        };
        let gate = p
            .gate
            .clone()
            .oneshot(Request::from_parts(parts, body))
            .await
            .unwrap();
        let stacked = p.stacked.clone().oneshot(copy).await.unwrap();
        assert_eq!(answer(&gate), answer(&stacked), "{name}");
        statuses.push((name, gate.status().as_u16()));
    }
    // The cases do reach every kind of answer.
    let status_of = |case: &str| statuses.iter().find(|(n, _)| *n == case).unwrap().1;
    assert_eq!(status_of("no token"), 401);
    assert_eq!(status_of("two credentials"), 400);
    assert_eq!(status_of("read token reads (cache hit)"), 200);
    assert_eq!(status_of("read token writes"), 403);
    assert_eq!(status_of("write token writes"), 200);
    assert_eq!(status_of("public route, no token"), 200);
    assert_eq!(status_of("token fenced, client inside"), 200);
    assert_eq!(status_of("denied client address"), 403);
    assert_eq!(
        status_of("gRPC without a token"),
        200,
        "trailers-only refusal"
    );
    assert_eq!(status_of("tight token spent"), 429);

    let gate_records: Vec<String> = p.gate_records.lock().unwrap().iter().map(record).collect();
    let stacked_records: Vec<String> = p
        .stacked_records
        .lock()
        .unwrap()
        .iter()
        .map(record)
        .collect();
    assert_eq!(gate_records.len(), statuses.len(), "one record per request");
    assert_eq!(gate_records, stacked_records);
}

#[tokio::test]
async fn the_pre_auth_limit_spares_cache_hits_and_stops_a_flood_of_bad_tokens() {
    let p = pair().await;
    // A token the cache knows: never charged to its address, so 14
    // requests from one address with a burst of 12 all pass.
    let peer = Some("203.0.113.9:7000");
    for i in 0..14 {
        let make = || request("GET", "/notes", peer, &[bearer(&p.tokens.read)]);
        let gate = p.gate.clone().oneshot(make()).await.unwrap();
        let stacked = p.stacked.clone().oneshot(make()).await.unwrap();
        assert_eq!(answer(&gate), answer(&stacked), "request {i}");
        assert_eq!(gate.status(), StatusCode::OK, "request {i}");
    }

    // A flood of a token the store does not know, from another address:
    // each refusal is charged; past the burst the answer is 429, and the
    // store was asked once per stack (then the negative cache answers).
    let flood = Some("203.0.113.10:7000");
    let before = p.store.lookups();
    let mut statuses = Vec::new();
    for i in 0..14 {
        let make = || request("GET", "/notes", flood, &[bearer(&p.tokens.unknown)]);
        let gate = p.gate.clone().oneshot(make()).await.unwrap();
        let stacked = p.stacked.clone().oneshot(make()).await.unwrap();
        assert_eq!(answer(&gate), answer(&stacked), "request {i}");
        if gate.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(gate.headers().contains_key("retry-after"));
        }
        statuses.push(gate.status().as_u16());
    }
    assert_eq!(statuses[..12], [401; 12]);
    assert_eq!(statuses[12..], [429, 429]);
    assert_eq!(p.store.lookups() - before, 2, "one lookup per stack");

    // Distinct unknown tokens, each a cache miss: charged before the store
    // is asked; past the burst, 429 and the store is not asked at all.
    let misses = Some("203.0.113.12:7000");
    let stranger = Lifecycle::new(
        CachedStore::new(ProbeStore::default(), CacheConfig::default()),
        TokenHasher::new(Pepper::generate(KeyId::new(1))),
    );
    let before = p.store.lookups();
    let mut statuses = Vec::new();
    for _ in 0..14 {
        let spec = TokenSpec::new("x", "mallory")
            .scopes(["notes:read".parse().unwrap()])
            .audiences(["notes".parse().unwrap()]);
        let token = stranger.issue(spec).await.unwrap().token;
        let response = p
            .gate
            .clone()
            .oneshot(request("GET", "/notes", misses, &[bearer(&token)]))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..12], [401; 12]);
    assert_eq!(statuses[12..], [429, 429]);
    assert_eq!(
        p.store.lookups() - before,
        12,
        "the refused misses never reached the store"
    );

    // A missing token is a refusal too: charged, then limited.
    let bare = Some("203.0.113.11:7000");
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..14 {
            let response = p
                .gate
                .clone()
                .oneshot(request("GET", "/notes", bare, &[]))
                .await
                .unwrap();
            out.push(response.status().as_u16());
        }
        out
    };
    assert_eq!(statuses[..12], [401; 12]);
    assert_eq!(statuses[12..], [429, 429]);
}

#[tokio::test]
async fn a_store_failure_on_a_cache_miss_is_answered_alike() {
    let p = pair().await;
    let peer = Some("192.0.2.30:1");
    // A cached token keeps working while the store is down; a token the
    // caches have not seen gets 503 from both, through the lookup path.
    let warm = || request("GET", "/notes", peer, &[bearer(&p.tokens.read)]);
    for stack in [&p.gate, &p.stacked] {
        let ok = stack.clone().oneshot(warm()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    p.store.set_failing(true);
    let cold = || request("GET", "/notes", peer, &[bearer(&p.tokens.unseen)]);
    let gate = p.gate.clone().oneshot(cold()).await.unwrap();
    let stacked = p.stacked.clone().oneshot(cold()).await.unwrap();
    assert_eq!(gate.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer(&gate), answer(&stacked));
    let gate = p.gate.clone().oneshot(warm()).await.unwrap();
    let stacked = p.stacked.clone().oneshot(warm()).await.unwrap();
    assert_eq!(gate.status(), StatusCode::OK);
    assert_eq!(answer(&gate), answer(&stacked));
    let records = |r: &Records| r.lock().unwrap().iter().map(record).collect::<Vec<_>>();
    assert_eq!(records(&p.gate_records), records(&p.stacked_records));
    assert!(
        records(&p.gate_records)[1].contains("store_unavailable"),
        "{:?}",
        records(&p.gate_records)
    );
}
