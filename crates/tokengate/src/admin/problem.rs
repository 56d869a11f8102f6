//! Every error of the admin API as an RFC 9457 problem, and the extractors
//! whose rejections are problems too.
//!
//! One rule for what a bad request gets, everywhere:
//!
//! | status | when |
//! |---|---|
//! | 400 | the request cannot be read: a body that is not JSON, a query string not of the documented form |
//! | 404 | no such path, or no such token (an id that is not a token id included) |
//! | 405 | a method the path does not serve (with `Allow`) |
//! | 409 | the token's state forbids it (revoked, not usage-limited, changed meanwhile) |
//! | 413 | a body over the size limit |
//! | 415 | a body without `Content-Type: application/json` |
//! | 422 | JSON that parses but breaks the schema (a wrong type, an unknown or missing field) or a rule (a scope no server knows, a lifetime over the maximum) |
//! | 503 | the store cannot answer |

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use serde::{Deserialize, Serialize};
use tokengate_store::{LifecycleError, StoreError};
use utoipa::ToSchema;

/// An RFC 9457 problem, as every error of the admin API (and every refusal
/// of the Gate) is sent: `application/problem+json`, `type` in the
/// `urn:tokengate:problem:` namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:tokengate:problem:not-found`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary: the status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The scopes the token lacks (the Gate's 403 `insufficient-scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_scopes: Option<Vec<String>>,
    /// Seconds until a retry can succeed (the Gate's 429s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:tokengate:problem:{}", slug(status)),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            missing_scopes: None,
            retry_after: None,
        }
    }
}

/// The problem type of each status the admin API answers itself.
fn slug(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::FORBIDDEN => "delegation-exceeded",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable-content",
        StatusCode::SERVICE_UNAVAILABLE => "store-unavailable",
        _ => "internal-error",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// 422: a value that parses but breaks a rule.
pub(crate) fn unprocessable(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
}

/// 400: a query string not of the documented form.
pub(crate) fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The problem a lifecycle error is.
pub(crate) fn failed(error: &LifecycleError) -> Problem {
    let status = match error {
        LifecycleError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
        LifecycleError::Store(
            StoreError::Conflict(_) | StoreError::Stale(_) | StoreError::Refused(_),
        )
        | LifecycleError::NotChangeable { .. }
        | LifecycleError::Contended { .. }
        | LifecycleError::NotRotatable { .. }
        | LifecycleError::NotUsageLimited { .. } => StatusCode::CONFLICT,
        LifecycleError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(status, error.to_string())
}

/// The problem a JSON body's rejection is: axum's statuses already follow
/// the rule (syntax 400, data 422, no JSON content type 415, too large
/// 413).
fn rejected(rejection: &JsonRejection) -> Problem {
    Problem::new(rejection.status(), rejection.body_text())
}

/// A required JSON body.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

/// A JSON body that may be left out (then `T::default()`); one that is
/// there follows the same rule as [`Body`].
pub(crate) struct OptionalBody<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(is_json);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

/// Whether a content type is JSON (`application/json`, or
/// `application/...+json`), as axum's `Json` decides.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters; a query string not of the documented form is 400.
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(bad_query(rejection.body_text())),
        }
    }
}

/// 404 for a path under `/admin` that the API does not serve.
pub(crate) async fn no_such_path() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such admin API path")
}

/// 405 for a method the path does not serve (axum adds `Allow`).
pub(crate) async fn no_such_method() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not serve that method (see Allow)",
    )
}
