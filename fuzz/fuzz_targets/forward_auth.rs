#![no_main]
//! Forward-auth over arbitrary forwarded methods and URIs: never a panic;
//! 400 when they do not make a request, else the check's answer (200 from
//! an empty check).

use std::sync::OnceLock;

use axum::body::Body;
use http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tokengate::sidecar::{Admitted, Current, ForwardAuth};
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let (split, rest) = data.split_first().map_or((0, data), |(s, r)| (*s, r));
    let at = usize::from(split).min(rest.len());
    let (method, uri) = rest.split_at(at);
    let mut request = Request::builder();
    for (name, value) in [("x-forwarded-method", method), ("x-original-uri", uri)] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(Body::empty()) else {
        return;
    };
    let auth = ForwardAuth::new(Current::new(Admitted));
    let auth = if split % 2 == 0 { auth } else { auth.path_prefix("/auth/envoy") };
    let response = runtime().block_on(auth.oneshot(request)).unwrap();
    assert!(
        matches!(response.status(), StatusCode::OK | StatusCode::BAD_REQUEST),
        "{}",
        response.status()
    );
});
