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
//! | `GET /admin/openapi.json` | the OpenAPI 3.1 document of all of this, generated from the code |
//!
//! The router does not check who calls: mount it behind the [`Gate`](crate::Gate),
//! whose policy gives every `/admin` route the [`ADMIN_SCOPE`] ([`policy_rules`]
//! adds those rules), so every call is authenticated, scope-checked, rate
//! limited and audited like any other request. Errors are
//! `application/problem+json` (RFC 9457), like every refusal of the Gate.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokengate_core::{
    Expiry, IssuancePolicy, IssuedToken, Lifecycle, LifecycleError, RateQuota, Refill, StoreError,
    TokenAdmin, TokenChanges, TokenId, TokenQuery, TokenRecord, TokenSpec, TokenStatus, TokenStore,
    UseLimit,
};
use tokengate_scope::{Requirement, ScopePolicyBuilder};
use utoipa::{OpenApi, ToSchema};

/// The scope every admin route requires.
pub const ADMIN_SCOPE: &str = "tokengate:admin";

/// Adds the admin routes to a scope policy: everything under `/admin`
/// requires [`ADMIN_SCOPE`].
///
/// # Panics
///
/// Never: the scope is a constant, checked by a test.
pub fn policy_rules(builder: ScopePolicyBuilder) -> ScopePolicyBuilder {
    #[allow(clippy::expect_used, reason = "a constant scope, checked by a test")]
    let admin = Requirement::all([ADMIN_SCOPE]).expect("tokengate:admin is a valid scope");
    builder
        .any_method("/admin/tokens", admin.clone())
        .any_method("/admin/{*rest}", admin)
}

/// The admin API over `lifecycle`'s store (see the [module docs](self)).
pub fn router<S>(lifecycle: Lifecycle<S>) -> Router
where
    S: TokenStore + TokenAdmin + Clone,
{
    Router::new()
        .route("/admin/tokens", post(issue::<S>).get(list::<S>))
        .route("/admin/tokens/{id}", get(show::<S>).patch(update::<S>))
        .route("/admin/tokens/{id}/disable", post(disable::<S>))
        .route("/admin/tokens/{id}/enable", post(enable::<S>))
        .route("/admin/tokens/{id}/revoke", post(revoke::<S>))
        .route("/admin/tokens/{id}/rotate", post(rotate::<S>))
        .route("/admin/tokens/{id}/uses/reset", post(reset_uses::<S>))
        .route("/admin/openapi.json", get(openapi))
        .with_state(std::sync::Arc::new(lifecycle))
}

type Shared<S> = State<std::sync::Arc<Lifecycle<S>>>;

/// The OpenAPI document of the admin API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokengate admin API",
        description = "Manage API tokens: issue, list, show, update, disable, enable, revoke, rotate, reset uses."
    ),
    paths(issue, list, show, update, disable, enable, revoke, rotate, reset_uses),
    components(schemas(
        TokenView,
        Issued,
        IssueRequest,
        UpdateRequest,
        RotateRequest,
        ResetUsesRequest,
        Quota,
        Uses,
        UsesView,
        TokenList,
        Problem
    ))
)]
struct ApiDoc;

async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

/// A token's record, never its secret. Times are RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The token id (`tok_...`).
    pub id: String,
    /// Its label.
    pub name: String,
    /// Its owner.
    pub subject: String,
    /// `active`, `expired`, `revoked` or `disabled`, now.
    pub status: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Where it may be used.
    pub audiences: Vec<String>,
    /// When it was issued.
    pub created_at: String,
    /// When it expires, if it does.
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// Since when it is disabled, while it is.
    pub disabled_at: Option<String>,
    /// When it was last seen on a request (written behind).
    pub last_used_at: Option<String>,
    /// The networks it may be used from; empty means any.
    pub allowed_networks: Vec<String>,
    /// A quota of its own, if it has one.
    pub rate: Option<Quota>,
    /// The token it replaced by rotation, if any.
    pub rotated_from: Option<String>,
    /// Labels for applications.
    pub metadata: BTreeMap<String, String>,
    /// A usage-limited token's limit and count left; absent for unlimited uses.
    pub uses: Option<UsesView>,
}

/// A usage-limited token's limit and what is left of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsesView {
    /// The uses it was issued with (or last given).
    pub limit: u64,
    /// The count left now.
    pub remaining: u64,
    /// `N/INTERVAL` (e.g. `100/1day`): the count is set to N at every
    /// INTERVAL since the Unix epoch; absent when it never refills.
    pub refill: Option<String>,
}

/// A usage limit: `uses` requests, and a `refill` (`N/INTERVAL`, e.g.
/// `100/1d`) if the count comes back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Uses {
    /// How many requests (at least 1).
    pub uses: u64,
    /// `N/INTERVAL`, the interval 1s to 366 days.
    pub refill: Option<String>,
}

/// A rate quota: `count` requests per `period_seconds`, bursts of `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// Requests per period.
    pub count: u32,
    /// The period, in seconds.
    pub period_seconds: u64,
    /// The most requests back to back.
    pub burst: u32,
}

/// A token just issued or rotated: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Issued {
    /// The secret. It is not stored and cannot be shown again.
    pub token: String,
    /// The token's record.
    pub record: TokenView,
}

/// A page of tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens, oldest first.
    pub tokens: Vec<TokenView>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<String>,
}

/// What to issue.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    name: String,
    subject: String,
    scopes: Vec<String>,
    audiences: Vec<String>,
    /// The lifetime in seconds (default 90 days, the maximum).
    ttl_seconds: Option<u64>,
    #[serde(default)]
    allowed_networks: Vec<String>,
    rate: Option<Quota>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// A usage limit: the token admits this many requests.
    uses: Option<Uses>,
}

/// What to change; what is absent stays. `rate: null` drops the token's
/// own quota, `uses: null` its usage limit (a new limit keeps the count
/// left; reset it with `uses/reset`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    name: Option<String>,
    /// Replaces the scopes.
    scopes: Option<Vec<String>>,
    #[serde(default)]
    add_scopes: Vec<String>,
    #[serde(default)]
    remove_scopes: Vec<String>,
    audiences: Option<Vec<String>>,
    /// A new lifetime from now, in seconds.
    ttl_seconds: Option<u64>,
    allowed_networks: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Quota>)]
    rate: Option<Option<Quota>>,
    #[serde(default)]
    set_metadata: BTreeMap<String, String>,
    #[serde(default)]
    remove_metadata: Vec<String>,
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Uses>)]
    uses: Option<Option<Uses>>,
}

/// A field present (a value or `null`) or absent.
fn some_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What count to leave a usage-limited token.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetUsesRequest {
    /// The count left (default: the limit's uses).
    remaining: Option<u64>,
}

/// How to rotate.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old token keeps working, in seconds (default 3600).
    grace_seconds: Option<u64>,
}

/// The list filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this subject's tokens.
    subject: Option<String>,
    /// `active`, `expired`, `revoked` or `disabled`.
    status: Option<String>,
    /// Only active tokens expiring within this many seconds.
    expiring_within_seconds: Option<u64>,
    /// At most this many tokens.
    limit: Option<usize>,
    /// The page after this token id.
    after: Option<String>,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: String) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
        }
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

/// A JSON body whose rejection is a problem, like every other error.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters whose rejection is a problem.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail.into())
}

fn failed(error: &LifecycleError) -> Problem {
    let status = match error {
        LifecycleError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
        LifecycleError::Store(StoreError::Conflict(_) | StoreError::Changed(_))
        | LifecycleError::NotChangeable { .. }
        | LifecycleError::Contended { .. } => StatusCode::CONFLICT,
        LifecycleError::NotRotatable { .. } | LifecycleError::NotUsageLimited { .. } => {
            StatusCode::CONFLICT
        }
        LifecycleError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(status, error.to_string())
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn view(record: &TokenRecord) -> TokenView {
    TokenView {
        id: record.id.to_string(),
        name: record.name.clone(),
        subject: record.subject.clone(),
        status: record.status(SystemTime::now()).as_str().to_owned(),
        scopes: record
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        audiences: record
            .audiences
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        created_at: rfc3339(record.created_at),
        expires_at: record.expires_at.map(rfc3339),
        revoked_at: record.revoked_at.map(rfc3339),
        disabled_at: record.disabled_at.map(rfc3339),
        last_used_at: record.last_used_at.map(rfc3339),
        allowed_networks: record
            .allowed_networks
            .iter()
            .map(ToString::to_string)
            .collect(),
        rate: record.rate_quota.map(|q| Quota {
            count: q.count().get(),
            period_seconds: q.period().as_secs(),
            burst: q.burst().get(),
        }),
        rotated_from: record.rotated_from.as_ref().map(ToString::to_string),
        metadata: record.metadata.clone(),
        uses: record.uses.map(|uses| UsesView {
            limit: uses.limit.uses(),
            remaining: uses.remaining_at(SystemTime::now()),
            refill: uses.limit.refill().map(|refill| refill.to_string()),
        }),
    }
}

fn use_limit(uses: &Uses) -> Result<UseLimit, Problem> {
    let count =
        std::num::NonZeroU64::new(uses.uses).ok_or_else(|| bad("uses.uses must be at least 1"))?;
    let limit = UseLimit::new(count);
    match &uses.refill {
        Some(refill) => Ok(limit.with_refill(
            refill
                .parse::<Refill>()
                .map_err(|e| bad(format!("uses.refill: {e}")))?,
        )),
        None => Ok(limit),
    }
}

fn issued(issued: &IssuedToken) -> Issued {
    Issued {
        token: issued.token.expose_secret().to_owned(),
        record: view(&issued.record),
    }
}

fn parse_all<T: std::str::FromStr>(what: &str, items: &[String]) -> Result<Vec<T>, Problem>
where
    T::Err: std::fmt::Display,
{
    items
        .iter()
        .map(|item| {
            item.parse().map_err(|e| {
                bad(format!(
                    "{what} {}: {e}",
                    tokengate_core::Echo::new(item, 80)
                ))
            })
        })
        .collect()
}

fn quota(quota: Quota) -> Result<RateQuota, Problem> {
    let count = std::num::NonZeroU32::new(quota.count)
        .ok_or_else(|| bad("rate.count must be at least 1"))?;
    let burst = std::num::NonZeroU32::new(quota.burst)
        .ok_or_else(|| bad("rate.burst must be at least 1"))?;
    RateQuota::new(count, Duration::from_secs(quota.period_seconds), burst)
        .map_err(|e| bad(format!("rate: {e}")))
}

fn parse_id(id: &str) -> Result<TokenId, Problem> {
    id.parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "no such token id".to_owned()))
}

/// The lifecycle with the store's scope catalogue in its policy, so that
/// scopes no server knows are refused as at the CLI.
async fn checked<S: TokenStore + TokenAdmin + Clone>(
    lifecycle: &Lifecycle<S>,
) -> Result<Lifecycle<S>, Problem> {
    let catalogue = lifecycle.scope_catalogue().await.map_err(|e| failed(&e))?;
    let mut policy = IssuancePolicy::default();
    if !catalogue.is_empty() {
        policy = policy.scope_catalogue(catalogue);
    }
    Ok(lifecycle.clone().with_policy(policy))
}

/// Issue a token.
#[utoipa::path(post, path = "/admin/tokens", request_body = IssueRequest,
    responses((status = 201, body = Issued), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn issue<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Body(request): Body<IssueRequest>,
) -> Result<(StatusCode, Json<Issued>), Problem> {
    let mut spec = TokenSpec::new(request.name, request.subject)
        .scopes(parse_all("scope", &request.scopes)?)
        .audiences(parse_all("audience", &request.audiences)?)
        .allowed_networks(parse_all("network", &request.allowed_networks)?);
    if let Some(ttl) = request.ttl_seconds {
        spec = spec.expiry(Expiry::After(Duration::from_secs(ttl)));
    }
    if let Some(rate) = request.rate {
        spec = spec.rate_quota(quota(rate)?);
    }
    if let Some(uses) = &request.uses {
        spec = spec.uses(use_limit(uses)?);
    }
    for (key, value) in request.metadata {
        spec = spec.metadata(key, value);
    }
    let made = checked(&lifecycle)
        .await?
        .issue(spec)
        .await
        .map_err(|e| failed(&e))?;
    Ok((StatusCode::CREATED, Json(issued(&made))))
}

/// List tokens, oldest first.
#[utoipa::path(get, path = "/admin/tokens", params(ListParams),
    responses((status = 200, body = TokenList), (status = 400, body = Problem)))]
async fn list<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Params(params): Params<ListParams>,
) -> Result<Json<TokenList>, Problem> {
    let mut query = TokenQuery::new();
    if let Some(subject) = params.subject {
        query = query.subject(subject);
    }
    if let Some(status) = params.status {
        query = query.status(status.parse::<TokenStatus>().map_err(bad)?);
    }
    if let Some(seconds) = params.expiring_within_seconds {
        query = query.expiring_within(Duration::from_secs(seconds));
    }
    if let Some(limit) = params.limit {
        query = query.limit(limit);
    }
    if let Some(after) = &params.after {
        query = query.after(after.parse().map_err(|_| bad("after is not a token id"))?);
    }
    let records = lifecycle
        .list_matching(&query)
        .await
        .map_err(|e| failed(&e))?;
    let next_after = match params.limit {
        Some(limit) if records.len() == limit => records.last().map(|r| r.id.to_string()),
        _ => None,
    };
    Ok(Json(TokenList {
        tokens: records.iter().map(view).collect(),
        next_after,
    }))
}

/// Show one token.
#[utoipa::path(get, path = "/admin/tokens/{id}", params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 404, body = Problem)))]
async fn show<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let id = parse_id(&id)?;
    match lifecycle.get(&id).await.map_err(|e| failed(&e))? {
        Some(record) => Ok(Json(view(&record))),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no token with id {id}"),
        )),
    }
}

/// Change a token without reissuing it.
#[utoipa::path(patch, path = "/admin/tokens/{id}", request_body = UpdateRequest,
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn update<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
    Body(request): Body<UpdateRequest>,
) -> Result<Json<TokenView>, Problem> {
    let id = parse_id(&id)?;
    let mut changes = TokenChanges::new();
    if let Some(name) = request.name {
        changes = changes.name(name);
    }
    if let Some(scopes) = &request.scopes {
        changes = changes.scopes(parse_all("scope", scopes)?);
    }
    for scope in parse_all("scope", &request.add_scopes)? {
        changes = changes.add_scope(scope);
    }
    for scope in parse_all("scope", &request.remove_scopes)? {
        changes = changes.remove_scope(scope);
    }
    if let Some(audiences) = &request.audiences {
        changes = changes.audiences(parse_all("audience", audiences)?);
    }
    if let Some(ttl) = request.ttl_seconds {
        changes = changes.expiry(Expiry::After(Duration::from_secs(ttl)));
    }
    if let Some(networks) = &request.allowed_networks {
        changes = changes.allowed_networks(parse_all("network", networks)?);
    }
    if let Some(rate) = request.rate {
        changes = changes.rate_quota(rate.map(quota).transpose()?);
    }
    for (key, value) in request.set_metadata {
        changes = changes.set_metadata(key, value);
    }
    for key in request.remove_metadata {
        changes = changes.remove_metadata(key);
    }
    if let Some(uses) = &request.uses {
        changes = changes.uses(uses.as_ref().map(use_limit).transpose()?);
    }
    let record = checked(&lifecycle)
        .await?
        .update(&id, &changes)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Disable a token until it is enabled again (401 like a revoked one).
#[utoipa::path(post, path = "/admin/tokens/{id}/disable", params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn disable<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let record = lifecycle
        .disable(&parse_id(&id)?)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Enable a disabled token.
#[utoipa::path(post, path = "/admin/tokens/{id}/enable", params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn enable<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let record = lifecycle
        .enable(&parse_id(&id)?)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Revoke a token for good.
#[utoipa::path(post, path = "/admin/tokens/{id}/revoke", params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 404, body = Problem)))]
async fn revoke<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let record = lifecycle
        .revoke(&parse_id(&id)?)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Replace a token; the old one keeps working for the grace period.
#[utoipa::path(post, path = "/admin/tokens/{id}/rotate", request_body = RotateRequest,
    params(("id" = String, Path, description = "The token id")),
    responses((status = 201, body = Issued), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn rotate<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Issued>), Problem> {
    // The body is optional: none rotates with the default grace.
    let request: RotateRequest = optional_body(&body)?;
    let grace = request
        .grace_seconds
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let made = lifecycle
        .rotate(&parse_id(&id)?, grace)
        .await
        .map_err(|e| failed(&e))?;
    Ok((StatusCode::CREATED, Json(issued(&made))))
}

/// Set the count a usage-limited token has left (by default the uses it
/// was issued with); it holds from the next request on every instance.
#[utoipa::path(post, path = "/admin/tokens/{id}/uses/reset", request_body = ResetUsesRequest,
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reset_uses<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TokenView>, Problem> {
    let request: ResetUsesRequest = optional_body(&body)?;
    let record = lifecycle
        .reset_uses(&parse_id(&id)?, request.remaining)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// A JSON body that may be left out (the defaults then).
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("the body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate_core::{KeyId, MemoryStore, Pepper, TokenHasher};
    use tower::ServiceExt;

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
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_api_works_on_the_memory_store() {
        let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [3; 32]).unwrap());
        let store = MemoryStore::new();
        let app = router(Lifecycle::new(store.clone(), hasher.clone()));
        let (status, issued) = send(
            &app,
            "POST",
            "/admin/tokens",
            r#"{"name":"a","subject":"s","scopes":["notes:read"],"audiences":["notes"]}"#,
        )
        .await;
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
        let (status, disabled) =
            send(&app, "POST", &format!("/admin/tokens/{id}/disable"), "").await;
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
                "uses":{"uses":3,"refill":"5/1h"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        let uses = &issued["record"]["uses"];
        assert_eq!(
            (&uses["limit"], &uses["remaining"], &uses["refill"]),
            (&3.into(), &3.into(), &"5/1h".into())
        );
        let id = issued["record"]["id"].as_str().unwrap().to_owned();
        let spend =
            UseLimit::new(std::num::NonZeroU64::new(3).unwrap()).spend_at(SystemTime::now());
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
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

        let patch = format!("/admin/tokens/{id}");
        let (status, problem) = send(
            &app,
            "PATCH",
            &patch,
            r#"{"uses":{"uses":2,"refill":"1/1ms"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
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
}
