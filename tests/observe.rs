//! The Gate's one span per request, read back with a capturing
//! subscriber: OpenTelemetry field names, the decision, the reason, the
//! limiter, and a cache miss's store lookup as an event inside it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokengate::core::{RateQuota, Token};
use tokengate::ipfilter::PeerAddr;
use tokengate::rate::{MissingKey, RateLimitLayer};
use tokengate::{Gate, MemoryStore, ScopePolicy};
use tower::{Layer, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = BTreeMap<String, String>;
/// An event's message, and the name of the span it happened in.
type Event = (String, Option<String>);

/// Every closed span's name and fields, and every event's message with
/// the name of the span it happened in.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
    events: Arc<Mutex<Vec<Event>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        values.record(&mut Collect(extensions.get_mut::<Fields>().unwrap()));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let within = ctx.event_span(event).map(|s| s.name().to_owned());
        let message = fields.remove("message").unwrap_or_default();
        self.events.lock().unwrap().push((message, within));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions_mut().remove::<Fields>().unwrap();
        self.spans
            .lock()
            .unwrap()
            .push((span.name().to_owned(), fields));
    }
}

/// A Gate over an in-memory store with a per-token limit of two requests
/// (then one a minute), and a token with `notes:read`.
async fn gate() -> (Gate<MemoryStore, ScopePolicy>, Token) {
    let (gate, token) = support::memory_gate().await;
    let (one, two) = (NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
    let gate = gate.token_rate(
        RateLimitLayer::per_token(RateQuota::new(one, Duration::from_secs(60), two).unwrap())
            .missing_key(MissingKey::Skip),
    );
    (gate, token)
}

fn request(method: &str, token: Option<&Token>) -> Request<()> {
    let mut request = Request::builder().method(method).uri("/notes?x=1");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {}", token.expose_secret()));
    }
    let mut request = request.body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr("192.0.2.7:40000".parse().unwrap()));
    request
}

#[test]
fn each_request_gets_one_span_with_the_decision_and_otel_field_names() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = runtime.block_on(async {
        let (gate, token) = gate().await;
        let inner = service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let service = gate.layer(inner);
        let mut statuses = Vec::new();
        for request in [
            request("GET", Some(&token)),  // a cache miss, admitted
            request("POST", Some(&token)), // no notes:write: 403
            request("GET", Some(&token)),  // the per-token limit: 429
            request("GET", None),          // no token: 401
        ] {
            let response = service.clone().oneshot(request).await.unwrap();
            statuses.push(response.status());
        }
        statuses
    });
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::FORBIDDEN,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::UNAUTHORIZED,
        ]
    );
    let spans = capture.spans.lock().unwrap().clone();
    let checks: Vec<&Fields> = spans
        .iter()
        .filter(|(name, _)| name == "tokengate.check")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(checks.len(), 4, "{spans:?}");
    let field = |i: usize, name: &str| checks[i].get(name).map(String::as_str);

    // Admitted: OpenTelemetry names, the subject and token, the handler's status.
    assert_eq!(field(0, "http.request.method"), Some("GET"));
    assert_eq!(field(0, "url.path"), Some("/notes"));
    assert_eq!(field(0, "http.route"), Some("/notes"));
    assert_eq!(field(0, "client.address"), Some("192.0.2.7"));
    assert_eq!(field(0, "enduser.id"), Some("team-a"));
    assert!(field(0, "tokengate.token_id").is_some_and(|id| !id.is_empty()));
    assert_eq!(field(0, "tokengate.check"), Some("gate"));
    assert_eq!(field(0, "tokengate.decision"), Some("allow"));
    assert_eq!(field(0, "http.response.status_code"), Some("200"));
    assert_eq!(field(0, "tokengate.reason"), None);

    // Too few scopes: the subject is known, the request refused.
    assert_eq!(field(1, "http.request.method"), Some("POST"));
    assert_eq!(field(1, "tokengate.decision"), Some("deny"));
    assert_eq!(field(1, "tokengate.reason"), Some("insufficient_scope"));
    assert_eq!(field(1, "enduser.id"), Some("team-a"));
    assert_eq!(field(1, "http.response.status_code"), Some("403"));
    assert_eq!(field(1, "tokengate.limiter"), None);

    // Refused by the per-token limit: the reason and the limiter.
    assert_eq!(field(2, "tokengate.reason"), Some("rate_limited"));
    assert_eq!(field(2, "tokengate.limiter"), Some("per-token"));
    assert_eq!(field(2, "http.response.status_code"), Some("429"));

    // No token: no subject.
    assert_eq!(field(3, "tokengate.reason"), Some("missing_token"));
    assert_eq!(field(3, "http.response.status_code"), Some("401"));
    assert_eq!(field(3, "enduser.id"), None);

    // The first request's store lookup is an event inside its span.
    let events = capture.events.lock().unwrap().clone();
    let lookups: Vec<_> = events
        .iter()
        .filter(|(message, _)| message == "token store lookup on a cache miss")
        .collect();
    assert_eq!(lookups.len(), 1, "{events:?}");
    assert_eq!(lookups[0].1.as_deref(), Some("tokengate.check"));
}

#[test]
fn without_a_subscriber_for_its_level_the_span_is_never_built() {
    let capture = Capture::default();
    let filter = tracing_subscriber::filter::LevelFilter::INFO;
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let (gate, token) = gate().await;
        let inner = service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let response = gate
            .layer(inner)
            .oneshot(request("GET", Some(&token)))
            .await
            .unwrap();
        response.status()
    });
    assert_eq!(status, StatusCode::OK);
    assert!(capture.spans.lock().unwrap().is_empty());
}
