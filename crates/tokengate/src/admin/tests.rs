//! The admin API in process, over the memory store: every operation, the
//! one rule for bad requests, problems for every error, delegation.
use std::time::SystemTime;

use axum::http::StatusCode;
use tokengate_core::{KeyId, Pepper, Principal, TokenHasher, TokenId, UseLimit};
use tokengate_store::{MemoryStore, TokenStore};
use tower::ServiceExt;

use super::*;

#[test]
fn the_admin_scope_is_a_valid_scope() {
    assert!(Requirement::all([ADMIN_SCOPE]).is_ok());
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    answer(app, request).await
}

#[tokio::test]
async fn several_quotas_are_issued_replaced_and_refused_by_name() {
    let (app, _, _) = memory_app();
    let minute = r#"{"count":100,"period_seconds":60,"burst":20}"#;
    let day = r#"{"count":10000,"period_seconds":86400,"burst":100}"#;
    let body = READER.replacen('{', &format!(r#"{{"rates":[{minute},{day}],"#), 1);
    let (status, issued) = send(&app, "POST", "/admin/tokens", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let record = &issued["record"];
    assert_eq!(record["rates"].as_array().unwrap().len(), 2);
    assert_eq!(record["rate"]["period_seconds"], 60, "the first as `rate`");
    let id = record["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/tokens/{id}");
    let (status, one) = send(&app, "PATCH", &path, &format!(r#"{{"rates":[{day}]}}"#)).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["rates"].as_array().unwrap().len(), 1);
    assert_eq!(one["rate"]["period_seconds"], 86400);
    // `rate` first, then `rates`; the same quota twice is kept once.
    let both = format!(r#"{{"rate":{minute},"rates":[{day},{minute}]}}"#);
    let (status, both) = send(&app, "PATCH", &path, &both).await;
    assert_eq!(status, StatusCode::OK, "{both}");
    let periods: Vec<_> = both["rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["period_seconds"].as_u64().unwrap())
        .collect();
    assert_eq!(periods, [60, 86400]);
    let quota = |n: u32| format!(r#"{{"count":{n},"period_seconds":60,"burst":1}}"#);
    let six = format!(
        r#"{{"rate":{},"rates":[{},{},{},{},{}]}}"#,
        quota(1),
        quota(2),
        quota(3),
        quota(4),
        quota(5),
        quota(6)
    );
    let zero = r#"{"rates":[{"count":0,"period_seconds":60,"burst":1}]}"#.to_owned();
    for (body, named) in [(six, "at most 5"), (zero, "rate.count")] {
        let (status, problem) = send(&app, "PATCH", &path, &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }
    let (_, none) = send(&app, "PATCH", &path, r#"{"rates":[]}"#).await;
    assert_eq!(none["rates"], serde_json::json!([]));
}

#[tokio::test]
async fn the_api_works_on_the_memory_store() {
    let (app, store, hasher) = memory_app();
    let (status, issued) = send(&app, "POST", "/admin/tokens", READER).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let id = issued["record"]["id"].as_str().unwrap().to_owned();
    let token = issued["token"].as_str().unwrap();
    let hash = hasher.hash_str(token);
    assert!(
        store.find_by_hash(&hash).await.unwrap().is_some(),
        "stored under its hash"
    );
    let (status, updated) = send(
        &app,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        r#"{"scopes":["notes:write"],"rate":null}"#,
    )
    .await;
    assert_eq!(
        (status, updated["scopes"].clone()),
        (StatusCode::OK, serde_json::json!(["notes:write"]))
    );
    let (status, disabled) = send(&app, "POST", &format!("/admin/tokens/{id}/disable"), "").await;
    assert_eq!(
        (status, disabled["status"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
    let (status, problem) = send(&app, "POST", "/admin/tokens", r#"{"name":"a"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("missing field"),
        "{problem}"
    );
    let (status, problem) = send(&app, "GET", "/admin/tokens?limit=many", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["status"], 400);
    let (status, problem) = send(
        &app,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        r#"{"ttl_seconds":99999999}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum"),
        "{problem}"
    );
}

#[tokio::test]
async fn usage_limits_are_issued_changed_and_reset_through_the_api() {
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [4; 32]).unwrap());
    let store = MemoryStore::new();
    let app = router(Lifecycle::new(store.clone(), hasher));
    let (status, issued) = send(
        &app,
        "POST",
        "/admin/tokens",
        r#"{"name":"m","subject":"s","scopes":["notes:read"],"audiences":["notes"],
            "uses":{"uses":3,"refill":{"amount":5,"every_seconds":3600.0}}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let uses = &issued["record"]["uses"];
    assert_eq!(
        (&uses["limit"], &uses["remaining"], &uses["refill"]),
        (
            &3.into(),
            &3.into(),
            &serde_json::json!({"amount": 5, "every_seconds": 3600})
        )
    );
    let id = issued["record"]["id"].as_str().unwrap().to_owned();
    let spend = UseLimit::new(std::num::NonZeroU64::new(3).unwrap()).spend_at(SystemTime::now());
    let id_parsed: TokenId = id.parse().unwrap();
    store.spend_use(&id_parsed, spend).await.unwrap();
    let (_, shown) = send(&app, "GET", &format!("/admin/tokens/{id}"), "").await;
    assert_eq!(shown["uses"]["remaining"], 2);

    let reset = format!("/admin/tokens/{id}/uses/reset");
    let (status, view) = send(&app, "POST", &reset, "").await;
    assert_eq!(
        (status, &view["uses"]["remaining"]),
        (StatusCode::OK, &3.into())
    );
    // At most the larger of the uses and the refill (5 here).
    let (status, view) = send(&app, "POST", &reset, r#"{"remaining":5}"#).await;
    assert_eq!(
        (status, &view["uses"]["remaining"]),
        (StatusCode::OK, &5.into())
    );
    let (status, problem) = send(&app, "POST", &reset, r#"{"remaining":9}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, problem) = send(&app, "POST", &reset, r#"{"remaining":-1}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let patch = format!("/admin/tokens/{id}");
    let (status, problem) = send(
        &app,
        "PATCH",
        &patch,
        r#"{"uses":{"uses":2,"refill":{"amount":1,"every_seconds":31622401}}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"].as_str().unwrap().contains("uses.refill"),
        "{problem}"
    );
    let (status, view) = send(&app, "PATCH", &patch, r#"{"uses":null}"#).await;
    assert_eq!(
        (status, &view["uses"]),
        (StatusCode::OK, &serde_json::Value::Null)
    );
    let (status, problem) = send(&app, "POST", &reset, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no usage limit")
    );
}

/// Sends a request with raw headers and body; the status, headers and the
/// body parsed as JSON (or null).
async fn raw(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::from(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

fn memory_app() -> (Router, MemoryStore, TokenHasher) {
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [5; 32]).unwrap());
    let store = MemoryStore::new();
    (
        router(Lifecycle::new(store.clone(), hasher.clone())),
        store,
        hasher,
    )
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// An issue request for a `notes:read` token.
const READER: &str = r#"{"name":"a","subject":"s","scopes":["notes:read"],"audiences":["notes"]}"#;

#[tokio::test]
async fn every_error_is_a_problem_of_its_own_status_under_one_rule() {
    let (app, _, _) = memory_app();
    let (_, issued) = send(&app, "POST", "/admin/tokens", READER).await;
    let id = issued["record"]["id"].as_str().unwrap().to_owned();
    let rotate = format!("/admin/tokens/{id}/rotate");
    let big = vec![b' '; 3 << 20];
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        StatusCode,
    );
    let cases: Vec<Case<'_>> = vec![
        // Not JSON: 400 on a required body and an optional one alike.
        ("POST", "/admin/tokens".into(), vec![JSON], b"{nope".to_vec(), StatusCode::BAD_REQUEST),
        ("POST", rotate.clone(), vec![JSON], b"{nope".to_vec(), StatusCode::BAD_REQUEST),
        // JSON that breaks the schema: 422 on both.
        ("POST", "/admin/tokens".into(), vec![JSON], br#"{"name":1}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", rotate.clone(), vec![JSON], br#"{"grace_seconds":"x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", rotate.clone(), vec![JSON], br#"{"unknown":1}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        // Not declared JSON: 415 on both.
        ("POST", "/admin/tokens".into(), vec![("content-type", "text/plain")], b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("POST", rotate.clone(), vec![("content-type", "text/plain")], b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        // Too large: 413 on both.
        ("POST", "/admin/tokens".into(), vec![JSON], big.clone(), StatusCode::PAYLOAD_TOO_LARGE),
        ("POST", rotate.clone(), vec![JSON], big, StatusCode::PAYLOAD_TOO_LARGE),
        // No such path or token; a method the path does not serve.
        ("GET", "/admin/nothing/here".into(), vec![], vec![], StatusCode::NOT_FOUND),
        ("GET", "/admin/tokens/tok_AAAAAAAAAAAAAAAA".into(), vec![], vec![], StatusCode::NOT_FOUND),
        ("GET", "/admin/tokens/not-an-id".into(), vec![], vec![], StatusCode::NOT_FOUND),
        ("DELETE", "/admin/tokens".into(), vec![], vec![], StatusCode::METHOD_NOT_ALLOWED),
        ("GET", rotate.clone(), vec![], vec![], StatusCode::METHOD_NOT_ALLOWED),
        // A query not of the documented form: 400.
        ("GET", "/admin/tokens?limit=many".into(), vec![], vec![], StatusCode::BAD_REQUEST),
        ("GET", "/admin/tokens?status=gone".into(), vec![], vec![], StatusCode::BAD_REQUEST),
        ("GET", "/admin/tokens?limit=100001".into(), vec![], vec![], StatusCode::BAD_REQUEST),
        ("GET", "/admin/tokens?expiring_within_seconds=9223372036854775808".into(), vec![], vec![], StatusCode::BAD_REQUEST),
        // Numbers the store cannot keep, graces past the clock: 422, and
        // nothing written.
        ("POST", "/admin/tokens".into(), vec![JSON], br#"{"name":"b","subject":"s","scopes":["notes:read"],"audiences":["notes"],"uses":{"uses":18446744073709551615}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", rotate.clone(), vec![JSON], br#"{"grace_seconds":18446744073709551615}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (method, uri, headers, body, want) in cases {
        let (status, headers, problem) = raw(&app, method, &uri, &headers, body).await;
        assert_eq!(status, want, "{method} {uri}: {problem}");
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{method} {uri}"
        );
        assert_eq!(problem["status"], want.as_u16(), "{method} {uri}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:tokengate:problem:"),
            "{problem}"
        );
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key(header::ALLOW), "{method} {uri}");
        }
    }
    // Nothing was rotated or issued by the refused calls.
    let (_, listed) = send(&app, "GET", "/admin/tokens", "").await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");
    // An optional body may be left out, with or without a content type.
    let (status, _, _) = raw(&app, "POST", &rotate, &[], vec![]).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[test]
fn the_document_declares_queries_security_every_error_and_optional_bodies() {
    let doc = serde_json::to_value(openapi_document()).unwrap();
    let list = &doc["paths"]["/admin/tokens"]["get"];
    for parameter in list["parameters"].as_array().unwrap() {
        assert_eq!(parameter["in"], "query", "{parameter}");
        assert_ne!(parameter["required"], true, "{parameter}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            for status in [
                "400", "401", "403", "404", "405", "409", "413", "415", "422", "429", "503",
            ] {
                let response = &operation["responses"][status]["$ref"];
                assert_eq!(
                    response,
                    &format!("#/components/responses/Problem{status}"),
                    "{method} {path} documents {status}"
                );
            }
        }
    }
    assert_eq!(operations, 14);
    let problem = &doc["components"]["responses"]["Problem401"]["content"];
    assert!(problem["application/problem+json"].is_object(), "{problem}");
    for path in ["/admin/tokens/{id}/rotate", "/admin/tokens/{id}/uses/reset"] {
        assert_eq!(
            doc["paths"][path]["post"]["requestBody"]["required"], false,
            "{path}"
        );
    }
    let issue = &doc["components"]["schemas"]["IssueRequest"]["properties"];
    assert_eq!(issue["scopes"]["minItems"], 1);
    assert_eq!(issue["audiences"]["minItems"], 1);
    assert_eq!(issue["ttl_seconds"]["minimum"], 1);
    assert_eq!(
        issue["metadata"]["propertyNames"]["minLength"], 1,
        "{issue}"
    );
    let uses = &doc["components"]["schemas"]["UseLimitSpec"]["properties"]["uses"];
    assert_eq!(uses["minimum"], 1);
    assert_eq!(uses["maximum"], 9_223_372_036_854_775_807_u64);
}

/// A request as the Gate hands it on: with the caller's principal.
async fn as_caller(
    app: &Router,
    caller: &Principal,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    request.extensions_mut().insert(caller.clone());
    answer(app, request).await
}

fn issue_body(scopes: &str, audiences: &str) -> String {
    let list =
        |items: &str| serde_json::to_string(&items.split_whitespace().collect::<Vec<_>>()).unwrap();
    format!(
        r#"{{"name":"n","subject":"s","scopes":{},"audiences":{}}}"#,
        list(scopes),
        list(audiences)
    )
}

#[tokio::test]
async fn a_delegated_admin_manages_only_tokens_within_its_own_grants() {
    let (app, store, _) = memory_app();
    let root = async |scopes: &str, audiences: &str| {
        let (status, issued) = send(
            &app,
            "POST",
            "/admin/tokens",
            &issue_body(scopes, audiences),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        issued["record"]["id"].as_str().unwrap().to_owned()
    };
    let delegate_id = root("tokengate:delegate notes:read notes:write", "notes").await;
    let admin_id = root("tokengate:admin", "notes").await;
    let billing_id = root("billing:read", "billing").await;
    let record = store
        .get(&delegate_id.parse::<TokenId>().unwrap())
        .await
        .unwrap()
        .unwrap();
    let delegate = Principal::from_record(&record);

    // Within its grants: issued, listed, shown, changed, revoked.
    let (status, made) = as_caller(
        &app,
        &delegate,
        "POST",
        "/admin/tokens",
        &issue_body("notes:read", "notes"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let made_id = made["record"]["id"].as_str().unwrap().to_owned();
    // Beyond them: 403, naming what.
    for (scopes, audiences, names) in [
        ("tokengate:admin", "notes", "tokengate:admin"),
        (
            "tokengate:delegate notes:read",
            "notes",
            "tokengate:delegate",
        ),
        ("billing:read", "notes", "billing:read"),
        ("notes:read", "billing", "billing"),
        ("notes:admin", "notes", "notes:admin"),
    ] {
        let (status, problem) = as_caller(
            &app,
            &delegate,
            "POST",
            "/admin/tokens",
            &issue_body(scopes, audiences),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{scopes} {audiences}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(names),
            "{problem}"
        );
    }
    let (_, listed) = as_caller(&app, &delegate, "GET", "/admin/tokens", "").await;
    let ids: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [made_id.as_str()], "only what it may manage");
    // Tokens beyond it, itself included, do not exist for it.
    for id in [&admin_id, &billing_id, &delegate_id] {
        for (method, path, body) in [
            ("GET", format!("/admin/tokens/{id}"), ""),
            (
                "PATCH",
                format!("/admin/tokens/{id}"),
                r#"{"ttl_seconds":60}"#,
            ),
            ("POST", format!("/admin/tokens/{id}/revoke"), ""),
            ("POST", format!("/admin/tokens/{id}/rotate"), ""),
        ] {
            let (status, _) = as_caller(&app, &delegate, method, &path, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // A change may not widen a token beyond the delegate.
    let own = format!("/admin/tokens/{made_id}");
    for body in [
        r#"{"add_scopes":["tokengate:admin"]}"#,
        r#"{"scopes":["billing:read"]}"#,
        r#"{"audiences":["billing"]}"#,
    ] {
        let (status, _) = as_caller(&app, &delegate, "PATCH", &own, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, changed) = as_caller(
        &app,
        &delegate,
        "PATCH",
        &own,
        r#"{"add_scopes":["notes:write"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let (status, _) = as_caller(&app, &delegate, "POST", &format!("{own}/revoke"), "").await;
    assert_eq!(status, StatusCode::OK);
    // The admin and billing tokens are untouched.
    for id in [&admin_id, &billing_id] {
        let (_, shown) = send(&app, "GET", &format!("/admin/tokens/{id}"), "").await;
        assert_eq!(shown["status"], "active", "{shown}");
    }
}

#[test]
fn the_admin_routes_admit_either_admin_scope() {
    let policy = policy_rules(tokengate_scope::ScopePolicy::builder())
        .build()
        .unwrap();
    let scopes = policy.scopes();
    assert!(scopes.iter().any(|s| s.as_str() == ADMIN_SCOPE));
    assert!(scopes.iter().any(|s| s.as_str() == DELEGATE_SCOPE));
}

/// `app`'s answer to `request`: the status, and the body as JSON (or null).
async fn answer(
    app: &Router,
    request: axum::http::Request<axum::body::Body>,
) -> (StatusCode, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn tokens_are_bound_by_thumbprint_or_by_the_requests_own_dpop_proof() {
    use tokengate_authenticate::dpop::DpopSigner;
    let (app, store, _) = memory_app();
    let jkt = DpopSigner::generate_es256().jkt().to_base64url();
    let body = READER.replacen('{', &format!(r#"{{"dpop_jkt":"{jkt}","#), 1);
    let (status, issued) = send(&app, "POST", "/admin/tokens", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["record"]["dpop_jkt"], jkt.as_str());
    assert_eq!(issued["record"]["cert_sha256"], serde_json::Value::Null);
    let id = issued["record"]["id"].as_str().unwrap().to_owned();

    // Rebound to a certificate, then unbound.
    let sha = "AB".repeat(32);
    let (status, view) = send(
        &app,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        &format!(r#"{{"cert_sha256":"{sha}"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["cert_sha256"], "ab".repeat(32));
    assert_eq!(view["dpop_jkt"], serde_json::Value::Null);
    let (_, view) = send(
        &app,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        r#"{"unbind":true}"#,
    )
    .await;
    assert_eq!(view["cert_sha256"], serde_json::Value::Null);
    let id: TokenId = id.parse().unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().binding, None);

    // Bad and conflicting bindings: 422 naming the field.
    for (body, named) in [
        (
            READER.replacen('{', r#"{"dpop_jkt":"short","#, 1),
            "dpop_jkt",
        ),
        (
            READER.replacen(
                '{',
                &format!(r#"{{"dpop_jkt":"{jkt}","cert_sha256":"{sha}","#),
                1,
            ),
            "not both",
        ),
    ] {
        let (status, problem) = send(&app, "POST", "/admin/tokens", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }
    let (status, problem) = send(
        &app,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        &format!(r#"{{"unbind":true,"dpop_jkt":"{jkt}"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    // The request's own proof: the token is bound to the key that signed it.
    let key = DpopSigner::generate_ed25519();
    let with_proof = |proof: String| {
        axum::http::Request::builder()
            .method("POST")
            .uri("/admin/tokens")
            .header("host", "admin.test")
            .header("content-type", "application/json")
            .header("dpop", proof)
            .body(axum::body::Body::from(READER.to_owned()))
            .unwrap()
    };
    let proof = key.sign(
        &key.header(),
        &serde_json::json!({
            "jti": "issue-1", "htm": "POST", "htu": "http://admin.test/admin/tokens",
            "iat": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
        }),
    );
    let (status, issued) = answer(&app, with_proof(proof)).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(
        issued["record"]["dpop_jkt"],
        key.jkt().to_base64url().as_str()
    );
    // A proof for another URL binds nothing: 422 with the reason.
    let elsewhere = key.proof("POST", "http://admin.test/other", "", None);
    let (status, problem) = answer(&app, with_proof(elsewhere)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("dpop_htu_mismatch"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_root_admin_adds_lists_and_removes_webhooks_and_a_delegate_may_not() {
    let (app, store, _) = memory_app();
    let body = r#"{"url":"https://hooks.example/in","events":["token.revoked","token.issued"]}"#;
    let (status, added) = send(&app, "POST", "/admin/webhooks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let secret = added["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{added}");
    let id = added["webhook"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        added["webhook"]["events"],
        serde_json::json!(["token.issued", "token.revoked"])
    );
    let (status, list) = send(&app, "GET", "/admin/webhooks", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(secret), "never the secret again");

    // An issue through the API writes the event to the outbox.
    let (status, _) = send(
        &app,
        "POST",
        "/admin/tokens",
        &issue_body("notes:read", "notes"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, log) = send(&app, "GET", "/admin/webhooks/deliveries?limit=5", "").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["deliveries"][0]["type"], "token.issued");
    assert_eq!(log["deliveries"][0]["state"], "pending");

    for (body, names) in [
        (
            r#"{"url":"ftp://x/","events":["token.issued"]}"#,
            "ftp://x/",
        ),
        (
            r#"{"url":"https://x.example/","events":["revoked"]}"#,
            "revoked",
        ),
        (
            r#"{"url":"https://x.example/","events":["token.issued"],"secret":"short"}"#,
            "secret",
        ),
    ] {
        let (status, problem) = send(&app, "POST", "/admin/webhooks", body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert!(problem.to_string().contains(names), "{problem}");
    }

    let issued = issue_body("tokengate:delegate notes:read", "notes");
    let (_, delegate) = send(&app, "POST", "/admin/tokens", &issued).await;
    let record = store
        .get(
            &delegate["record"]["id"]
                .as_str()
                .unwrap()
                .parse::<TokenId>()
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let delegate = Principal::from_record(&record);
    for (method, path) in [
        ("GET", "/admin/webhooks".to_owned()),
        ("GET", "/admin/webhooks/deliveries".to_owned()),
        ("DELETE", format!("/admin/webhooks/{id}")),
    ] {
        let (status, problem) = as_caller(&app, &delegate, method, &path, "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
    }
    let (status, _) = send(&app, "DELETE", &format!("/admin/webhooks/{id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, "DELETE", &format!("/admin/webhooks/{id}"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
