//! The report handlers: read the body (bounded), verify it, then handle
//! its tokens as one batch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, Limited};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokengate_audit::{AuditRecord, AuditSink, LeakReport};
use tokengate_core::ClientIp;
use tokengate_store::{LeakAction, LeakHandled, Lifecycle, TokenAdmin, TokenStore};

use super::keys::{self, KeyError, KeySet};
use super::notify::{LeakNotice, Notifier};
use super::{LEAK_REPORTS, LEAK_REPORTS_REFUSED};

/// The longest string a report's `token` may be and still be looked at
/// (a tokengate token is at most 63 bytes).
const TOKEN_LIMIT: usize = 256;

pub(crate) struct Receiver<S> {
    pub(crate) github: KeySet,
    pub(crate) gitlab: Option<KeySet>,
    pub(crate) gitlab_token: Option<String>,
    pub(crate) token_type: String,
    pub(crate) lifecycle: Lifecycle<S>,
    pub(crate) action: LeakAction,
    pub(crate) audit: Option<Arc<dyn AuditSink>>,
    pub(crate) notifier: Option<Notifier>,
    pub(crate) body_limit: usize,
    pub(crate) max_tokens: usize,
    pub(crate) timeout: Duration,
}

type Shared<S> = State<Arc<Receiver<S>>>;

/// One reported token, as GitHub (`token`, `type`, `url`, `source`) and
/// GitLab (`type`, `token`, `url`) send it.
#[derive(Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// GitHub's feedback for one reported token.
#[derive(Serialize)]
struct Feedback {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

/// A refused report: the status, the metric's reason, a sentence, and
/// whether the answer closes the connection (a body left unread on it).
struct Refused {
    status: StatusCode,
    reason: &'static str,
    detail: &'static str,
    close: bool,
}

impl Refused {
    const fn new(status: StatusCode, reason: &'static str, detail: &'static str) -> Self {
        Self {
            status,
            reason,
            detail,
            close: false,
        }
    }

    /// Closes the connection when `close`: the request's body was not
    /// read to its end, and a client reusing the connection would lose
    /// its next request.
    const fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }

    fn answer(self, provider: &'static str) -> Response {
        metrics::counter!(LEAK_REPORTS_REFUSED, "provider" => provider, "reason" => self.reason)
            .increment(1);
        tracing::warn!(
            provider,
            reason = self.reason,
            status = self.status.as_u16(),
            "secret-scanning report refused"
        );
        let body = serde_json::json!({
            "type": format!("urn:tokengate:problem:leak-report-{}", self.reason.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        }
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// What the report's request says of itself, for the audit records.
struct Origin {
    client: Option<IpAddr>,
    request_id: Option<String>,
}

impl Origin {
    fn of(request: &Request) -> Self {
        let client = ClientIp::of(request.extensions())
            .map(ClientIp::addr)
            .or_else(|| {
                request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip())
            });
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|id| id.to_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map(str::to_owned);
        Self { client, request_id }
    }
}

pub(crate) async fn github<S: TokenStore + TokenAdmin>(
    State(receiver): Shared<S>,
    request: Request,
) -> Response {
    let keys = &receiver.github;
    receiver
        .signed(
            "github",
            keys,
            (
                "github-public-key-identifier",
                "github-public-key-signature",
            ),
            request,
        )
        .await
}

pub(crate) async fn gitlab<S: TokenStore + TokenAdmin>(
    State(receiver): Shared<S>,
    request: Request,
) -> Response {
    let Some(keys) = &receiver.gitlab else {
        return StatusCode::NOT_FOUND.into_response();
    };
    receiver
        .signed(
            "gitlab",
            keys,
            (
                "gitlab-public-key-identifier",
                "gitlab-public-key-signature",
            ),
            request,
        )
        .await
}

pub(crate) async fn revocable_token_types<S: TokenStore + TokenAdmin>(
    State(receiver): Shared<S>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = receiver.gitlab_authorized(&headers) {
        return refused.answer("gitlab");
    }
    Json(serde_json::json!({ "types": [receiver.token_type] })).into_response()
}

pub(crate) async fn revoke_tokens<S: TokenStore + TokenAdmin>(
    State(receiver): Shared<S>,
    request: Request,
) -> Response {
    if let Err(refused) = receiver.gitlab_authorized(request.headers()) {
        let close = tokengate_check::refusal_closes_connection(&request);
        return refused.closing(close).answer("gitlab");
    }
    let origin = Origin::of(&request);
    let result = match receiver.read(request).await {
        Ok(body) => receiver.handle("gitlab", &body, origin).await,
        Err(refused) => Err(refused),
    };
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(refused) => refused.answer("gitlab"),
    }
}

impl<S: TokenStore + TokenAdmin> Receiver<S> {
    /// A signed report: body, signature, then the batch.
    async fn signed(
        &self,
        provider: &'static str,
        keys: &KeySet,
        (id_header, signature_header): (&'static str, &'static str),
        request: Request,
    ) -> Response {
        let headers = request.headers();
        let signed = (headers.get(id_header), headers.get(signature_header));
        let signed = match signed {
            (Some(key_id), Some(signature)) => Some((
                key_id.to_str().unwrap_or_default().trim().to_owned(),
                signature.as_bytes().to_vec(),
            )),
            _ => None,
        };
        let origin = Origin::of(&request);
        // The body first, whatever comes of the report: a refusal leaves
        // nothing unread on the connection.
        let body = match self.read(request).await {
            Ok(body) => body,
            Err(refused) => return refused.answer(provider),
        };
        let Some((key_id, signature)) = signed else {
            return Refused::new(
                StatusCode::UNAUTHORIZED,
                "unsigned",
                "the report carries no signature",
            )
            .answer(provider);
        };
        let key = match keys.key(&key_id).await {
            Ok(key) => key,
            Err(KeyError::Unknown) => {
                return Refused::new(
                    StatusCode::UNAUTHORIZED,
                    "unknown_key",
                    "the report's key id is not in the provider's key set",
                )
                .answer(provider);
            }
            Err(KeyError::Unavailable) => {
                tracing::warn!(url = %keys.url(), "no secret-scanning key set to verify a report with");
                return Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "keys_unavailable",
                    "the provider's key set cannot be fetched; retry later",
                )
                .answer(provider);
            }
        };
        if !keys::verify(&key, &body, &signature) {
            return Refused::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "the report's signature does not match its body",
            )
            .answer(provider);
        }
        match self.handle(provider, &body, origin).await {
            Ok(feedback) => Json(feedback).into_response(),
            Err(refused) => refused.answer(provider),
        }
    }

    /// The body, up to the bound.
    async fn read(&self, request: Request) -> Result<bytes::Bytes, Refused> {
        let too_large = Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the report is over the size bound",
        )
        .closing(true);
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|length| length > self.body_limit)
        {
            return Err(too_large);
        }
        match Limited::new(request.into_body(), self.body_limit)
            .collect()
            .await
        {
            Ok(body) => Ok(body.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large),
            Err(_) => Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the report's body could not be read",
            )
            .closing(true)),
        }
    }

    /// Whether `headers` carry GitLab's shared revocation token.
    fn gitlab_authorized(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let refused = Refused::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header does not hold the configured token",
        );
        let Some(expected) = &self.gitlab_token else {
            return Err(refused);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        let given = given.strip_prefix(b"Bearer ").unwrap_or(given);
        if bool::from(given.ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(refused)
        }
    }

    /// Parses the verified body and handles its tokens as one batch.
    async fn handle(
        &self,
        provider: &'static str,
        body: &[u8],
        origin: Origin,
    ) -> Result<Vec<Feedback>, Refused> {
        let reported: Vec<Reported> = serde_json::from_slice(body).map_err(|_| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the report is not a JSON array of {token, type, url} objects",
            )
        })?;
        if reported.len() > self.max_tokens {
            return Err(Refused::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many",
                "the report names more tokens than one report may",
            ));
        }
        let batch = self.batch(provider, &reported, &origin);
        let known = match tokio::time::timeout(self.timeout, batch).await {
            Ok(Ok(known)) => known,
            Ok(Err(error)) => {
                tracing::warn!(provider, %error, "a leak report could not be handled");
                return Err(Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store",
                    "the token store cannot answer; retry later",
                ));
            }
            Err(_) => {
                return Err(Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the report was not handled in time; retry later",
                ));
            }
        };
        Ok(reported
            .iter()
            .map(|entry| Feedback {
                token_hash: hex::encode(Sha256::digest(entry.token.as_bytes())),
                token_type: entry.kind.clone(),
                label: if known.get(entry.token.as_str()).copied().unwrap_or(false) {
                    "true_positive"
                } else {
                    "false_positive"
                },
            })
            .collect())
    }

    /// Handles every distinct token once; returns whether the store knows
    /// each.
    async fn batch<'a>(
        &self,
        provider: &'static str,
        reported: &'a [Reported],
        origin: &Origin,
    ) -> Result<HashMap<&'a str, bool>, tokengate_store::LifecycleError> {
        let mut known = HashMap::new();
        for entry in reported {
            let token = entry.token.as_str();
            if known.contains_key(token) {
                continue;
            }
            let source = entry.url.as_deref().or(entry.source.as_deref());
            let handled = if token.len() > TOKEN_LIMIT {
                LeakHandled {
                    outcome: tokengate_store::LeakOutcome::Unknown,
                    record: None,
                }
            } else {
                self.lifecycle
                    .report_leak(token, self.action, provider, source.unwrap_or("unknown"))
                    .await?
            };
            known.insert(token, handled.outcome.is_known());
            self.tell(provider, source, &handled, origin);
        }
        Ok(known)
    }

    /// The audit record, the metric and the owner notice of one token.
    fn tell(
        &self,
        provider: &'static str,
        source: Option<&str>,
        handled: &LeakHandled,
        origin: &Origin,
    ) {
        let outcome = handled.outcome.as_str();
        metrics::counter!(LEAK_REPORTS, "provider" => provider, "outcome" => outcome).increment(1);
        let record = handled.record.as_ref();
        tracing::warn!(
            provider,
            outcome,
            token_id = record.map(|r| r.id.as_str()),
            "leaked token reported"
        );
        if let Some(audit) = &self.audit {
            let mut report = LeakReport::new(provider, outcome, SystemTime::now());
            report.source = source.map(str::to_owned);
            report.token_id = record.map(|r| r.id.as_str().to_owned());
            report.subject = record.map(|r| r.subject.clone());
            report.client_address = origin.client;
            report.request_id.clone_from(&origin.request_id);
            audit.record(AuditRecord::leak_reported(report));
        }
        if let (Some(notifier), Some(record)) = (&self.notifier, record)
            && handled.outcome.was_live()
        {
            notifier.send(LeakNotice {
                token_id: record.id.clone(),
                subject: record.subject.clone(),
                name: record.name.clone(),
                reporter: provider,
                source: source.map(str::to_owned),
                outcome: handled.outcome,
            });
        }
    }
}
