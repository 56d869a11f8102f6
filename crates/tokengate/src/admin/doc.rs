//! The admin API's OpenAPI 3.1 document: generated from the handlers and
//! types, then completed with what every operation shares: the bearer
//! security scheme, and every error it can answer as
//! `application/problem+json`.

use utoipa::openapi::path::Operation;
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi, PartialSchema};

use super::handlers;
use super::problem::Problem;
use super::types::{
    AudienceText, DeliveryList, DeliveryView, EventTypeText, IssueRequest, Issued, NetworkText,
    Quota, RefillSpec, ResetUsesRequest, RotateRequest, ScopeText, Text, TokenIdText, TokenList,
    TokenView, UpdateRequest, UsageBucketView, UsageView, UseLimitSpec, UsesView, WebhookAdded,
    WebhookList, WebhookRequest, WebhookSecretText, WebhookUrlText, WebhookView,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokengate admin API",
        description = "Manage API tokens: issue, list, show, update, disable, enable, revoke, \
                       rotate, reset uses. Every call needs a bearer token with the \
                       `tokengate:admin` scope (every token) or `tokengate:delegate` (the \
                       tokens within its own scopes and audiences)."
    ),
    paths(
        handlers::issue,
        handlers::list,
        handlers::show,
        handlers::update,
        handlers::disable,
        handlers::enable,
        handlers::revoke,
        handlers::rotate,
        handlers::reset_uses,
        handlers::usage,
        handlers::add_webhook,
        handlers::list_webhooks,
        handlers::remove_webhook,
        handlers::deliveries
    ),
    components(schemas(
        TokenView,
        Issued,
        IssueRequest,
        UpdateRequest,
        RotateRequest,
        ResetUsesRequest,
        Quota,
        UseLimitSpec,
        UsesView,
        RefillSpec,
        TokenList,
        UsageView,
        UsageBucketView,
        WebhookRequest,
        WebhookView,
        WebhookAdded,
        WebhookList,
        DeliveryView,
        DeliveryList,
        EventTypeText,
        WebhookUrlText,
        WebhookSecretText,
        Problem,
        Text,
        ScopeText,
        AudienceText,
        TokenIdText,
        NetworkText
    )),
    modifiers(&Shared)
)]
pub(crate) struct ApiDoc;

/// The errors every operation can answer: the Gate's in front (400, 401,
/// 403, 429, 503) and the API's own (see `problem`'s table).
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "The request cannot be read (not JSON, or a query not of the documented form).",
    ),
    (
        "401",
        "No token, or one that is not valid (`WWW-Authenticate` says why).",
    ),
    (
        "403",
        "The token lacks the admin scope, or the request is beyond a delegated admin.",
    ),
    ("404", "No such path or token."),
    (
        "405",
        "The path does not serve that method (`Allow` lists those it does).",
    ),
    ("409", "The token's state forbids it."),
    ("413", "The body is too large."),
    ("415", "The body is not `application/json`."),
    ("422", "JSON that breaks the schema or a rule."),
    (
        "429",
        "A rate limit refused it (`Retry-After`, `RateLimit`, `RateLimit-Policy`).",
    ),
    ("503", "The token store cannot answer."),
];

/// Operations whose body may be left out.
const OPTIONAL_BODIES: &[&str] = &["/admin/tokens/{id}/rotate", "/admin/tokens/{id}/uses/reset"];

struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tokengate token (`tg_...`)"))
                    .build(),
            ),
        );
        for (status, description) in ERRORS {
            components
                .responses
                .insert(response_name(status), RefOr::T(problem(description)));
        }
        // Metadata keys obey the same rule as their values.
        for (schema, field) in [
            ("IssueRequest", "metadata"),
            ("UpdateRequest", "set_metadata"),
        ] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
                && let Some(RefOr::T(Schema::Object(map))) = object.properties.get_mut(field)
                && let RefOr::T(text) = <Text as PartialSchema>::schema()
            {
                map.property_names = Some(Box::new(text));
            }
        }
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        for (path, item) in &mut openapi.paths.paths {
            let optional = OPTIONAL_BODIES.contains(&path.as_str());
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                complete(operation, optional);
            }
        }
    }
}

fn response_name(status: &str) -> String {
    format!("Problem{status}")
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Every error on `operation`, and its body optional where it is.
fn complete(operation: &mut Operation, optional_body: bool) {
    for (status, _) in ERRORS {
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| {
                RefOr::Ref(Ref::new(format!(
                    "#/components/responses/{}",
                    response_name(status)
                )))
            });
    }
    if optional_body && let Some(body) = operation.request_body.as_mut() {
        let RequestBody { required, .. } = body;
        *required = Some(Required::False);
    }
}

/// Narrows the scope schema to `scopes` (an `enum`), for a store whose
/// catalogue names every scope a token may be given.
pub(crate) fn list_scopes<'a>(
    openapi: &mut utoipa::openapi::OpenApi,
    scopes: impl Iterator<Item = &'a str>,
) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    let scopes: Vec<&str> = scopes.collect();
    let schema = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "A scope this deployment knows: one its servers' policies use (the store's catalogue).",
        ))
        .enum_values(Some(scopes))
        .build();
    components
        .schemas
        .insert("ScopeText".to_owned(), RefOr::T(schema.into()));
}
