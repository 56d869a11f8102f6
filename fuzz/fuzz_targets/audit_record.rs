#![no_main]
//! An audit record of an arbitrary request target and user agent, with a
//! real token placed anywhere in the query: the JSON line parses back to
//! exactly the record's text (escaping is lossless), holds one line, and
//! never holds the token (query redaction leaves no secret, as a value, a
//! name or inside either).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use http::{Request, Response};
use libfuzzer_sys::fuzz_target;
use tokengate::audit::{AuditEvent, AuditLayer, AuditRecord, AuditSink};
use tokengate::core::TokenFormat;
use tower::{Layer, ServiceExt, service_fn};

#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Kept {
    fn record(&self, record: AuditRecord) {
        self.0.lock().unwrap().push(record.event());
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (before, rest) = text.split_at(
        text.char_indices()
            .nth(text.chars().count() / 3)
            .map_or(0, |(i, _)| i),
    );
    let (after, agent) = rest.split_at(
        rest.char_indices()
            .nth(rest.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    let token = TokenFormat::default().generate();
    let secret = token.expose_secret();
    let target = format!("/p{before}?{before}{secret}{after}");
    let Ok(request) = Request::builder()
        .uri(target.as_str())
        .header("user-agent", agent)
        .body(())
        .or_else(|_| Request::builder().uri(target.as_str()).body(()))
    else {
        return;
    };
    let sink = Kept::default();
    let service = AuditLayer::new(sink.clone()).layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let response = runtime().block_on(service.oneshot(request)).unwrap();
    drop(response);
    let events = std::mem::take(&mut *sink.0.lock().unwrap());
    assert_eq!(events.len(), 1);
    let event = &events[0];
    let line = event.to_string();
    assert!(!line.contains('\n') && !line.contains('\r'));
    assert!(!line.contains(&secret[3..27]), "{line}");
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["url.path"].as_str(), Some(event.path.as_str()));
    assert_eq!(parsed["url.query"].as_str(), event.query.as_deref());
    assert_eq!(
        parsed["user_agent.original"].as_str(),
        event.user_agent.as_deref()
    );
});
