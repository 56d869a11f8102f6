//! The admin API's handlers, and the conversions between its JSON and the
//! lifecycle's types.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use tokengate_core::{Principal, RateQuota, Refill, TokenId, TokenRecord, TokenStatus, UseLimit};
use tokengate_store::{
    Expiry, IssuancePolicy, IssuedToken, Lifecycle, TokenAdmin, TokenPatch, TokenQuery, TokenSpec,
    TokenStore,
};

use super::delegation::Authority;
use super::problem::{Body, OptionalBody, Params, Problem, bad_query, failed, unprocessable};
use super::types::{
    DeliveryList, DeliveryParams, DeliveryView, IssueRequest, Issued, ListParams, Quota,
    ResetUsesRequest, RotateRequest, TokenIdText, TokenList, TokenView, UpdateRequest, UsageParams,
    UsageView, UseLimitSpec, WebhookAdded, WebhookList, WebhookRequest, WebhookView,
};

pub(crate) type Shared<S> = State<Arc<Lifecycle<S>>>;

/// The most tokens one list page holds.
const MAX_PAGE: usize = 100_000;

/// The longest `expiring_within_seconds`: ten years.
const MAX_WITHIN: u64 = 315_576_000;

/// The caller's [`Authority`], from the principal the Gate put in the
/// request.
pub(crate) struct Caller(Authority);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(Authority::of(parts.extensions.get::<Principal>())))
    }
}

pub(crate) fn view(record: &TokenRecord) -> TokenView {
    TokenView::from(record)
}

fn use_limit(uses: &UseLimitSpec) -> Result<UseLimit, Problem> {
    let count = std::num::NonZeroU64::new(uses.uses)
        .ok_or_else(|| unprocessable("uses.uses must be at least 1"))?;
    let limit = UseLimit::new(count);
    let Some(refill) = uses.refill else {
        return Ok(limit);
    };
    let amount = std::num::NonZeroU64::new(refill.amount)
        .ok_or_else(|| unprocessable("uses.refill.amount must be at least 1"))?;
    let refill = Refill::new(amount, Duration::from_secs(refill.every_seconds))
        .map_err(|e| unprocessable(format!("uses.refill: {e}")))?;
    Ok(limit.with_refill(refill))
}

fn issued(issued: &IssuedToken) -> Issued {
    Issued {
        token: issued.token.expose_secret().to_owned(),
        record: view(&issued.record),
    }
}

/// The key of the request's own `DPoP` proof, when it carries one: an
/// issue request with a proof binds the new token to the key that signed
/// it (its method, URL and time checked as the authenticate layer checks
/// them; no access token goes with it), so a client never copies its
/// thumbprint by hand.
pub(crate) struct ProofKey(
    Option<Result<tokengate_core::Thumbprint, tokengate_core::InvalidReason>>,
);

impl<S: Send + Sync> FromRequestParts<S> for ProofKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use tokengate_authenticate::dpop::DPOP;
        if !parts.headers.contains_key(DPOP) {
            return Ok(Self(None));
        }
        let mut request = axum::http::Request::new(());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        if tokengate_core::RequestTrail::peer_trusted(&parts.extensions) {
            tokengate_core::RequestTrail::note_peer_trusted(request.extensions_mut());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Ok(Self(Some(
            tokengate_authenticate::Dpop::new().proof_key(&request, now),
        )))
    }
}

/// The binding a request names: a DPoP key's thumbprint or a client
/// certificate's, never both.
fn binding(
    dpop_jkt: Option<&str>,
    cert_sha256: Option<&str>,
) -> Result<Option<tokengate_core::Binding>, Problem> {
    use tokengate_core::{Binding, Thumbprint};
    let parse = |what: &str, text: &str| {
        text.parse::<Thumbprint>().map_err(|e| {
            unprocessable(format!(
                "{what} {}: {e}",
                tokengate_core::Echo::new(text, 80)
            ))
        })
    };
    match (dpop_jkt, cert_sha256) {
        (Some(_), Some(_)) => Err(unprocessable(
            "a token is bound to a DPoP key or to a certificate, not both",
        )),
        (Some(jkt), None) => Ok(Some(Binding::Dpop(parse("dpop_jkt", jkt)?))),
        (None, Some(sha)) => Ok(Some(Binding::Certificate(parse("cert_sha256", sha)?))),
        (None, None) => Ok(None),
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
                unprocessable(format!(
                    "{what} {}: {e}",
                    tokengate_core::Echo::new(item, 80)
                ))
            })
        })
        .collect()
}

fn quota(quota: Quota) -> Result<RateQuota, Problem> {
    let count = std::num::NonZeroU32::new(quota.count)
        .ok_or_else(|| unprocessable("rate.count must be at least 1"))?;
    let burst = std::num::NonZeroU32::new(quota.burst)
        .ok_or_else(|| unprocessable("rate.burst must be at least 1"))?;
    RateQuota::new(count, Duration::from_secs(quota.period_seconds), burst)
        .map_err(|e| unprocessable(format!("rate: {e}")))
}

/// The quotas `rate` (`Some(None)`: none) and `rates` name: `rate`
/// first, then `rates`; `None` when neither is given.
fn quotas(
    rate: Option<Option<Quota>>,
    rates: Option<Vec<Quota>>,
) -> Result<Option<Vec<RateQuota>>, Problem> {
    if rate.is_none() && rates.is_none() {
        return Ok(None);
    }
    rate.flatten()
        .into_iter()
        .chain(rates.into_iter().flatten())
        .map(quota)
        .collect::<Result<_, _>>()
        .map(Some)
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such token id")
}

fn parse_id(id: &str) -> Result<TokenId, Problem> {
    id.parse().map_err(|_| not_found())
}

/// The token `id`, if it exists and the caller may manage it (404 alike
/// otherwise: a delegate learns nothing of tokens beyond it).
async fn visible<S: TokenStore + TokenAdmin + Clone>(
    lifecycle: &Lifecycle<S>,
    caller: &Authority,
    id: &str,
) -> Result<(TokenId, TokenRecord), Problem> {
    let id = parse_id(id)?;
    match lifecycle.get(&id).await.map_err(|e| failed(&e))? {
        Some(record) if caller.covers(&record) => Ok((id, record)),
        _ => Err(not_found()),
    }
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
    params(("DPoP" = Option<String>, Header, description = "The client's DPoP proof (RFC 9449) of this request: the token is bound to the key that signed it")),
    responses((status = 201, description = "Issued; the secret is in this response only", body = Issued)))]
pub(crate) async fn issue<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    ProofKey(proof_key): ProofKey,
    Body(request): Body<IssueRequest>,
) -> Result<(StatusCode, Json<Issued>), Problem> {
    let scopes = parse_all("scope", &request.scopes)?;
    let audiences = parse_all("audience", &request.audiences)?;
    caller.may_hand_out(&scopes, &audiences)?;
    let mut spec = TokenSpec::new(request.name, request.subject)
        .scopes(scopes)
        .audiences(audiences)
        .allowed_networks(parse_all("network", &request.allowed_networks)?);
    if let Some(ttl) = request.ttl_seconds {
        spec = spec.expiry(Expiry::After(Duration::from_secs(ttl)));
    }
    for rate in quotas(request.rate.map(Some), request.rates)?
        .into_iter()
        .flatten()
    {
        spec = spec.rate_quota(rate);
    }
    if let Some(uses) = &request.uses {
        spec = spec.uses(use_limit(uses)?);
    }
    for (key, value) in request.metadata {
        spec = spec.metadata(key, value);
    }
    let named = binding(request.dpop_jkt.as_deref(), request.cert_sha256.as_deref())?;
    match (named, proof_key) {
        (Some(_), Some(_)) => {
            return Err(unprocessable(
                "a DPoP header binds the token to its key: send it without dpop_jkt or cert_sha256",
            ));
        }
        (Some(binding), None) => spec = spec.binding(binding),
        (None, Some(key)) => {
            let jkt = key.map_err(|reason| {
                unprocessable(format!(
                    "the DPoP proof of this request does not hold ({})",
                    reason.as_str()
                ))
            })?;
            spec = spec.binding(tokengate_core::Binding::Dpop(jkt));
        }
        (None, None) => {}
    }
    let made = checked(&lifecycle)
        .await?
        .issue(spec)
        .await
        .map_err(|e| failed(&e))?;
    Ok((StatusCode::CREATED, Json(issued(&made))))
}

/// List tokens, oldest first (a delegated admin sees only those it may
/// manage, so its pages may hold fewer than `limit`).
#[utoipa::path(get, path = "/admin/tokens", params(ListParams),
    responses((status = 200, description = "A page of tokens", body = TokenList)))]
pub(crate) async fn list<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<TokenList>, Problem> {
    let mut query = TokenQuery::new();
    if let Some(subject) = params.subject {
        query = query.subject(subject);
    }
    if let Some(status) = params.status {
        query = query.status(status.parse::<TokenStatus>().map_err(bad_query)?);
    }
    if let Some(seconds) = params.expiring_within_seconds {
        if seconds > MAX_WITHIN {
            return Err(bad_query(format!(
                "expiring_within_seconds must be at most {MAX_WITHIN}"
            )));
        }
        query = query.expiring_within(Duration::from_secs(seconds));
    }
    if let Some(limit) = params.limit {
        if limit > MAX_PAGE {
            return Err(bad_query(format!("limit must be at most {MAX_PAGE}")));
        }
        query = query.limit(limit);
    }
    if let Some(after) = &params.after {
        query = query.after(
            after
                .parse()
                .map_err(|_| bad_query("after is not a token id"))?,
        );
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
        tokens: records
            .iter()
            .filter(|r| caller.covers(r))
            .map(view)
            .collect(),
        next_after,
    }))
}

/// Show one token.
#[utoipa::path(get, path = "/admin/tokens/{id}", params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token", body = TokenView)))]
pub(crate) async fn show<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let (_, record) = visible(&lifecycle, &caller, &id).await?;
    Ok(Json(view(&record)))
}

/// A token's requests by hour: admitted, refused by reason, and the last
/// client address (servers add what they counted every few seconds).
#[utoipa::path(get, path = "/admin/tokens/{id}/usage",
    params(("id" = TokenIdText, Path, description = "The token id"), UsageParams),
    responses((status = 200, description = "Hours with requests, oldest first", body = UsageView)))]
pub(crate) async fn usage<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Params(params): Params<UsageParams>,
) -> Result<Json<UsageView>, Problem> {
    let seconds = params.since_seconds.unwrap_or(7 * 86_400);
    if seconds > MAX_WITHIN {
        return Err(bad_query(format!(
            "since_seconds must be at most {MAX_WITHIN}"
        )));
    }
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let since = std::time::SystemTime::now()
        .checked_sub(Duration::from_secs(seconds))
        .unwrap_or(std::time::UNIX_EPOCH);
    let buckets = lifecycle
        .store()
        .usage(&id, since)
        .await
        .map_err(|e| failed(&e.into()))?;
    Ok(Json(UsageView::new(&id, &buckets)))
}

/// Only a root admin manages webhooks: they see every token's events.
fn root_only(caller: &Authority) -> Result<(), Problem> {
    match caller {
        Authority::Root => Ok(()),
        Authority::Delegate { .. } => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "webhooks receive every token's events: managing them needs tokengate:admin",
        )),
    }
}

fn webhook_view(hook: &tokengate_store::Webhook) -> WebhookView {
    WebhookView {
        id: hook.id.clone(),
        url: hook.url.clone(),
        events: hook.events.iter().map(|e| e.as_str().to_owned()).collect(),
        created_at: humantime::format_rfc3339_millis(hook.created_at).to_string(),
    }
}

/// Add a webhook (root admins only). Its signing secret is in this
/// response only.
#[utoipa::path(post, path = "/admin/webhooks", request_body = WebhookRequest,
    responses((status = 201, description = "Added; the secret is in this response only", body = WebhookAdded)))]
pub(crate) async fn add_webhook<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Body(request): Body<WebhookRequest>,
) -> Result<(StatusCode, Json<WebhookAdded>), Problem> {
    root_only(&caller)?;
    if let Some(bare) = request.events.iter().find(|e| !e.starts_with("token.")) {
        return Err(unprocessable(format!(
            "event type {bare:?} must be token.issued, token.revoked, ..."
        )));
    }
    let events = parse_all::<tokengate_store::EventType>("event type", &request.events)?;
    let hook = tokengate_store::Webhook::new(&request.url, events, request.secret)
        .map_err(|e| unprocessable(e.to_string()))?;
    lifecycle
        .store()
        .add_webhook(&hook)
        .await
        .map_err(|e| failed(&e.into()))?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookAdded {
            webhook: webhook_view(&hook),
            secret: hook.secret,
        }),
    ))
}

/// List the webhooks (root admins only), never their secrets.
#[utoipa::path(get, path = "/admin/webhooks",
    responses((status = 200, description = "Every webhook", body = WebhookList)))]
pub(crate) async fn list_webhooks<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
) -> Result<Json<WebhookList>, Problem> {
    root_only(&caller)?;
    let hooks = lifecycle
        .store()
        .webhooks()
        .await
        .map_err(|e| failed(&e.into()))?;
    Ok(Json(WebhookList {
        webhooks: hooks.iter().map(webhook_view).collect(),
    }))
}

/// Remove a webhook (root admins only); what it had pending is given up.
#[utoipa::path(delete, path = "/admin/webhooks/{id}",
    params(("id" = String, Path, description = "The webhook id")),
    responses((status = 204, description = "Removed")))]
pub(crate) async fn remove_webhook<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    root_only(&caller)?;
    let removed = lifecycle
        .store()
        .remove_webhook(&id)
        .await
        .map_err(|e| failed(&e.into()))?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(StatusCode::NOT_FOUND, "no such webhook id"))
    }
}

/// The latest webhook deliveries (root admins only), newest first.
#[utoipa::path(get, path = "/admin/webhooks/deliveries", params(DeliveryParams),
    responses((status = 200, description = "Deliveries, newest first", body = DeliveryList)))]
pub(crate) async fn deliveries<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Params(params): Params<DeliveryParams>,
) -> Result<Json<DeliveryList>, Problem> {
    root_only(&caller)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(bad_query("limit must be 1 to 1000"));
    }
    let log = lifecycle
        .store()
        .deliveries(params.failed.unwrap_or(false), limit)
        .await
        .map_err(|e| failed(&e.into()))?;
    let time = |at| humantime::format_rfc3339_millis(at).to_string();
    Ok(Json(DeliveryList {
        deliveries: log
            .iter()
            .map(|d| DeliveryView {
                event_id: d.event_id.clone(),
                webhook_id: d.webhook_id.clone(),
                kind: d.kind.as_str().to_owned(),
                state: d.state.as_str().to_owned(),
                attempts: d.attempts,
                last_status: d.last_status,
                last_error: d.last_error.clone(),
                created: time(d.created),
                next_at: time(d.next_at),
            })
            .collect(),
    }))
}

/// Change a token without reissuing it.
#[utoipa::path(patch, path = "/admin/tokens/{id}", request_body = UpdateRequest,
    params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token as changed", body = TokenView)))]
pub(crate) async fn update<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(request): Body<UpdateRequest>,
) -> Result<Json<TokenView>, Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let mut changes = TokenPatch::new();
    if let Some(name) = request.name {
        changes = changes.name(name);
    }
    let added: Vec<_> = parse_all("scope", &request.add_scopes)?;
    let replaced: Option<Vec<_>> = request
        .scopes
        .as_deref()
        .map(|s| parse_all("scope", s))
        .transpose()?;
    let audiences: Option<Vec<_>> = request
        .audiences
        .as_deref()
        .map(|a| parse_all("audience", a))
        .transpose()?;
    caller.may_hand_out(
        replaced.iter().flatten().chain(&added),
        audiences.iter().flatten(),
    )?;
    if let Some(scopes) = replaced {
        changes = changes.scopes(scopes);
    }
    for scope in added {
        changes = changes.add_scope(scope);
    }
    for scope in parse_all("scope", &request.remove_scopes)? {
        changes = changes.remove_scope(scope);
    }
    if let Some(audiences) = audiences {
        changes = changes.audiences(audiences);
    }
    if let Some(ttl) = request.ttl_seconds {
        changes = changes.expiry(Expiry::After(Duration::from_secs(ttl)));
    }
    if let Some(networks) = &request.allowed_networks {
        changes = changes.allowed_networks(parse_all("network", networks)?);
    }
    if let Some(rates) = quotas(request.rate, request.rates)? {
        changes = changes.rate_quotas(rates);
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
    match (
        binding(request.dpop_jkt.as_deref(), request.cert_sha256.as_deref())?,
        request.unbind,
    ) {
        (Some(_), true) => {
            return Err(unprocessable(
                "unbind cannot be combined with dpop_jkt or cert_sha256",
            ));
        }
        (Some(binding), false) => changes = changes.binding(Some(binding)),
        (None, true) => changes = changes.binding(None),
        (None, false) => {}
    }
    let record = checked(&lifecycle)
        .await?
        .update(&id, &changes)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Disable a token until it is enabled again (401 like a revoked one).
#[utoipa::path(post, path = "/admin/tokens/{id}/disable", params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token, disabled", body = TokenView)))]
pub(crate) async fn disable<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let record = lifecycle.disable(&id).await.map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Enable a disabled token.
#[utoipa::path(post, path = "/admin/tokens/{id}/enable", params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token, enabled", body = TokenView)))]
pub(crate) async fn enable<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let record = lifecycle.enable(&id).await.map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Revoke a token for good.
#[utoipa::path(post, path = "/admin/tokens/{id}/revoke", params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token, revoked", body = TokenView)))]
pub(crate) async fn revoke<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let record = lifecycle.revoke(&id).await.map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}

/// Replace a token; the old one keeps working for the grace period. The
/// body may be left out (a grace of an hour).
#[utoipa::path(post, path = "/admin/tokens/{id}/rotate", request_body = RotateRequest,
    params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 201, description = "The replacement; its secret is in this response only", body = Issued)))]
pub(crate) async fn rotate<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    OptionalBody(request): OptionalBody<RotateRequest>,
) -> Result<(StatusCode, Json<Issued>), Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let grace = request
        .grace_seconds
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let made = lifecycle.rotate(&id, grace).await.map_err(|e| failed(&e))?;
    Ok((StatusCode::CREATED, Json(issued(&made))))
}

/// Set the count a usage-limited token has left (by default the uses it
/// was issued with); it holds from the next request on every instance.
/// The body may be left out.
#[utoipa::path(post, path = "/admin/tokens/{id}/uses/reset", request_body = ResetUsesRequest,
    params(("id" = TokenIdText, Path, description = "The token id")),
    responses((status = 200, description = "The token with its new count", body = TokenView)))]
pub(crate) async fn reset_uses<S: TokenStore + TokenAdmin + Clone>(
    State(lifecycle): Shared<S>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    OptionalBody(request): OptionalBody<ResetUsesRequest>,
) -> Result<Json<TokenView>, Problem> {
    let (id, _) = visible(&lifecycle, &caller, &id).await?;
    let record = lifecycle
        .reset_uses(&id, request.remaining)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Json(view(&record)))
}
