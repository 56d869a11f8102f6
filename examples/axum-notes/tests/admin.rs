//! The admin API through a real axum-notes with `--admin`: issue through
//! the API, use the token, narrow its scope, see the 403, disable, enable,
//! rotate, revoke; only `tokengate:admin` tokens get in, every call is
//! audited, errors are problem+json, and every response matches the
//! OpenAPI document the server serves.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokengate_tests::process::{cli, start_example_with, temp_dir};

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call(base: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"));
    let payload = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = client
        .request(request.body(Full::new(payload)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        body,
    }
}

/// Follows `$ref`s into the document's components.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Whether `value` fits `schema` (types, required and declared properties,
/// array items, nullable unions): the subset of JSON Schema the generated
/// document uses. Returns what does not fit.
fn mismatch(doc: &Value, schema: &Value, value: &Value, at: &str) -> Option<String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        let options = options.as_array().unwrap();
        return options
            .iter()
            .all(|o| mismatch(doc, o, value, at).is_some())
            .then(|| format!("{at}: {value} fits none of {options:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let fits = types.iter().any(|t| match *t {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    });
    if !fits {
        return Some(format!("{at}: {value} is not {types:?}"));
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, item) in values.iter().enumerate() {
            if let Some(m) = mismatch(doc, items, item, &format!("{at}[{i}]")) {
                return Some(m);
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Some(format!("{at}: required {name} is missing"));
            }
        }
        if let Some(properties) = properties {
            for (name, field) in object {
                match properties.get(name) {
                    Some(property) => {
                        if let Some(m) = mismatch(doc, property, field, &format!("{at}.{name}")) {
                            return Some(m);
                        }
                    }
                    None => return Some(format!("{at}: {name} is not in the document")),
                }
            }
        }
    }
    None
}

/// Asserts that `reply` is documented for `method path` with its status
/// and its content type, and fits the documented schema.
fn documented(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let mut response =
        &doc["paths"][path][method.to_lowercase()]["responses"][reply.status.as_u16().to_string()];
    if let Some(shared) = response.get("$ref").and_then(Value::as_str) {
        response = &doc["components"]["responses"][shared.rsplit('/').next().unwrap()];
    }
    assert!(
        response.is_object(),
        "{method} {path} {} is not documented",
        reply.status
    );
    let media = reply.content_type.split(';').next().unwrap_or_default();
    let content = &response["content"][media];
    assert!(
        content.is_object(),
        "{method} {path} {}: {media} is not the documented content type: {response}",
        reply.status
    );
    let fits = mismatch(doc, &content["schema"], &reply.body, "body");
    assert!(fits.is_none(), "{method} {path} {}: {fits:?}", reply.status);
}

/// An hour's `tokengate:admin` token, issued by the CLI on `db` (with
/// `global` flags such as `--pepper-file`).
fn issue_admin(bin: &str, db: impl AsRef<std::ffi::OsStr>, global: &[&str]) -> String {
    let issue = [
        "issue",
        "--name",
        "ops",
        "--subject",
        "ops",
        "--scope",
        "tokengate:admin",
        "--audience",
        "notes",
        "--ttl",
        "1h",
    ];
    cli(bin, db, &[global, &issue[..]].concat())
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_tokens_and_matches_its_openapi_document() {
    let dir = temp_dir("axum-notes-admin");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example_with(bin, &dir, "axum-notes listening on ", &["--admin"]);
    let base = server.addr.clone();
    let db = dir.join("tokengate.db");
    let admin = issue_admin(bin, &db, &[]);

    // The document, for admins only.
    let reply = call(&base, "GET", "/admin/openapi.json", &server.token, None).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "the demo token is no admin"
    );
    let doc = call(&base, "GET", "/admin/openapi.json", &admin, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    // The checker below can fail: a record without its id, or with a
    // field the document does not declare, does not fit.
    let view = json!({"$ref": "#/components/schemas/TokenView"});
    assert!(mismatch(&doc, &view, &json!({"name": "x"}), "body").is_some());
    assert!(mismatch(&doc, &json!({"$ref": "#/components/schemas/Problem"}),
        &json!({"type": "about:blank", "title": "t", "status": 400, "detail": "d", "secret": 1}), "body").is_some());
    // The two document requests above, then every call below.
    let mut calls = 2;
    let mut send = |method: &'static str, path: String, body: Option<Value>| {
        calls += 1;
        let (base, admin) = (base.clone(), admin.clone());
        async move { call(&base, method, &path, &admin, body).await }
    };

    // Issue through the API; the secret is in this response only.
    let issued = send(
        "POST",
        "/admin/tokens".into(),
        Some(
            json!({"name": "app", "subject": "alice", "scopes": ["notes:read", "notes:write"],
                    "audiences": ["notes"], "ttl_seconds": 86400, "metadata": {"team": "a"}}),
        ),
    )
    .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    documented(&doc, "POST", "/admin/tokens", &issued);
    let token = issued.body["token"].as_str().unwrap().to_owned();
    let id = issued.body["record"]["id"].as_str().unwrap().to_owned();
    let notes = |method: &'static str, token: &str| {
        let (base, token) = (base.clone(), token.to_owned());
        async move {
            let body = (method == "POST").then(|| json!({"text": "hi"}));
            call(&base, method, "/notes", &token, body).await.status
        }
    };
    assert_eq!(notes("POST", &token).await, StatusCode::CREATED);

    // Show and list never carry a secret.
    let shown = send("GET", format!("/admin/tokens/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    documented(&doc, "GET", "/admin/tokens/{id}", &shown);
    assert!(!shown.body.to_string().contains(&token));
    assert_eq!(shown.body["status"], "active");
    let listed = send("GET", "/admin/tokens?subject=alice&limit=1".into(), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    documented(&doc, "GET", "/admin/tokens", &listed);
    assert_eq!(listed.body["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["next_after"], id);

    // Narrow its scope: the write is refused, the read still served.
    let narrowed = send(
        "PATCH",
        format!("/admin/tokens/{id}"),
        Some(json!({"remove_scopes": ["notes:write"], "rate": {"count": 100, "period_seconds": 60, "burst": 10}})),
    )
    .await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.body);
    documented(&doc, "PATCH", "/admin/tokens/{id}", &narrowed);
    assert_eq!(narrowed.body["scopes"], json!(["notes:read"]));
    assert_eq!(notes("POST", &token).await, StatusCode::FORBIDDEN);
    assert_eq!(notes("GET", &token).await, StatusCode::OK);

    // Disable: 401 like a revoked token; enable: served again.
    let disabled = send("POST", format!("/admin/tokens/{id}/disable"), None).await;
    documented(&doc, "POST", "/admin/tokens/{id}/disable", &disabled);
    assert_eq!(disabled.body["status"], "disabled");
    assert_eq!(notes("GET", &token).await, StatusCode::UNAUTHORIZED);
    let enabled = send("POST", format!("/admin/tokens/{id}/enable"), None).await;
    documented(&doc, "POST", "/admin/tokens/{id}/enable", &enabled);
    assert_eq!(notes("GET", &token).await, StatusCode::OK);

    // Errors are problem+json, and documented.
    let unknown_scope = send(
        "PATCH",
        format!("/admin/tokens/{id}"),
        Some(json!({"add_scopes": ["notes:wirte"]})),
    )
    .await;
    assert_eq!(unknown_scope.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown_scope.content_type, "application/problem+json");
    assert!(
        unknown_scope.body["detail"]
            .as_str()
            .unwrap()
            .contains("notes:write")
    );
    documented(&doc, "PATCH", "/admin/tokens/{id}", &unknown_scope);
    let missing = send(
        "GET",
        "/admin/tokens/tok_00000000000000000000000000".into(),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.content_type, "application/problem+json");
    documented(&doc, "GET", "/admin/tokens/{id}", &missing);

    // Rotate: a new secret, once; revoke the new one for good.
    let rotated = send(
        "POST",
        format!("/admin/tokens/{id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    documented(&doc, "POST", "/admin/tokens/{id}/rotate", &rotated);
    let new_id = rotated.body["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated.body["record"]["rotated_from"], id);
    let revoked = send("POST", format!("/admin/tokens/{new_id}/revoke"), None).await;
    documented(&doc, "POST", "/admin/tokens/{id}/revoke", &revoked);
    assert_eq!(revoked.body["status"], "revoked");
    let late = send(
        "PATCH",
        format!("/admin/tokens/{new_id}"),
        Some(json!({"name": "late"})),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    documented(&doc, "PATCH", "/admin/tokens/{id}", &late);

    // A metered token: ten uses, then 403 usage-exhausted; a reset gives
    // it five more.
    let trial = send(
        "POST",
        "/admin/tokens".into(),
        Some(
            json!({"name": "trial", "subject": "alice", "scopes": ["notes:read"],
                    "audiences": ["notes"], "uses": {"uses": 10}}),
        ),
    )
    .await;
    assert_eq!(trial.status, StatusCode::CREATED, "{}", trial.body);
    documented(&doc, "POST", "/admin/tokens", &trial);
    assert_eq!(
        trial.body["record"]["uses"],
        json!({"limit": 10, "remaining": 10, "refill": null})
    );
    let trial_token = trial.body["token"].as_str().unwrap().to_owned();
    let trial_id = trial.body["record"]["id"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        assert_eq!(notes("GET", &trial_token).await, StatusCode::OK);
    }
    assert_eq!(notes("GET", &trial_token).await, StatusCode::FORBIDDEN);
    let reset = send(
        "POST",
        format!("/admin/tokens/{trial_id}/uses/reset"),
        Some(json!({"remaining": 5})),
    )
    .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    documented(&doc, "POST", "/admin/tokens/{id}/uses/reset", &reset);
    assert_eq!(reset.body["uses"]["remaining"], 5);
    assert_eq!(notes("GET", &trial_token).await, StatusCode::OK);
    let not_metered = send("POST", format!("/admin/tokens/{id}/uses/reset"), None).await;
    assert_eq!(not_metered.status, StatusCode::CONFLICT);
    documented(&doc, "POST", "/admin/tokens/{id}/uses/reset", &not_metered);

    // Every admin call is in the audit file, and no secret is.
    assert!(server.terminate(), "a clean shutdown");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let admin_records = audit.lines().filter(|l| l.contains("\"/admin/")).count();
    assert_eq!(admin_records, calls, "{audit}");
    for secret in [
        &token,
        &admin,
        &trial_token,
        rotated.body["token"].as_str().unwrap(),
    ] {
        tokengate_tests::process::assert_no_fragment(&audit, secret);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_works_on_postgres() {
    let Some(db) = tokengate_postgres::testing::TestDatabase::create().await else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let dir = temp_dir("axum-notes-admin-pg");
    let pepper = dir.join("pepper").display().to_string();
    let global = ["--pepper-file", pepper.as_str()];
    cli(bin, db.url(), &[&global[..], &["init"]].concat());
    let flags = ["--db", db.url(), "--pepper-file", &pepper, "--admin"];
    let mut server = start_example_with(bin, &dir, "axum-notes listening on ", &flags);
    let base = server.addr.clone();
    let admin = issue_admin(bin, db.url(), &global);
    let issued = call(
        &base,
        "POST",
        "/admin/tokens",
        &admin,
        Some(
            json!({"name": "app", "subject": "alice", "scopes": ["notes:read", "notes:write"],
                    "audiences": ["notes"]}),
        ),
    )
    .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let token = issued.body["token"].as_str().unwrap().to_owned();
    let id = issued.body["record"]["id"].as_str().unwrap().to_owned();
    let post = || call(&base, "POST", "/notes", &token, Some(json!({"text": "hi"})));
    assert_eq!(post().await.status, StatusCode::CREATED);
    let narrowed = call(
        &base,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        &admin,
        Some(json!({"scopes": ["notes:read"]})),
    )
    .await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.body);
    assert_eq!(post().await.status, StatusCode::FORBIDDEN);
    let disabled = call(
        &base,
        "POST",
        &format!("/admin/tokens/{id}/disable"),
        &admin,
        None,
    )
    .await;
    assert_eq!(disabled.body["status"], "disabled");
    let get = || call(&base, "GET", "/notes", &token, None);
    assert_eq!(get().await.status, StatusCode::UNAUTHORIZED);
    call(
        &base,
        "POST",
        &format!("/admin/tokens/{id}/enable"),
        &admin,
        None,
    )
    .await;
    assert_eq!(get().await.status, StatusCode::OK);
    // The store is the truth: the CLI on the same database sees the change.
    let shown: Value = serde_json::from_str(
        cli(
            bin,
            db.url(),
            &[&global[..], &["show", &id, "--json"]].concat(),
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(shown["scopes"], json!(["notes:read"]));
    assert!(server.terminate(), "a clean shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_admin_token_hands_out_only_what_it_holds_through_the_gate() {
    let dir = temp_dir("axum-notes-delegate");
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let mut server = start_example_with(bin, &dir, "axum-notes listening on ", &["--admin"]);
    let base = server.addr.clone();
    let db = dir.join("tokengate.db");
    let delegate = cli(
        bin,
        &db,
        &[
            "issue",
            "--name",
            "team",
            "--subject",
            "team",
            "--scope",
            "tokengate:delegate",
            "--scope",
            "notes:read",
            "--audience",
            "notes",
            "--ttl",
            "1h",
        ],
    )
    .trim()
    .to_owned();
    let doc = call(&base, "GET", "/admin/openapi.json", &delegate, None).await;
    assert_eq!(
        doc.status,
        StatusCode::OK,
        "either admin scope opens /admin"
    );
    let doc = doc.body;
    // The document lists the scopes this deployment knows.
    let scopes = &doc["components"]["schemas"]["ScopeText"]["enum"];
    assert!(
        scopes.as_array().unwrap().contains(&json!("notes:read")),
        "{scopes}"
    );

    let issue = |scopes: Value| json!({"name": "app", "subject": "alice", "scopes": scopes, "audiences": ["notes"]});
    let made = call(
        &base,
        "POST",
        "/admin/tokens",
        &delegate,
        Some(issue(json!(["notes:read"]))),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    documented(&doc, "POST", "/admin/tokens", &made);
    let minted = made.body["token"].as_str().unwrap().to_owned();
    for scopes in [json!(["tokengate:admin"]), json!(["notes:write"])] {
        let refused = call(
            &base,
            "POST",
            "/admin/tokens",
            &delegate,
            Some(issue(scopes)),
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert_eq!(
            refused.body["type"],
            "urn:tokengate:problem:delegation-exceeded"
        );
        documented(&doc, "POST", "/admin/tokens", &refused);
    }
    // The token it minted is no admin of any kind.
    let shut_out = call(&base, "GET", "/admin/tokens", &minted, None).await;
    assert_eq!(shut_out.status, StatusCode::FORBIDDEN);
    assert_eq!(
        shut_out.body["type"],
        "urn:tokengate:problem:insufficient-scope"
    );
    documented(&doc, "GET", "/admin/tokens", &shut_out);
    // It sees only what it may manage: its own minted token, not itself
    // nor the demo token (notes:write).
    let listed = call(&base, "GET", "/admin/tokens", &delegate, None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body["tokens"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    assert!(server.terminate());
    std::fs::remove_dir_all(&dir).unwrap();
}
