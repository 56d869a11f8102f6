//! authenticate + enforce-scope in a real axum server over TCP, composed
//! both ways: one `.layer` stack with a policy table, and per-route
//! `.route_layer` requirements.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{delete, get, post};
use http::{Method, StatusCode};
use support::{HttpClient, World, serve_axum};
use tokengate::axum::Authenticated;
use tokengate::core::{Clock, TokenFormat};
use tokengate::scope::RequireScope;
use tokengate::store::Expiry;
use tokengate::{EnforceScopeLayer, Requirement, ScopePolicy};
use tower::ServiceBuilder;

async fn list(Authenticated(p): Authenticated) -> String {
    format!("notes of {}", p.subject())
}

async fn create(Authenticated(p): Authenticated, body: String) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("{} wrote {body}", p.subject()))
}

async fn remove(Path(id): Path<u64>) -> String {
    format!("deleted {id}")
}

async fn whoami(Authenticated(p): Authenticated) -> String {
    p.token_id().to_string()
}

async fn health() -> &'static str {
    "ok"
}

/// Authenticate and a policy table in one `ServiceBuilder` on the whole router.
fn layered(world: &World) -> Router {
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route(
            [Method::DELETE],
            "/notes/{id}",
            Requirement::all(["notes:admin"]).unwrap(),
        )
        .route([Method::GET], "/whoami", Requirement::Authenticated)
        .route([Method::GET], "/healthz", Requirement::Public)
        .build()
        .unwrap();
    Router::new()
        .route("/notes", get(list).post(create))
        .route("/notes/{id}", delete(remove))
        .route("/whoami", get(whoami))
        .route("/healthz", get(health))
        .layer(
            ServiceBuilder::new()
                .layer(world.auth.clone())
                .layer(EnforceScopeLayer::new(policy)),
        )
}

/// Authenticate on the router, scopes per route with `route_layer`.
fn per_route(world: &World) -> Router {
    Router::new()
        .route(
            "/notes",
            get(list).route_layer(RequireScope::all(["notes:read"]).unwrap()),
        )
        .route(
            "/notes",
            post(create).route_layer(RequireScope::all(["notes:write"]).unwrap()),
        )
        .route(
            "/notes/{id}",
            delete(remove).route_layer(RequireScope::all(["notes:admin"]).unwrap()),
        )
        .route(
            "/whoami",
            get(whoami).route_layer(RequireScope::authenticated()),
        )
        .route("/healthz", get(health))
        .layer(world.auth.clone())
}

async fn both(world: &World) -> Vec<(&'static str, HttpClient)> {
    vec![
        ("layer", HttpClient::new(serve_axum(layered(world)).await)),
        (
            "route_layer",
            HttpClient::new(serve_axum(per_route(world)).await),
        ),
    ]
}

#[tokio::test]
async fn valid_tokens_reach_handlers_with_their_principal() {
    let world = World::new();
    let (token, id) = world.issue("notes:read notes:write").await;
    for (name, client) in both(&world).await {
        let read = client.get("/notes", Some(&token)).await;
        assert_eq!(
            (read.status, read.body.as_str()),
            (StatusCode::OK, "notes of alice"),
            "{name}"
        );
        // 90 days left: no `token-expires` yet (sent in the last 7 days).
        assert!(!read.headers.contains_key("token-expires"), "{name}");
        let write = client.with_token("POST", "/notes", &token, "hello").await;
        assert_eq!(
            (write.status, write.body.as_str()),
            (StatusCode::CREATED, "alice wrote hello"),
            "{name}"
        );
        let me = client.get("/whoami", Some(&token)).await;
        assert_eq!(me.body, id.as_str(), "{name}");
    }
}

#[tokio::test]
async fn missing_and_malformed_credentials() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let bearer = format!("Bearer {}", token.expose_secret());
    for (name, client) in both(&world).await {
        let missing = client.get("/notes", None).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            missing.headers["www-authenticate"],
            r#"Bearer realm="tokengate""#
        );
        assert_eq!(missing.headers["content-type"], "application/problem+json");

        let two = client
            .send(
                "GET",
                "/notes",
                &[("authorization", &bearer), ("authorization", &bearer)],
                "",
            )
            .await;
        assert_eq!(two.status, StatusCode::BAD_REQUEST, "{name}");
        assert!(
            two.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_request")
        );

        let basic = client
            .send("GET", "/notes", &[("authorization", "Basic dTpw")], "")
            .await;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            basic.headers["www-authenticate"],
            r#"Bearer realm="tokengate""#
        );

        let trailing = client
            .send(
                "GET",
                "/notes",
                &[("authorization", &format!("{bearer} extra"))],
                "",
            )
            .await;
        assert_eq!(trailing.status, StatusCode::BAD_REQUEST, "{name}");
    }
    assert_eq!(
        world.probe.lookups(),
        0,
        "no malformed request reached the store"
    );
}

#[tokio::test]
async fn wrong_checksum_is_refused_without_a_store_lookup() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let mut text = token.expose_secret().to_owned();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    for (name, client) in both(&world).await {
        let reply = client
            .send(
                "GET",
                "/notes",
                &[("authorization", &format!("Bearer {text}"))],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            reply.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    assert_eq!(world.probe.lookups(), 0);
}

#[tokio::test]
async fn unknown_revoked_expired_and_foreign_tokens_get_one_answer() {
    let world = World::new();
    let clients = both(&world).await;
    let (revoked, revoked_id) = world.issue("notes:read").await;
    let (expiring, _) = world
        .issue_spec(
            world
                .spec("notes:read")
                .expiry(Expiry::After(Duration::from_secs(60))),
        )
        .await;
    let (foreign, _) = world
        .issue_spec(
            tokengate::TokenSpec::new("billing", "alice")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["billing".parse().unwrap()]),
        )
        .await;
    let unknown = TokenFormat::default().generate();

    for (name, client) in &clients {
        assert_eq!(
            client.get("/notes", Some(&revoked)).await.status,
            StatusCode::OK,
            "{name}"
        );
        let reply = client.get("/notes", Some(&expiring)).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        // A minute left: the response says when the token expires.
        let expires = httpdate::fmt_http_date(world.clock.now() + Duration::from_secs(60));
        assert_eq!(reply.headers["token-expires"], expires.as_str(), "{name}");
    }
    world.lifecycle.revoke(&revoked_id).await.unwrap();
    world.advance(Duration::from_secs(60));

    let mut bodies = Vec::new();
    for (name, client) in &clients {
        for token in [&unknown, &revoked, &expiring, &foreign] {
            let reply = client.get("/notes", Some(token)).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name} {token}");
            bodies.push(reply.body);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
}

#[tokio::test]
async fn a_read_only_token_never_writes() {
    let world = World::new();
    let (reader, _) = world.issue("notes:read").await;
    for (name, client) in both(&world).await {
        let write = client.with_token("POST", "/notes", &reader, "x").await;
        assert_eq!(write.status, StatusCode::FORBIDDEN, "{name}");
        assert_eq!(
            write.headers["www-authenticate"],
            r#"Bearer realm="tokengate", error="insufficient_scope", scope="notes:write""#,
            "{name}"
        );
        let delete = client.with_token("DELETE", "/notes/1", &reader, "").await;
        assert_eq!(delete.status, StatusCode::FORBIDDEN, "{name}");
        assert!(
            delete.body.contains("notes:admin"),
            "{name}: {}",
            delete.body
        );
    }
}

#[tokio::test]
async fn the_health_route_is_public() {
    let world = World::new();
    for (name, client) in both(&world).await {
        let reply = client.get("/healthz", None).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "ok"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_need_a_token_and_then_a_rule() {
    let world = World::new();
    let (token, _) = world.issue("notes:read notes:write notes:admin").await;
    let clients = both(&world).await;
    // With `.layer`, authentication runs before routing: 401 before 404.
    for (_, client) in &clients {
        assert_eq!(
            client.get("/nowhere", None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The policy table denies what it does not declare; route_layer leaves
    // unknown paths to axum's 404.
    assert_eq!(
        clients[0].1.get("/nowhere", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        clients[1].1.get("/nowhere", Some(&token)).await.status,
        StatusCode::NOT_FOUND
    );
}

/// What a handler or a logging layer sees of the URI: axum's
/// `OriginalUri` (copied by the router before any layer runs) and the
/// request's own.
async fn echo_uris(
    axum::extract::OriginalUri(original): axum::extract::OriginalUri,
    uri: http::Uri,
) -> String {
    format!("{original} {uri}")
}

#[tokio::test]
async fn a_query_token_is_redacted_from_every_copy_of_the_uri() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let policy = || {
        ScopePolicy::builder()
            .read_write("/notes", "notes")
            .build()
            .unwrap()
    };
    let auth = world.auth.clone().query_param("access_token");
    let gate = tokengate::Gate::new(auth.clone(), EnforceScopeLayer::new(policy())).client_ip(
        tokengate::ipfilter::ResolveClientIpLayer::new().peer_source(tokengate::axum::peer_addr),
    );
    let with_gate = Router::new().route("/notes", get(echo_uris)).layer(gate);
    let alone = Router::new().route("/notes", get(echo_uris)).layer(
        ServiceBuilder::new()
            .layer(auth.redact_uri_copy(tokengate::axum::original_uri))
            .layer(EnforceScopeLayer::new(policy())),
    );
    for (name, app) in [("gate", with_gate), ("layer", alone)] {
        let client = HttpClient::new(serve_axum(app).await);
        let path = format!("/notes?x=1&access_token={}", token.expose_secret());
        let reply = client.send("GET", &path, &[], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.body);
        assert!(
            !reply.body.contains(&token.expose_secret()[3..]),
            "{name}: {}",
            reply.body
        );
        assert_eq!(
            reply.body.matches("access_token=REDACTED").count(),
            2,
            "{name}: both copies: {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn the_layer_alone_redacts_the_request_uri_and_only_the_copies_it_is_told_of() {
    // As `query_param` documents: the request's URI always; axum's
    // `OriginalUri` only when named, since the layer does not know which
    // framework it runs in.
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let auth = world.auth.clone().query_param("access_token");
    let app = Router::new().route("/notes", get(echo_uris)).layer(auth);
    let client = HttpClient::new(serve_axum(app).await);
    let path = format!("/notes?access_token={}", token.expose_secret());
    let reply = client.send("GET", &path, &[], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let (original, uri) = reply.body.split_once(' ').unwrap();
    assert_eq!(uri, "/notes?access_token=REDACTED");
    assert!(
        original.contains(token.expose_secret()),
        "the unnamed copy is left as documented: {original}"
    );
}

#[tokio::test]
async fn the_gate_finds_the_peer_address_itself_and_says_500_when_none_is_served() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let app = || {
        let policy = ScopePolicy::builder()
            .read_write("/notes", "notes")
            .route([Method::GET], "/healthz", Requirement::Public)
            .build()
            .unwrap();
        Router::new()
            .route("/notes", get(list))
            .route("/healthz", get(health))
            .layer(tokengate::Gate::new(
                world.auth.clone(),
                EnforceScopeLayer::new(policy),
            ))
    };
    // With connection info: no `.client_ip(...)` call is needed.
    let client = HttpClient::new(serve_axum(app()).await);
    assert_eq!(client.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(
        client.get("/notes", Some(&token)).await.status,
        StatusCode::OK
    );

    // Plain `axum::serve(listener, app)`: the server's mistake, told as one.
    let (listener, addr) = support::listener().await;
    let plain = app();
    tokio::spawn(async move { axum::serve(listener, plain).await.unwrap() });
    let client = HttpClient::new(addr);
    for reply in [
        client.get("/healthz", None).await,
        client.get("/notes", Some(&token)).await,
    ] {
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            reply
                .body
                .contains("could not determine the client address"),
            "{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn a_route_the_policy_declares_public_needs_no_second_declaration() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    // No `PublicPaths` on the authenticate layer: the policy alone says it.
    let auth = tokengate::AuthenticateLayer::new(
        world.lifecycle.store().clone(),
        world.lifecycle.hasher().clone(),
        "notes".parse().unwrap(),
    );
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .route([Method::GET], "/status", Requirement::Public)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/notes", get(list))
        .route("/status", get(health))
        .layer(tokengate::Gate::new(auth, EnforceScopeLayer::new(policy)));
    let client = HttpClient::new(serve_axum(app).await);
    assert_eq!(client.get("/status", None).await.status, StatusCode::OK);
    // Public for GET only, as declared; everything else still needs a token.
    assert_eq!(
        client.send("POST", "/status", &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.get("/notes", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.get("/notes", Some(&token)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn nested_routers_see_paths_relative_to_where_the_gate_sits() {
    let world = World::new();
    let (token, _) = world.issue("notes:read").await;
    let gate = |prefix: &str| {
        let policy = ScopePolicy::builder()
            .read_write(&format!("{prefix}/notes"), "notes")
            .build()
            .unwrap();
        tokengate::Gate::new(world.auth.clone(), EnforceScopeLayer::new(policy))
    };
    let notes = || Router::new().route("/notes", get(list));
    // Inside the nest: the Gate sees `/notes`, so the policy says `/notes`.
    let inside = Router::new().nest("/api", notes().layer(gate("")));
    // Around the nest: the Gate sees `/api/notes`.
    let around = Router::new().nest("/api", notes()).layer(gate("/api"));
    // A policy written with full paths inside the nest matches nothing.
    let mismatched = Router::new().nest("/api", notes().layer(gate("/api")));
    for (name, app, expected) in [
        ("inside", inside, StatusCode::OK),
        ("around", around, StatusCode::OK),
        ("mismatched", mismatched, StatusCode::FORBIDDEN),
    ] {
        let client = HttpClient::new(serve_axum(app).await);
        assert_eq!(
            client.get("/api/notes", Some(&token)).await.status,
            expected,
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_embedded_authenticate_layer_redacts_axums_copy_too() {
    let dir = tokengate_tests::process::temp_dir("embedded-query-token");
    let db = tokengate::deployment::Database::Sqlite(dir.join("tokens.db"));
    let embedded = tokengate::Deployment::builder(db)
        .audit_log(dir.join("audit.jsonl"))
        .open()
        .await
        .unwrap();
    let spec = tokengate::TokenSpec::new("q", "alice")
        .scopes(["notes:read".parse().unwrap()])
        .audiences(["notes".parse().unwrap()]);
    let token = embedded.lifecycle.issue(spec).await.unwrap().token;
    let auth = embedded
        .authenticate("notes".parse().unwrap())
        .query_param("access_token");
    let app = Router::new().route("/notes", get(echo_uris)).layer(auth);
    let client = HttpClient::new(serve_axum(app).await);
    let path = format!("/notes?access_token={}", token.expose_secret());
    let reply = client.send("GET", &path, &[], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        !reply.body.contains(&token.expose_secret()[3..]),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.body.matches("access_token=REDACTED").count(),
        2,
        "{}",
        reply.body
    );
    embedded.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README's ten lines, as written there, on a real port: the token
/// the CLI would issue is served, the public route needs none, a missing
/// token is 401 and a write with a read token 403, every request leaves
/// one audit record beside the database.
#[tokio::test]
async fn the_readmes_ten_lines_serve_the_gate_on_the_embedded_store() {
    let dir = tokengate_tests::process::temp_dir("ten-lines");
    let db = dir.join("tokengate.db");
    let deployment = tokengate::Deployment::open(db.to_str().unwrap())
        .await
        .unwrap();
    let token = deployment
        .lifecycle
        .issue(
            tokengate::TokenSpec::new("me", "alice")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()]),
        )
        .await
        .unwrap()
        .token;
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .public("/healthz")
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/notes",
            get(|who: Authenticated| async move { format!("hello, {}", who.subject()) })
                .post(|| async { "written" }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(deployment.gate("notes", policy).await.unwrap());
    let (listener, addr) = support::listener().await;
    drop(listener);
    let server = tokio::spawn(tokengate::axum::serve(addr, app, deployment));
    let client = HttpClient::new(addr);
    let mut health = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            health = Some(client.get("/healthz", None).await);
            break;
        }
    }
    let health = health.expect("the server listens");
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok")
    );
    let hello = client.get("/notes", Some(&token)).await;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (StatusCode::OK, "hello, alice")
    );
    assert_eq!(
        client.get("/notes", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let write = client.with_token("POST", "/notes", &token, "{}").await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(
        client.get("/undeclared", Some(&token)).await.status,
        StatusCode::FORBIDDEN
    );
    server.abort();
    // The audit file beside the database: one record per request, flushed
    // within its interval (1 s).
    let audit = dir.join("audit.jsonl");
    let mut records = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        records = std::fs::read_to_string(&audit).map_or(0, |text| text.lines().count());
        if records >= 5 {
            break;
        }
    }
    assert_eq!(records, 5, "one record per request");
    assert!(tokengate::sqlite::pepper_path(&db).exists());
}
