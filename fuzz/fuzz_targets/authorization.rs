#![no_main]
//! The credential sources (Authorization header, a custom header, the
//! query string) over arbitrary bytes, through the authenticate layer:
//! never a panic, always 400 or 401 (the store holds no token), and a
//! query token never reaches the inner service.

use std::convert::Infallible;
use std::sync::OnceLock;

use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tokengate::{AuthenticateLayer, CacheConfig, CachedStore, MemoryStore, Pepper, TokenHasher};
use tokengate::core::KeyId;
use tower::{Layer, ServiceExt, service_fn};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
    let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
    let layer = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap())
        .header(http::HeaderName::from_static("x-api-key"))
        .query_param("access_token");
    let service = layer.layer(service_fn(|request: Request<()>| async move {
        // Reached only with a verified token, which the empty store has not.
        panic!("admitted {:?}", request.uri());
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let (split, rest) = data.split_first().map_or((0, data), |(s, r)| (*s, r));
    let mut request = Request::builder();
    if let Ok(value) = http::HeaderValue::from_bytes(rest) {
        let name = if split % 2 == 0 {
            "authorization"
        } else {
            "x-api-key"
        };
        request = request.header(name, value.clone());
        if split % 3 == 0 {
            request = request.header("authorization", value);
        }
    }
    let query = String::from_utf8_lossy(rest);
    let uri = format!("/notes?{query}");
    let request = match request.uri(uri.as_str()).body(()) {
        Ok(request) => request,
        Err(_) => Request::new(()),
    };
    let response = runtime().block_on(service.oneshot(request)).unwrap();
    assert!(
        matches!(
            response.status(),
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED
        ),
        "{}",
        response.status()
    );
});
