//! A JSON API to manage tokens, for an axum router behind the Gate.
//!
//! [`router`] serves, under `/admin`:
//!
//! | method and path | what |
//! |---|---|
//! | `POST /admin/tokens` | issue (201; the secret is in this response only) |
//! | `GET /admin/tokens` | list: `subject`, `status`, `expiring_within_seconds`, `limit`, `after` |
//! | `GET /admin/tokens/{id}` | show |
//! | `PATCH /admin/tokens/{id}` | update: name, scopes, audiences, expiry, networks, quota, metadata, usage limit |
//! | `POST /admin/tokens/{id}/disable`, `/enable`, `/revoke` | change its state |
//! | `POST /admin/tokens/{id}/rotate` | rotate (201; the new secret in this response only) |
//! | `POST /admin/tokens/{id}/uses/reset` | set a usage-limited token's count left (by default its limit) |
//! | `POST /admin/webhooks`, `GET /admin/webhooks`, `DELETE /admin/webhooks/{id}` | lifecycle webhooks (root admins only; the secret in the add's response only) |
//! | `GET /admin/webhooks/deliveries` | the latest deliveries: `failed`, `limit` |
//! | `GET /admin/tokens/{id}/usage` | its requests by hour: admitted, refused by reason, last client (`since_seconds`) |
//! | `GET /admin/openapi.json` | the OpenAPI 3.1 document of all of this, generated from the code |
//!
//! The router does not authenticate: mount it behind the
//! [`Gate`](crate::Gate), whose policy gives every `/admin` route to
//! [`ADMIN_SCOPE`] or [`DELEGATE_SCOPE`] ([`policy_rules`] adds those
//! rules), so every call is authenticated, scope-checked, rate limited and
//! audited like any other request. Who may manage what:
//!
//! - a token with [`ADMIN_SCOPE`] (`tokengate:admin`) manages every token;
//! - a token with [`DELEGATE_SCOPE`] (`tokengate:delegate`) manages only
//!   tokens within its own scopes (exactly, or through `resource:*`) and
//!   audiences, never one with a `tokengate:` scope (so it can neither
//!   mint an admin token nor change itself): others are 404 to it, and
//!   asking to hand out more is 403;
//! - a request with no principal (the router mounted without
//!   authentication) is root: whoever mounted it decided who calls.
//!
//! Errors are `application/problem+json` (RFC 9457) with a type in the
//! `urn:tokengate:problem:` namespace, as every refusal of the Gate; the
//! statuses follow one rule (`problem`'s table: 400 for what cannot be
//! read, 415 for a body that is not JSON, 422 for JSON that breaks the
//! schema or a rule).

mod delegation;
mod doc;
mod handlers;
mod problem;
mod types;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokengate_scope::{Requirement, ScopePolicyBuilder};
use tokengate_store::{Lifecycle, TokenAdmin, TokenStore};
use utoipa::OpenApi;

pub use problem::Problem;
pub use types::{
    DeliveryList, DeliveryParams, DeliveryView, IssueRequest, Issued, ListParams, Quota,
    RefillSpec, ResetUsesRequest, RotateRequest, TokenList, TokenView, UpdateRequest,
    UsageBucketView, UsageParams, UsageView, UseLimitSpec, UsesView, WebhookAdded, WebhookList,
    WebhookRequest, WebhookView,
};

/// The scope of a root admin token: it manages every token.
pub const ADMIN_SCOPE: &str = "tokengate:admin";

/// The scope of a delegated admin token: it manages only tokens within its
/// own scopes and audiences (see the [module docs](self)).
pub const DELEGATE_SCOPE: &str = "tokengate:delegate";

/// Adds the admin routes to a scope policy: everything under `/admin`
/// requires [`ADMIN_SCOPE`] or [`DELEGATE_SCOPE`].
///
/// # Panics
///
/// Never: the scopes are constants, checked by a test.
pub fn policy_rules(builder: ScopePolicyBuilder) -> ScopePolicyBuilder {
    #[allow(clippy::expect_used, reason = "constant scopes, checked by a test")]
    let admin = Requirement::any([ADMIN_SCOPE, DELEGATE_SCOPE]).expect("valid scopes");
    builder
        .any_method("/admin/tokens", admin.clone())
        .any_method("/admin/{*rest}", admin)
}

/// The admin API over `lifecycle`'s store (see the [module docs](self)).
pub fn router<S>(lifecycle: Lifecycle<S>) -> Router
where
    S: TokenStore + TokenAdmin + Clone,
{
    use handlers::{
        add_webhook, deliveries, disable, enable, issue, list, list_webhooks, remove_webhook,
        reset_uses, revoke, rotate, show, update, usage,
    };
    Router::new()
        .route("/admin/tokens", post(issue::<S>).get(list::<S>))
        .route("/admin/tokens/{id}", get(show::<S>).patch(update::<S>))
        .route("/admin/tokens/{id}/disable", post(disable::<S>))
        .route("/admin/tokens/{id}/enable", post(enable::<S>))
        .route("/admin/tokens/{id}/revoke", post(revoke::<S>))
        .route("/admin/tokens/{id}/rotate", post(rotate::<S>))
        .route("/admin/tokens/{id}/uses/reset", post(reset_uses::<S>))
        .route("/admin/tokens/{id}/usage", get(usage::<S>))
        .route(
            "/admin/webhooks",
            post(add_webhook::<S>).get(list_webhooks::<S>),
        )
        .route("/admin/webhooks/deliveries", get(deliveries::<S>))
        .route(
            "/admin/webhooks/{id}",
            axum::routing::delete(remove_webhook::<S>),
        )
        .route("/admin/openapi.json", get(openapi::<S>))
        // Problems, not empty bodies, for what the API does not serve;
        // scoped to /admin so a router it is merged into keeps its own.
        .route("/admin/{*rest}", any(problem::no_such_path))
        .method_not_allowed_fallback(problem::no_such_method)
        .with_state(std::sync::Arc::new(lifecycle))
}

/// The OpenAPI document of the admin API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    doc::ApiDoc::openapi()
}

/// The document as this server serves it: where the store has a scope
/// catalogue (the scopes its servers' policies use), the scope schema
/// lists exactly those, so a client's tools know which scopes a token can
/// be given.
async fn openapi<S: TokenStore + TokenAdmin + Clone>(
    axum::extract::State(lifecycle): handlers::Shared<S>,
) -> Response {
    let mut document = openapi_document();
    if let Ok(catalogue) = lifecycle.scope_catalogue().await
        && !catalogue.is_empty()
    {
        doc::list_scopes(&mut document, catalogue.iter().map(|s| s.as_str()));
    }
    match document.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests;
