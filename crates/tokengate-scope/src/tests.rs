use std::convert::Infallible;

use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use tokengate_core::{Denial, Principal, RequestTrail, ScopeRules};
use tokengate_store::testing::record;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;

fn principal(scopes: &str) -> Principal {
    Principal::from_record(&record("alice", scopes))
}

fn handler() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn request(method: Method, path: &str, scopes: Option<&str>) -> Request<()> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    if let Some(scopes) = scopes {
        request.extensions_mut().insert(principal(scopes));
    }
    request
}

async fn status<P: ScopeLookup>(
    layer: &EnforceScopeLayer<P>,
    request: Request<()>,
) -> (StatusCode, Option<Denial>) {
    let response = layer.layer(handler()).oneshot(request).await.unwrap();
    (
        response.status(),
        response.extensions().get::<Denial>().cloned(),
    )
}

fn notes_policy() -> EnforceScopeLayer<ScopePolicy> {
    EnforceScopeLayer::new(
        ScopePolicy::builder()
            .read_write("/notes", "notes")
            .route(
                [Method::DELETE],
                "/notes/{id}",
                Requirement::all(["notes:admin"]).unwrap(),
            )
            .route([Method::GET], "/whoami", Requirement::Authenticated)
            .route([Method::GET], "/healthz", Requirement::Public)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_read_only_token_never_writes() {
    let layer = notes_policy();
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let (s, _) = status(
            &layer,
            request(method.clone(), "/notes", Some("notes:read")),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{method}");
    }
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let (s, denial) = status(
            &layer,
            request(method.clone(), "/notes", Some("notes:read")),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method}");
        assert_eq!(
            denial,
            Some(Denial::InsufficientScope {
                missing: vec!["notes:write".parse().unwrap()]
            })
        );
    }
}

#[tokio::test]
async fn missing_scope_is_403_naming_it_not_401() {
    let layer = notes_policy();
    let response = layer
        .layer(handler())
        .oneshot(request(
            Method::DELETE,
            "/notes/7",
            Some("notes:read notes:write"),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="tokengate", error="insufficient_scope", scope="notes:admin""#
    );
}

#[tokio::test]
async fn unmapped_routes_and_methods_are_denied() {
    let layer = notes_policy();
    for (method, path) in [
        (Method::GET, "/admin"),
        (Method::GET, "/notes/7"),
        (Method::GET, "/notes/"),
        (Method::POST, "/whoami"),
    ] {
        let (s, denial) = status(
            &layer,
            request(
                method.clone(),
                path,
                Some("notes:read notes:write notes:admin"),
            ),
        )
        .await;
        assert_eq!(
            (s, denial),
            (StatusCode::FORBIDDEN, Some(Denial::Unmapped)),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn declared_public_routes_need_no_principal() {
    let layer = notes_policy();
    assert_eq!(
        status(&layer, request(Method::GET, "/healthz", None))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        status(&layer, request(Method::POST, "/healthz", None))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn no_principal_is_401_never_allowed() {
    let layer = notes_policy();
    let (s, denial) = status(&layer, request(Method::GET, "/notes", None)).await;
    assert_eq!(
        (s, denial),
        (StatusCode::UNAUTHORIZED, Some(Denial::MissingToken))
    );
    let per_route = RequireScope::authenticated();
    let (s, _) = status(&per_route, request(Method::GET, "/anything", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn near_miss_scopes_and_empty_sets_grant_nothing() {
    let layer = RequireScope::all(["notes:read"])
        .unwrap()
        .rules(ScopeRules::standard());
    for held in [
        "Notes:read",
        "notes:Read",
        "notes:read_all",
        "notes:reading",
        "note:read",
        "notes.x:read",
        "",
    ] {
        let (s, _) = status(&layer, request(Method::GET, "/x", Some(held))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{held:?}");
    }
}

#[tokio::test]
async fn implications_apply_only_when_configured() {
    let exact = RequireScope::all(["notes:read"]).unwrap();
    let (s, _) = status(&exact, request(Method::GET, "/x", Some("notes:write"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let standard = exact.clone().rules(ScopeRules::standard());
    let (s, _) = status(&standard, request(Method::GET, "/x", Some("notes:write"))).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn any_of_needs_one() {
    let layer = RequireScope::any(["notes:admin", "notes:write"]).unwrap();
    assert_eq!(
        status(&layer, request(Method::POST, "/x", Some("notes:write")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        status(&layer, request(Method::POST, "/x", Some("notes:read")))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn grpc_clients_get_grpc_status_7_and_16() {
    let layer = EnforceScopeLayer::new(
        ScopePolicy::builder()
            .grpc_method(
                "/notes.v1.Notes/ListNotes",
                Requirement::all(["notes:read"]).unwrap(),
            )
            .build()
            .unwrap(),
    );
    let grpc = |path: &str, scopes: Option<&str>| {
        let mut r = request(Method::POST, path, scopes);
        r.headers_mut()
            .insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
        r
    };
    for (path, scopes, code) in [
        ("/notes.v1.Notes/ListNotes", Some("files:read"), "7"),
        ("/notes.v1.Notes/CreateNote", Some("notes:read"), "7"),
        ("/notes.v1.Notes/ListNotes", None, "16"),
    ] {
        let response = layer
            .layer(handler())
            .oneshot(grpc(path, scopes))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], code, "{path} {scopes:?}");
    }
    let ok = layer
        .layer(handler())
        .oneshot(grpc("/notes.v1.Notes/ListNotes", Some("notes:read")))
        .await
        .unwrap();
    assert!(ok.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn denials_reach_the_trail() {
    let trail = RequestTrail::new();
    let mut r = request(Method::POST, "/notes", Some("notes:read"));
    r.extensions_mut().insert(trail.clone());
    status(&notes_policy(), r).await;
    assert!(matches!(
        trail.denial(),
        Some(Denial::InsufficientScope { .. })
    ));
}

#[test]
fn layers_and_services_are_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RequireScope>();
    send_sync::<EnforceScopeLayer<ScopePolicy>>();
    send_sync::<
        EnforceScope<
            tower::util::BoxCloneSyncService<Request<()>, Response<()>, Infallible>,
            ScopePolicy,
        >,
    >();
}

#[test]
fn a_policy_lists_every_scope_its_rules_ask_for() {
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route(
            [Method::DELETE],
            "/notes/{id}",
            Requirement::any(["notes:admin", "ops:all"]).unwrap(),
        )
        .route([Method::GET], "/healthz", Requirement::Public)
        .build()
        .unwrap();
    assert_eq!(
        policy.scopes().to_string(),
        "notes:admin notes:read notes:write ops:all"
    );
}
