//! Per-request cost of the audit layer writing to a JSON-lines file, beside
//! a `tracing::info!` event with the same fields through tracing-appender's
//! non-blocking writer into a file, and a bare service, in the same run.
//! In both, formatting and I/O happen on a background thread; what is
//! measured is the request path.
//!
//! The `audit_line` group times the writer's side: one record as its JSON
//! line through the crate's encoder, beside the same members put in a
//! `serde_json` map and serialised (the encoder also escapes what
//! `serde_json` leaves raw: line separators, bidi controls, zero-width
//! characters).
//!
//! Run: `cargo bench --bench audit`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Map, Value};
use tokengate::audit::{AuditEvent, AuditLayer, Decision, JsonLinesSink, Overflow};
use tokengate_tests::call_now;
use tower::{Layer, Service, service_fn};

fn handler()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

fn request() -> Request<()> {
    Request::get("/notes?page=2")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "bench-request")
        .body(())
        .unwrap()
}

/// One request, start to finish: the audit record is emitted when the
/// (empty) body is wrapped.
fn run<S, B>(service: &mut S) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    call_now(service, request())
}

/// The peer: a tracing event with the record's fields on every request.
fn traced()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    service_fn(|request: Request<()>| async move {
        tracing::info!(
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            url.query = "page=REDACTED",
            user_agent.original = ?request.headers().get("user-agent"),
            http.request.id = ?request.headers().get("x-request-id"),
            http.response.status_code = 200u16,
            tokengate.decision = "allow",
            "audit"
        );
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

fn audit(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tokengate-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sink = JsonLinesSink::builder()
        .capacity(1 << 16)
        .overflow(Overflow::Drop)
        .open(&dir.join("audit.jsonl"))
        .unwrap();
    let mut audited = AuditLayer::new(sink.clone()).layer(handler());
    let mut bare = handler();

    let file = std::fs::File::create(dir.join("tracing.jsonl")).unwrap();
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(file);
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(writer)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let mut traced = traced();

    let mut group = c.benchmark_group("audit");
    group.bench_function("bare", |b| b.iter(|| black_box(run(&mut bare))));
    group.bench_function("tracing_appender_non_blocking", |b| {
        b.iter(|| black_box(run(&mut traced)));
    });
    group.bench_function("audit_layer_json_lines", |b| {
        b.iter(|| black_box(run(&mut audited)));
    });
    group.finish();
    sink.shutdown();
    let stats = sink.stats();
    eprintln!(
        "audit sink: {} written, {} dropped",
        stats.written, stats.dropped
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The record of one request like the others here, as a sink gets it.
fn sample_event() -> AuditEvent {
    let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = std::sync::Arc::clone(&kept);
    let mut service = AuditLayer::new(move |event: AuditEvent| {
        *slot.lock().unwrap() = Some(event);
    })
    .layer(handler());
    drop(run(&mut service));
    let event = kept.lock().unwrap().take();
    event.unwrap()
}

/// The baseline: the same members in a `serde_json` map, serialised.
fn serde_line(e: &AuditEvent) -> String {
    let mut m = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            m.insert(key.to_owned(), value);
        }
    };
    let timestamp = humantime::format_rfc3339_millis(e.timestamp).to_string();
    put("timestamp", timestamp.into());
    put("http.request.id", e.request_id.clone().into());
    put("client.address", e.client_address.clone().into());
    put("http.request.method", e.method.clone().into());
    put("url.path", e.path.clone().into());
    put("url.query", e.query.clone().into());
    put("rpc.service", e.rpc_service.clone().into());
    put("rpc.method", e.rpc_method.clone().into());
    put("tokengate.token_id", e.token_id.clone().into());
    put("enduser.id", e.subject.clone().into());
    let decision = if e.decision == Decision::Allow {
        "allow"
    } else {
        "deny"
    };
    put("tokengate.decision", decision.into());
    put("tokengate.reason", e.reason.clone().into());
    put("http.response.status_code", e.status.into());
    put("rpc.grpc.status_code", e.grpc_status.into());
    let latency = u64::try_from(e.latency.as_micros()).unwrap_or(u64::MAX);
    put("tokengate.latency_us", latency.into());
    put("tokengate.ending", e.ending.as_str().into());
    put("user_agent.original", e.user_agent.clone().into());
    Value::Object(m).to_string()
}

fn audit_line(c: &mut Criterion) {
    let event = sample_event();
    let mut group = c.benchmark_group("audit_line");
    group.bench_function("serde_json_map", |b| {
        b.iter(|| black_box(serde_line(&event)));
    });
    group.bench_function("hand_written", |b| {
        b.iter(|| black_box(event.to_string()));
    });
    group.finish();
}

criterion_group!(benches, audit, audit_line);
criterion_main!(benches);
