//! The layer's decisions, request by request, over an in-memory store.
//! Real-server tests for axum, tonic and hyper live in the workspace's `tests/`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokengate_check::CheckBody;
use tokengate_core::{
    ClientIp, Clock, Denial, InvalidReason, IpReason, KeyId, MalformedReason, Pepper, Principal,
    RequestTrail, Token, TokenFormat, TokenFormatError, TokenHasher, TokenId,
};
use tokengate_store::testing::ProbeStore;
use tokengate_store::{Expiry, TokenSpec};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use tokengate_cache::testing::World;

mod dpop;

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<CheckBody<Full<Bytes>>>, Infallible>;

struct Fixture {
    world: World,
    layer: AuthenticateLayer<ProbeStore>,
}

impl std::ops::Deref for Fixture {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

fn fixture() -> Fixture {
    let world = World::new();
    let layer = AuthenticateLayer::new(
        world.cache.clone(),
        world.hasher().clone(),
        "notes".parse().unwrap(),
    )
    .clock(world.clock.shared())
    .public(PublicPaths::new().exact("/healthz").grpc_health());
    Fixture { world, layer }
}

/// A handler that echoes the principal's subject, and the URI it saw.
fn service(layer: &AuthenticateLayer<ProbeStore>) -> Svc {
    let handler = service_fn(|request: Request<Full<Bytes>>| async move {
        let subject = request
            .extensions()
            .get::<Principal>()
            .map_or("anonymous".to_owned(), |p| p.subject().to_owned());
        let body = format!("{subject} {}", request.uri());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    BoxCloneService::new(layer.layer(handler))
}

fn spec() -> TokenSpec {
    TokenSpec::new("t", "alice")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()])
}

impl Fixture {
    async fn issue(&self, spec: TokenSpec) -> (Token, TokenId) {
        self.world.issue_spec(spec).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Outcome {
        Outcome::of(service(&self.layer).oneshot(request).await.unwrap()).await
    }

    async fn send_token(&self, token: &str) -> Outcome {
        self.send(bearer(token)).await
    }
}

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

fn bearer(token: &str) -> Request<Full<Bytes>> {
    get("/notes")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap()
}

#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    headers: http::HeaderMap,
    denial: Option<Denial>,
    body: String,
}

impl Outcome {
    async fn of(response: Response<CheckBody<Full<Bytes>>>) -> Self {
        let denial = response.extensions().get::<Denial>().cloned();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Self {
            status: parts.status,
            headers: parts.headers,
            denial,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn challenge(&self) -> Option<&str> {
        self.headers
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
    }
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    let out = f.send_token(token.expose_secret()).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "alice /notes");
    assert!(out.denial.is_none());
}

#[tokio::test]
async fn no_credential_is_401_with_a_bare_challenge() {
    let f = fixture();
    let out = f.send(get("/notes").body(Full::default()).unwrap()).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.challenge(), Some(r#"Bearer realm="tokengate""#));
    assert_eq!(out.denial, Some(Denial::MissingToken));
}

#[tokio::test]
async fn other_schemes_are_401_without_an_error_code() {
    let f = fixture();
    let request = get("/notes")
        .header(AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Full::default())
        .unwrap();
    let out = f.send(request).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.challenge(), Some(r#"Bearer realm="tokengate""#));
}

#[tokio::test]
async fn two_authorization_headers_are_400_even_if_both_are_valid() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    let value = format!("Bearer {}", token.expose_secret());
    let request = get("/notes")
        .header(AUTHORIZATION, &value)
        .header(AUTHORIZATION, &value)
        .body(Full::default())
        .unwrap();
    let out = f.send(request).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        out.challenge(),
        Some(r#"Bearer realm="tokengate", error="invalid_request""#)
    );
    assert_eq!(
        out.denial,
        Some(Denial::MalformedRequest(
            MalformedReason::MultipleCredentials
        ))
    );
    assert_eq!(f.probe.lookups(), 0);
}

#[tokio::test]
async fn odd_bearer_values_get_deterministic_400_or_401_and_no_lookup() {
    let f = fixture();
    let cases = [
        ("Bearer", StatusCode::BAD_REQUEST),
        ("Bearer ", StatusCode::BAD_REQUEST),
        ("Bearer  tg_x", StatusCode::BAD_REQUEST),
        ("Bearer\ttg_x", StatusCode::BAD_REQUEST),
        ("Bearer tg_x trailing", StatusCode::BAD_REQUEST),
        ("Bearer tg_!!!", StatusCode::UNAUTHORIZED),
        ("Bearer not-a-token", StatusCode::UNAUTHORIZED),
        ("bearer tg_abc", StatusCode::UNAUTHORIZED),
    ];
    for (value, status) in cases {
        for _ in 0..2 {
            let request = get("/notes")
                .header(AUTHORIZATION, value)
                .body(Full::default())
                .unwrap();
            assert_eq!(f.send(request).await.status, status, "{value:?}");
        }
    }
    let raw = get("/notes")
        .header(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer tg_\xfe\xff").unwrap(),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(f.send(raw).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(f.probe.lookups(), 0);
}

#[tokio::test]
async fn a_wrong_checksum_is_401_with_zero_store_lookups() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    let mut text = token.expose_secret().to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'A' { 'B' } else { 'A' });
    let out = f.send_token(&text).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        out.denial,
        Some(Denial::InvalidToken(InvalidReason::Malformed(
            TokenFormatError::BadChecksum
        )))
    );
    assert_eq!(f.probe.lookups(), 0);
}

#[tokio::test]
async fn unknown_revoked_expired_and_wrong_audience_look_the_same_to_the_client() {
    let f = fixture();
    let (revoked, revoked_id) = f.issue(spec()).await;
    f.lifecycle.revoke(&revoked_id).await.unwrap();
    let (expired, _) = f
        .issue(spec().expiry(Expiry::After(Duration::from_secs(5))))
        .await;
    let (other, _) = f
        .issue(
            TokenSpec::new("t", "bob")
                .scopes(["billing:read".parse().unwrap()])
                .audiences(["billing".parse().unwrap()]),
        )
        .await;
    let unknown = TokenFormat::default().generate();
    f.clock.advance(Duration::from_secs(5));

    let mut outcomes = Vec::new();
    for token in [&unknown, &revoked, &expired, &other] {
        outcomes.push(f.send_token(token.expose_secret()).await);
    }
    let reasons: Vec<_> = outcomes.iter().map(|o| o.denial.clone().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            Denial::InvalidToken(InvalidReason::Unknown),
            Denial::InvalidToken(InvalidReason::Revoked),
            Denial::InvalidToken(InvalidReason::Expired),
            Denial::InvalidToken(InvalidReason::WrongAudience),
        ]
    );
    for out in &outcomes {
        assert_eq!(out.status, StatusCode::UNAUTHORIZED);
        assert_eq!(out.body, outcomes[0].body);
        assert_eq!(out.headers, outcomes[0].headers);
    }
}

#[tokio::test]
async fn a_revoked_token_fails_on_the_very_next_request() {
    let f = fixture();
    let (token, id) = f.issue(spec()).await;
    assert_eq!(
        f.send_token(token.expose_secret()).await.status,
        StatusCode::OK
    );
    f.lifecycle.revoke(&id).await.unwrap();
    assert_eq!(
        f.send_token(token.expose_secret()).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_store_outage_is_503_never_401() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    f.probe.set_failing(true);
    let out = f.send_token(token.expose_secret()).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(out.denial, Some(Denial::StoreUnavailable));
    f.probe.set_failing(false);
    assert_eq!(
        f.send_token(token.expose_secret()).await.status,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_times_out_as_503() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    f.probe.set_hanging(true);
    let layer = f.layer.clone().lookup_timeout(Duration::from_millis(200));
    let response = service(&layer)
        .oneshot(bearer(token.expose_secret()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_uses_make_one_lookup() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    f.probe.hold_next_lookup();
    let svc = service(&f.layer);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            let request = bearer(token.expose_secret());
            tokio::spawn(async move { svc.oneshot(request).await.unwrap().status() })
        })
        .collect();
    f.probe.held().await;
    f.probe.release();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(f.probe.lookups(), 1);
}

#[tokio::test]
async fn a_token_issued_after_a_flood_of_random_tokens_works() {
    let f = fixture();
    for _ in 0..2_000 {
        let random = TokenFormat::default().generate();
        assert_eq!(
            f.send_token(random.expose_secret()).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let (token, _) = f.issue(spec()).await;
    assert_eq!(
        f.send_token(token.expose_secret()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn networks_written_in_ipv4_mapped_form_match_ipv4_clients() {
    let f = fixture();
    let (token, _) = f
        .issue(spec().allowed_networks(["::ffff:10.0.0.0/104".parse().unwrap()]))
        .await;
    let from = |ip: &str| {
        let mut request = bearer(token.expose_secret());
        RequestTrail::note_client_ip(request.extensions_mut(), ClientIp::new(ip.parse().unwrap()));
        request
    };
    assert_eq!(f.send(from("10.1.2.3")).await.status, StatusCode::OK);
    assert_eq!(f.send(from("::ffff:10.9.9.9")).await.status, StatusCode::OK);
    assert_eq!(
        f.send(from("11.0.0.1")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn network_bound_tokens_need_a_client_ip_inside_their_networks() {
    let f = fixture();
    let (token, _) = f
        .issue(spec().allowed_networks(["10.0.0.0/8".parse().unwrap()]))
        .await;
    let with_ip = |ip: Option<&str>| {
        let mut request = bearer(token.expose_secret());
        if let Some(ip) = ip {
            RequestTrail::note_client_ip(
                request.extensions_mut(),
                ClientIp::new(ip.parse().unwrap()),
            );
        }
        request
    };
    assert_eq!(
        f.send(with_ip(Some("10.1.2.3"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        f.send(with_ip(Some("::ffff:10.1.2.3"))).await.status,
        StatusCode::OK
    );
    // Outside its networks, a token gets the answer of any bad token: a
    // distinct one would tell the holder of a stolen token that it is real.
    let outside = f.send(with_ip(Some("192.0.2.1"))).await;
    let unknown_token = f
        .send(bearer(TokenFormat::default().generate().expose_secret()))
        .await;
    assert_eq!(outside.status, StatusCode::UNAUTHORIZED);
    assert_eq!(outside.body, unknown_token.body);
    assert_eq!(
        outside.denial,
        Some(Denial::InvalidToken(InvalidReason::OutsideNetworks))
    );
    let unknown = f.send(with_ip(None)).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(
        unknown.denial,
        Some(Denial::IpForbidden(IpReason::Unresolved))
    );
}

#[tokio::test]
async fn public_routes_pass_without_a_credential_and_without_a_principal() {
    let f = fixture();
    let out = f.send(get("/healthz").body(Full::default()).unwrap()).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "anonymous /healthz");
    let grpc = f
        .send(
            Request::post("/grpc.health.v1.Health/Check")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(grpc.status, StatusCode::OK);
    let near = f
        .send(get("/healthz/x").body(Full::default()).unwrap())
        .await;
    assert_eq!(near.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn query_tokens_are_refused_unless_enabled_then_redacted() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    let uri = format!("/notes?page=2&access_token={}", token.expose_secret());
    let refused = f.send(get(&uri).body(Full::default()).unwrap()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.denial,
        Some(Denial::MalformedRequest(
            MalformedReason::QueryTokenNotAllowed
        ))
    );

    let layer = f.layer.clone().query_param("access_token");
    let response = service(&layer)
        .oneshot(get(&uri).body(Full::default()).unwrap())
        .await
        .unwrap();
    let out = Outcome::of(response).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "alice /notes?page=2&access_token=REDACTED");
}

#[tokio::test]
async fn a_custom_header_carries_the_bare_token() {
    let f = fixture();
    let (token, _) = f.issue(spec()).await;
    let layer = f
        .layer
        .clone()
        .header(http::HeaderName::from_static("x-api-key"));
    let request = get("/notes")
        .header("x-api-key", token.expose_secret())
        .body(Full::default())
        .unwrap();
    let response = service(&layer).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn responses_say_when_the_token_expires() {
    let f = fixture();
    let (token, _) = f
        .issue(spec().expiry(Expiry::After(Duration::from_secs(3600))))
        .await;
    let out = f.send_token(token.expose_secret()).await;
    let expected = httpdate::fmt_http_date(f.clock.now() + Duration::from_secs(3600));
    assert_eq!(out.headers["token-expires"], expected.as_str());
    let quiet = f.layer.clone().expires_header(None);
    let response = service(&quiet)
        .oneshot(bearer(token.expose_secret()))
        .await
        .unwrap();
    assert!(!response.headers().contains_key("token-expires"));
}

#[tokio::test]
async fn the_expiry_header_is_sent_only_in_a_tokens_last_week_unless_asked_always() {
    let f = fixture();
    let day = Duration::from_secs(24 * 60 * 60);
    let (token, _) = f.issue(spec().expiry(Expiry::After(30 * day))).await;
    let expected = httpdate::fmt_http_date(f.clock.now() + 30 * day);
    let always = f.layer.clone().expires_header_within(None);
    let header = |layer: &AuthenticateLayer<ProbeStore>| {
        let request = bearer(token.expose_secret());
        let service = service(layer);
        async move {
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.headers().get("token-expires").cloned()
        }
    };
    // 30 days left: the default layer says nothing, `None` says it always.
    assert_eq!(header(&f.layer).await, None);
    assert_eq!(header(&always).await.unwrap(), expected.as_str());
    // 7 days and a second left: still quiet (the cached value is reused,
    // the window is checked on every request).
    f.clock.advance(23 * day - Duration::from_secs(1));
    assert_eq!(header(&f.layer).await, None);
    // Exactly 7 days left: the header appears.
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(header(&f.layer).await.unwrap(), expected.as_str());
    // A narrower window of one's own.
    let narrow = f.layer.clone().expires_header_within(Some(day));
    assert_eq!(header(&narrow).await, None);
    f.clock.advance(6 * day);
    assert_eq!(header(&narrow).await.unwrap(), expected.as_str());
}

#[tokio::test]
async fn grpc_requests_get_grpc_status_codes() {
    let f = fixture();
    let grpc = |auth: Option<&str>| {
        let mut builder =
            Request::post("/notes.v1.Notes/ListNotes").header(CONTENT_TYPE, "application/grpc");
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        builder.body(Full::default()).unwrap()
    };
    let missing = f.send(grpc(None)).await;
    assert_eq!(
        (missing.status, &missing.headers["grpc-status"]),
        (StatusCode::OK, &HeaderValue::from_static("16"))
    );
    let malformed = f.send(grpc(Some("Bearer a b"))).await;
    assert_eq!(malformed.headers["grpc-status"], "3");
    f.probe.set_failing(true);
    let down = f
        .send(grpc(Some(&format!(
            "Bearer {}",
            TokenFormat::default().generate().expose_secret()
        ))))
        .await;
    assert_eq!(down.headers["grpc-status"], "14");
}

#[tokio::test]
async fn decisions_reach_the_request_trail() {
    let f = fixture();
    let (token, id) = f.issue(spec()).await;
    let trail = RequestTrail::new();
    let mut request = bearer(token.expose_secret());
    request.extensions_mut().insert(trail.clone());
    f.send(request).await;
    assert_eq!(trail.principal().map(|p| p.token_id().clone()), Some(id));
    assert!(trail.denial().is_none());

    let refused = RequestTrail::new();
    let mut request = get("/notes").body(Full::default()).unwrap();
    request.extensions_mut().insert(refused.clone());
    f.send(request).await;
    assert_eq!(refused.denial(), Some(&Denial::MissingToken));
}

#[tokio::test]
async fn usage_is_recorded_for_the_write_behind_tracker() {
    let f = fixture();
    let (token, id) = f.issue(spec()).await;
    let tracker = UsageTracker::new(100);
    let layer = f.layer.clone().usage(tracker.clone());
    service(&layer)
        .oneshot(bearer(token.expose_secret()))
        .await
        .unwrap();
    assert_eq!(tracker.flush(f.lifecycle.store()).await, 1);
    let record = f.lifecycle.get(&id).await.unwrap().unwrap();
    assert_eq!(record.last_used_at, Some(f.clock.now()));
}

#[test]
fn services_and_futures_are_send_and_layers_are_sync() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<AuthenticateLayer<ProbeStore>>();
    send::<<Svc as tower::Service<Request<Full<Bytes>>>>::Future>();
    send::<tokengate_check::CheckFuture<AuthenticateLayer<ProbeStore>, Svc, Full<Bytes>>>();
}

#[tokio::test]
async fn after_a_pepper_rotation_old_tokens_verify_and_move_to_the_current_pepper_once() {
    let f = fixture();
    let (token, id) = f.issue(spec()).await;
    let cache = f.lifecycle.store().clone();
    // The world's pepper (`World::with_config`).
    let old = Pepper::new(KeyId::new(1), [7u8; 32]).unwrap();
    let rotated =
        TokenHasher::new(Pepper::new(KeyId::new(2), [4u8; 32]).unwrap()).with_previous([old]);
    let layer = AuthenticateLayer::new(cache, rotated.clone(), "notes".parse().unwrap());
    let send = |token: String| {
        let service = service(&layer);
        async move { service.oneshot(bearer(&token)).await.unwrap().status() }
    };
    let before = f.probe.lookups();
    // Unknown under key 2, found under key 1, moved to key 2.
    assert_eq!(send(token.expose_secret().to_owned()).await, StatusCode::OK);
    assert_eq!(f.probe.lookups() - before, 2, "one lookup per pepper");
    let stored = tokengate_store::TokenAdmin::get(f.probe.inner(), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.hash,
        rotated.hash(&token),
        "re-hashed under the current pepper"
    );
    // From now on: one lookup under key 2, then cache hits.
    let before = f.probe.lookups();
    for _ in 0..3 {
        assert_eq!(send(token.expose_secret().to_owned()).await, StatusCode::OK);
    }
    assert_eq!(f.probe.lookups() - before, 1);
    // An unknown token: one lookup per pepper, then remembered as unknown.
    let unknown = TokenFormat::default().generate();
    let before = f.probe.lookups();
    for _ in 0..3 {
        assert_eq!(
            send(unknown.expose_secret().to_owned()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        f.probe.lookups() - before,
        2,
        "a miss costs one lookup per pepper, once"
    );
    // A revoked token found under an old pepper is refused, not migrated.
    let (revoked, revoked_id) = f.issue(spec()).await;
    f.lifecycle.revoke(&revoked_id).await.unwrap();
    let outcome = layer_send(&layer, revoked.expose_secret()).await;
    assert_eq!(outcome, StatusCode::UNAUTHORIZED);
    let stored = tokengate_store::TokenAdmin::get(f.probe.inner(), &revoked_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.hash.key_id(), KeyId::new(1));
}

async fn layer_send(layer: &AuthenticateLayer<ProbeStore>, token: &str) -> StatusCode {
    service(layer)
        .oneshot(bearer(token))
        .await
        .unwrap()
        .status()
}
