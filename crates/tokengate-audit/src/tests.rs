use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokengate_check::Renderer;
use tokengate_core::{ClientIp, Denial, InvalidReason, Principal, RequestTrail};
use tokengate_store::testing::record;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;

/// A sink that keeps records in memory.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Memory {
    fn record(&self, record: AuditRecord) {
        self.0.lock().unwrap().push(record.event());
    }
}

impl Memory {
    fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What an inner layer or handler does with a request.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Ok,
    HandlerError500,
    Deny401,
    DenyGrpc7,
    ServiceError,
    BodyError,
    GrpcStreamWithTrailers,
}

fn inner(
    behaviour: Behaviour,
) -> impl Service<Request<()>, Response = Response<Body>, Error = std::io::Error, Future: Send> + Clone
{
    service_fn(move |request: Request<()>| async move {
        let mut request = request;
        let trail = request.extensions().get::<RequestTrail>().cloned();
        if let Some(_trail) = &trail {
            RequestTrail::note_client_ip(
                request.extensions_mut(),
                ClientIp::new("192.0.2.7".parse().unwrap()),
            );
            RequestTrail::note_principal(
                request.extensions(),
                &Principal::from_record(&record("alice", "notes:read")),
            );
        }
        let response = match behaviour {
            Behaviour::Ok => Response::new(full("hello")),
            Behaviour::HandlerError500 => {
                let mut r = Response::new(full("oops"));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
            Behaviour::Deny401 => Renderer::default()
                .refuse(&request, Denial::InvalidToken(InvalidReason::Revoked))
                .into_response::<Body>()
                .map(|b| b.map_err(|never: std::io::Error| never).boxed_unsync()),
            Behaviour::DenyGrpc7 => {
                let mut grpc = Request::new(());
                grpc.headers_mut()
                    .insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
                Renderer::default()
                    .refuse(&grpc, Denial::Unmapped)
                    .into_response::<Body>()
                    .map(|b| b.map_err(|never: std::io::Error| never).boxed_unsync())
            }
            Behaviour::ServiceError => return Err(std::io::Error::other("inner failed")),
            Behaviour::BodyError => Response::new(frames(vec![
                Ok(Frame::data(Bytes::from_static(b"part"))),
                Err(std::io::Error::other("broken body")),
            ])),
            Behaviour::GrpcStreamWithTrailers => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "13".parse().unwrap());
                let mut r = Response::new(frames(vec![
                    Ok(Frame::data(Bytes::from_static(b"msg"))),
                    Ok(Frame::trailers(trailers)),
                ]));
                r.headers_mut()
                    .insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
                r
            }
        };
        Ok(response)
    })
}

/// A body that yields the given frames, then ends.
struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(items: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Body {
    Frames(items.into()).boxed_unsync()
}

/// Sends one request through the audit layer around `behaviour` and
/// drains the body; returns the records.
async fn exchange(behaviour: Behaviour, request: Request<()>) -> Vec<AuditEvent> {
    let sink = Memory::default();
    let service = AuditLayer::new(sink.clone()).layer(inner(behaviour));
    if let Ok(response) = service.oneshot(request).await {
        let _ = response.into_body().collect().await;
    }
    sink.take()
}

#[tokio::test]
async fn every_outcome_gets_exactly_one_record_with_status_and_reason() {
    let cases = [
        (Behaviour::Ok, 200, None, Decision::Allow, Ending::Completed),
        (
            Behaviour::HandlerError500,
            500,
            None,
            Decision::Allow,
            Ending::Completed,
        ),
        (
            Behaviour::Deny401,
            401,
            Some("token_revoked"),
            Decision::Deny,
            Ending::Completed,
        ),
        (
            Behaviour::DenyGrpc7,
            200,
            Some("no_access_rule"),
            Decision::Deny,
            Ending::Completed,
        ),
        (
            Behaviour::ServiceError,
            500,
            None,
            Decision::Allow,
            Ending::ServiceError,
        ),
        (
            Behaviour::BodyError,
            200,
            None,
            Decision::Allow,
            Ending::BodyError,
        ),
        (
            Behaviour::GrpcStreamWithTrailers,
            200,
            None,
            Decision::Allow,
            Ending::Completed,
        ),
    ];
    for (behaviour, status, reason, decision, ending) in cases {
        let records = exchange(behaviour, Request::get("/notes").body(()).unwrap()).await;
        assert_eq!(records.len(), 1, "{behaviour:?}");
        let r = &records[0];
        assert_eq!(r.status, status, "{behaviour:?}");
        assert_eq!(r.reason.as_deref(), reason, "{behaviour:?}");
        assert_eq!(r.decision, decision, "{behaviour:?}");
        assert_eq!(r.ending, ending, "{behaviour:?}");
        assert_eq!(
            r.token_id.as_deref().map(|id| id.starts_with("tok_")),
            Some(true)
        );
        assert_eq!(r.client_address.as_deref(), Some("192.0.2.7"));
    }
}

#[tokio::test]
async fn grpc_statuses_come_from_headers_or_trailers() {
    let denied = exchange(Behaviour::DenyGrpc7, Request::get("/x").body(()).unwrap()).await;
    assert_eq!(denied[0].grpc_status, Some(7));
    let mut request = Request::post("/notes.v1.Notes/ListNotes").body(()).unwrap();
    request
        .headers_mut()
        .insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
    let streamed = exchange(Behaviour::GrpcStreamWithTrailers, request).await;
    assert_eq!(streamed[0].grpc_status, Some(13));
    assert_eq!(streamed[0].rpc_service.as_deref(), Some("notes.v1.Notes"));
    assert_eq!(streamed[0].rpc_method.as_deref(), Some("ListNotes"));
}

#[tokio::test]
async fn a_client_that_hangs_up_still_gets_one_record_marked_cancelled() {
    // Dropped before the response: the future is dropped.
    let sink = Memory::default();
    let pending =
        service_fn(|_: Request<()>| std::future::pending::<Result<Response<Body>, Infallible>>());
    let mut service = AuditLayer::new(sink.clone()).layer(pending);
    let future = service.call(Request::get("/slow").body(()).unwrap());
    drop(future);
    let records = sink.take();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].ending, records[0].status),
        (Ending::Cancelled, CLIENT_CLOSED)
    );

    // Dropped mid-body.
    let service = AuditLayer::new(sink.clone()).layer(inner(Behaviour::GrpcStreamWithTrailers));
    let response = service
        .oneshot(Request::get("/stream").body(()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await;
    assert!(sink.take().is_empty(), "not finished yet");
    drop(body);
    let records = sink.take();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].ending, records[0].status),
        (Ending::Cancelled, 200)
    );
}

#[tokio::test]
async fn a_body_the_server_never_reads_is_completed_not_cancelled() {
    let sink = Memory::default();
    let answering = |status: StatusCode| {
        service_fn(move |_: Request<()>| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(full("not sent"))
                    .unwrap(),
            )
        })
    };
    let cases = [
        (http::Method::HEAD, StatusCode::OK, Ending::Completed),
        (http::Method::HEAD, StatusCode::NOT_FOUND, Ending::Completed),
        (http::Method::GET, StatusCode::NO_CONTENT, Ending::Completed),
        (
            http::Method::GET,
            StatusCode::NOT_MODIFIED,
            Ending::Completed,
        ),
        // A body the client stopped reading is still a hang-up.
        (http::Method::GET, StatusCode::OK, Ending::Cancelled),
    ];
    for (method, status, ending) in cases {
        let service = AuditLayer::new(sink.clone()).layer(answering(status));
        let request = Request::builder()
            .method(method.clone())
            .uri("/notes")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        drop(response); // as hyper does with the body of a HEAD response
        let records = sink.take();
        assert_eq!(records.len(), 1, "{method} {status}");
        assert_eq!(
            (records[0].ending, records[0].status),
            (ending, status.as_u16()),
            "{method} {status}"
        );
    }
}

#[tokio::test]
async fn control_characters_are_escaped_and_long_fields_flagged() {
    let long_ua = "x".repeat(1000);
    let mut long = Request::get("/long").body(()).unwrap();
    long.headers_mut()
        .insert(USER_AGENT, long_ua.parse().unwrap());
    let records = exchange(Behaviour::Ok, long).await;
    assert_eq!(records[0].user_agent.as_ref().map(String::len), Some(256));
    assert_eq!(records[0].truncated, vec!["user_agent.original"]);
    let line = records[0].to_string();
    assert!(
        !line.contains('\n') && line.contains("\"tokengate.truncated\":[\"user_agent.original\"]"),
        "{line}"
    );

    let mut raw = Request::get("/x").body(()).unwrap();
    // Header values can carry a tab and non-UTF-8 bytes, nothing worse.
    raw.headers_mut().insert(
        USER_AGENT,
        http::HeaderValue::from_bytes(b"a\tb\xffc").unwrap(),
    );
    let records = exchange(Behaviour::Ok, raw).await;
    assert_eq!(records[0].user_agent.as_deref(), Some("a\\u{09}b\u{fffd}c"));
}

#[tokio::test]
async fn queries_are_redacted_and_request_ids_kept_or_made() {
    let mut request = Request::get("/notes?access_token=tg_secret&page=2")
        .body(())
        .unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let records = exchange(Behaviour::Ok, request).await;
    assert_eq!(
        records[0].query.as_deref(),
        Some("access_token=REDACTED&page=REDACTED")
    );
    assert_eq!(records[0].request_id, "req-42");
    let mut bad = Request::get("/").body(()).unwrap();
    bad.headers_mut()
        .insert("x-request-id", "has space".parse().unwrap());
    let records = exchange(Behaviour::Ok, bad).await;
    let generated = &records[0].request_id;
    assert!(
        generated.len() > 9 && generated.as_bytes()[8] == b'-',
        "{generated}"
    );
    let again = exchange(Behaviour::Ok, Request::get("/").body(()).unwrap()).await;
    assert_ne!(&again[0].request_id, generated, "generated ids are unique");
}

/// A sink that keeps records unwritten, as a queue does while its
/// writer is behind.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<AuditRecord>>>);

impl AuditSink for Held {
    fn record(&self, record: AuditRecord) {
        self.0.lock().unwrap().push(record);
    }
}

#[tokio::test]
async fn a_queued_record_keeps_nothing_of_the_connection_buffer_and_takes_the_notes() {
    // hyper parses a request head into slices of the connection's read
    // buffer; a record kept waiting must not hold that buffer.
    let buffer = Bytes::copy_from_slice(b"/notes/7?page=2 agent/1 req-9");
    let mut request = Request::new(());
    *request.uri_mut() = http::Uri::from_maybe_shared(buffer.slice(0..15)).unwrap();
    let shared = |range| http::HeaderValue::from_maybe_shared(buffer.slice(range)).unwrap();
    request.headers_mut().insert(USER_AGENT, shared(16..23));
    request.headers_mut().insert("x-request-id", shared(24..29));
    assert!(!buffer.is_unique(), "the request shares the buffer");

    let sink = Held::default();
    let service = AuditLayer::new(sink.clone()).layer(inner(Behaviour::Ok));
    let response = service.oneshot(request).await.unwrap();
    let _ = response.into_body().collect().await;

    let held = std::mem::take(&mut *sink.0.lock().unwrap());
    assert_eq!(held.len(), 1);
    assert!(
        buffer.is_unique(),
        "a held record pins the request's buffer"
    );
    assert!(
        !held[0].trail_still_noted(),
        "the request let go of its trail before the hand-over: the notes moved into the record"
    );
    let event = held.into_iter().next().unwrap().event();
    // What the layers noted is in the record all the same.
    assert_eq!(event.client_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(event.subject.as_deref(), Some("alice"));
    assert_eq!(event.path, "/notes/7");
    assert_eq!(event.query.as_deref(), Some("page=REDACTED"));
    assert_eq!(event.user_agent.as_deref(), Some("agent/1"));
    assert_eq!(event.request_id, "req-9");
}

/// A writer that blocks every write until opened.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<(Mutex<bool>, Condvar)>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Gate {
    fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    fn lines(&self) -> usize {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cvar) = &*self.open;
        let _open = cvar
            .wait_while(lock.lock().unwrap(), |open| !*open)
            .unwrap();
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn event() -> AuditRecord {
    AuditRecord::sample()
}

#[test]
fn drop_mode_never_waits_and_counts_every_drop() {
    let gate = Gate::default();
    let sink = JsonLinesSink::builder()
        .capacity(4)
        .overflow(Overflow::Drop)
        .writer(gate.clone());
    for _ in 0..100 {
        sink.record(event()); // returns at once even though the writer is stalled
    }
    let dropped = sink.stats().dropped;
    assert!(
        dropped >= 95,
        "at most queue + one in the writer were taken: {dropped}"
    );
    gate.open();
    sink.shutdown();
    let stats = sink.stats();
    assert_eq!(stats.written + stats.dropped, 100);
    assert_eq!(usize::try_from(stats.written).unwrap(), gate.lines());
}

/// A request through an audit layer over `sink`: its status once answered.
async fn audited_status(sink: JsonLinesSink) -> StatusCode {
    let service = AuditLayer::new(sink).layer(inner(Behaviour::Ok));
    let response = service
        .oneshot(Request::get("/p").body(()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test(flavor = "current_thread")]
async fn block_mode_waits_without_blocking_the_runtime_and_loses_nothing() {
    let gate = Gate::default();
    let sink = JsonLinesSink::builder()
        .capacity(2)
        .overflow(Overflow::Block)
        .writer(gate.clone());
    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(audited_status(sink.clone())))
        .collect();
    // The writer is stalled and the queue holds 2: the rest wait for room,
    // asynchronously. This one-thread runtime still runs other tasks.
    let ticks = tokio::spawn(async {
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(2), ticks)
        .await
        .expect("the runtime kept running while requests waited")
        .unwrap();
    let done = requests.iter().filter(|r| r.is_finished()).count();
    assert!(
        done <= 3,
        "{done} requests were handled without room for their records"
    );
    gate.open();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    sink.shutdown();
    assert_eq!(
        sink.stats(),
        SinkStats {
            written: 50,
            dropped: 0,
            failed: 0
        }
    );
    assert_eq!(gate.lines(), 50);
}

#[tokio::test(flavor = "current_thread")]
async fn block_mode_refuses_with_503_after_the_bound_and_counts_the_record_lost() {
    let gate = Gate::default();
    let sink = JsonLinesSink::builder()
        .capacity(1)
        .overflow(Overflow::Block)
        .block_timeout(std::time::Duration::from_millis(50))
        .writer(gate.clone());
    // The first takes the only place; the writer holds it, stalled.
    assert_eq!(audited_status(sink.clone()).await, StatusCode::OK);
    let mut refused = 0;
    for _ in 0..3 {
        if audited_status(sink.clone()).await == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused}");
    gate.open();
    sink.shutdown();
    let stats = sink.stats();
    assert_eq!(
        stats.dropped, refused,
        "each refused request's record is counted lost"
    );
    assert_eq!(stats.written + stats.dropped, 4);
}

#[test]
fn the_hash_chain_verifies_and_reports_the_first_broken_link() {
    let dir = std::env::temp_dir().join(format!("tokengate-audit-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let sink = JsonLinesSink::open(&path).unwrap();
    for _ in 0..3 {
        sink.record(event());
    }
    sink.shutdown();
    // Reopening continues the chain.
    let sink = JsonLinesSink::open(&path).unwrap();
    sink.record(event());
    sink.shutdown();
    assert_eq!(hash_chain::verify(&path).unwrap().records, 4);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |lines: Vec<String>| std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let mut edited = own(&lines);
    edited[2] = edited[2].replace(
        "\"http.response.status_code\":200",
        "\"http.response.status_code\":201",
    );
    write(edited);
    assert!(matches!(
        hash_chain::verify(&path),
        Err(hash_chain::ChainError::HashMismatch { line: 3 })
    ));

    let mut removed = own(&lines);
    removed.remove(1);
    write(removed);
    assert!(matches!(
        hash_chain::verify(&path),
        Err(hash_chain::ChainError::BrokenLink { line: 2 })
    ));

    let mut swapped = own(&lines);
    swapped.swap(1, 2);
    write(swapped);
    assert!(matches!(
        hash_chain::verify(&path),
        Err(hash_chain::ChainError::BrokenLink { line: 2 })
    ));

    write(vec!["not json".into()]);
    assert!(matches!(
        hash_chain::verify(&path),
        Err(hash_chain::ChainError::Malformed { line: 1 })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        Just(Behaviour::Ok),
        Just(Behaviour::HandlerError500),
        Just(Behaviour::Deny401),
        Just(Behaviour::DenyGrpc7),
        Just(Behaviour::ServiceError),
        Just(Behaviour::BodyError),
        Just(Behaviour::GrpcStreamWithTrailers),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever each request meets (refusals, handler errors, service
    /// errors, broken bodies, hang-ups at any point), each gets one record.
    #[test]
    fn exactly_one_record_per_request_under_random_faults(
        plan in proptest::collection::vec((behaviour(), 0u8..3), 1..20),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let sink = Memory::default();
        runtime.block_on(async {
            for (behaviour, hang_up) in &plan {
                let mut service = AuditLayer::new(sink.clone()).layer(inner(*behaviour));
                let future = service.call(Request::get("/p").body(()).unwrap());
                match hang_up {
                    0 => drop(future),
                    1 => {
                        if let Ok(response) = future.await {
                            let mut body = response.into_body();
                            let _ = body.frame().await;
                        }
                    }
                    _ => {
                        if let Ok(response) = future.await {
                            let _ = response.into_body().collect().await;
                        }
                    }
                }
            }
        });
        prop_assert_eq!(sink.take().len(), plan.len());
    }
}

/// A device that takes `room` more bytes, then fails every write with
/// "no space left" until given more room.
#[derive(Clone, Default)]
struct Disk {
    room: Arc<Mutex<usize>>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Disk {
    fn with_room(room: usize) -> Self {
        let disk = Self::default();
        *disk.room.lock().unwrap() = room;
        disk
    }

    fn free(&self) {
        *self.room.lock().unwrap() = usize::MAX;
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut room = self.room.lock().unwrap();
        if *room == 0 {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        let n = buf.len().min(*room);
        *room -= n;
        self.out.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `done` every 5 ms for up to 5 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_full_device_stalls_the_writer_and_loses_no_record() {
    // Room for a line and a half: the second line is cut by the full disk.
    let line = {
        let disk = Disk::with_room(usize::MAX);
        let sink = JsonLinesSink::builder().writer(disk.clone());
        sink.record(event());
        sink.shutdown();
        disk.out.lock().unwrap().len()
    };
    let disk = Disk::with_room(line + line / 2);
    let sink = JsonLinesSink::builder()
        .overflow(Overflow::Block)
        .writer(disk.clone());
    for _ in 0..10 {
        sink.record(event());
    }
    eventually("the writer reports the stall", || sink.stalled().is_some());
    let stalled = sink.stalled().unwrap();
    assert!(stalled.contains("No space left"), "{stalled}");
    assert_eq!(sink.stats().written, 1, "one line fitted");
    assert_eq!(sink.stats().failed, 0);

    disk.free();
    sink.flush();
    assert_eq!(sink.stalled(), None, "writing resumed");
    assert_eq!(
        sink.stats(),
        SinkStats {
            written: 10,
            dropped: 0,
            failed: 0
        }
    );
    // Every record whole, once, and chained: the cut line was finished
    // where the disk stopped, not written again.
    let dir = std::env::temp_dir().join(format!("tokengate-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    std::fs::write(&path, disk.out.lock().unwrap().as_slice()).unwrap();
    let report = crate::hash_chain::verify(&path).unwrap();
    assert_eq!(report.records, 10);
    assert!(report.torn_lines.is_empty(), "{:?}", report.torn_lines);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn drop_mode_on_a_full_device_counts_exactly_the_records_it_did_not_keep() {
    let disk = Disk::with_room(0);
    let sink = JsonLinesSink::builder()
        .capacity(8)
        .overflow(Overflow::Drop)
        .writer(disk.clone());
    for _ in 0..100 {
        sink.record(event());
    }
    eventually("the writer reports the stall", || sink.stalled().is_some());
    disk.free();
    sink.shutdown();
    let stats = sink.stats();
    assert!(stats.dropped >= 90, "{stats:?}");
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.written + stats.dropped, 100);
    let lines = disk
        .out
        .lock()
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    assert_eq!(u64::try_from(lines).unwrap(), stats.written);
}

#[test]
fn a_writer_stopping_on_a_full_device_counts_what_it_could_not_write_as_failed() {
    let disk = Disk::with_room(0);
    let sink = JsonLinesSink::builder().writer(disk);
    for _ in 0..3 {
        sink.record(event());
    }
    eventually("the writer reports the stall", || sink.stalled().is_some());
    // Gives up after the shutdown grace instead of hanging the shutdown.
    sink.shutdown();
    assert_eq!(
        sink.stats(),
        SinkStats {
            written: 0,
            dropped: 0,
            failed: 3
        }
    );
    sink.record(event());
    assert_eq!(sink.stats().failed, 4, "a record after the shutdown");
}

mod leak_records {
    use std::time::Duration;

    use serde_json::Value;

    use std::time::SystemTime;

    use crate::record::AuditEvent;
    use crate::{AuditKey, AuditRecord, AuditSink, JsonLinesSink, LeakReport, hash_chain};

    fn report() -> LeakReport {
        let mut report = LeakReport::new(
            "github",
            "revoked",
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        );
        report.source = Some("https://github.com/o/r/blob/abc/.env#L3\u{1b}[2J".to_owned());
        report.token_id = Some("tok_aaaaaaaaaaaaaaaa".to_owned());
        report.subject = Some("team-a".to_owned());
        report.client_address = Some("192.0.2.7".parse().unwrap());
        report.request_id = Some("req-1".to_owned());
        report
    }

    #[test]
    fn a_leak_record_is_one_line_of_its_own_members_cleaned_and_chained() {
        let dir = std::env::temp_dir().join(format!(
            "tokengate-leak-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let key = AuditKey::from_hex(&"cd".repeat(32), "test").unwrap();
        let sink = JsonLinesSink::builder()
            .key(key.clone())
            .open(&path)
            .unwrap();
        sink.record(AuditRecord::sample());
        sink.record(AuditRecord::leak_reported(report()));
        sink.record(AuditRecord::sample());
        sink.shutdown();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let leak: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(leak["tokengate.event"], "leak_reported");
        assert_eq!(leak["tokengate.leak.reporter"], "github");
        assert_eq!(leak["tokengate.leak.outcome"], "revoked");
        assert_eq!(
            leak["tokengate.leak.source"],
            "https://github.com/o/r/blob/abc/.env#L3\\u{1b}[2J"
        );
        assert_eq!(leak["tokengate.token_id"], "tok_aaaaaaaaaaaaaaaa");
        assert_eq!(leak["enduser.id"], "team-a");
        assert_eq!(leak["client.address"], "192.0.2.7");
        assert_eq!(leak["http.request.id"], "req-1");
        assert_eq!(leak["timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(leak.get("url.path").is_none(), "{leak}");
        assert!(leak.get("http.response.status_code").is_none(), "{leak}");
        // The request records around it are request records.
        let after: Value = serde_json::from_str(lines[2]).unwrap();
        assert!(after.get("tokengate.event").is_none());
        assert_eq!(after["url.path"], "/");
        // One chain through all three.
        let verified = hash_chain::verify_with(&path, Some(&key)).unwrap();
        assert_eq!(verified.records, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_writer_event_reused_for_a_leak_then_a_request_keeps_nothing_of_either() {
        let mut event = AuditEvent::blank();
        AuditRecord::leak_reported(report()).fill(&mut event);
        assert!(event.leak.is_some());
        AuditRecord::sample().fill(&mut event);
        assert_eq!(event.leak, None);
        assert_eq!(event.token_id, None);
        assert_eq!(event.path, "/");
        AuditRecord::leak_reported(LeakReport::new("scan", "unknown", SystemTime::UNIX_EPOCH))
            .fill(&mut event);
        assert_eq!(event.path, "");
        assert_eq!(event.token_id, None);
        assert_eq!(event.client_address, None);
        assert_eq!(event.leak.as_ref().unwrap().source, None);
    }
}
