use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tokio::sync::Notify;
use tower::Service;

use super::{Admitted, Current, ForwardAuth, SUBJECT};

/// Answers with its label once released.
#[derive(Clone)]
struct Slow {
    label: &'static str,
    release: Arc<Notify>,
}

impl Service<Request<Body>> for Slow {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let (label, release) = (self.label, Arc::clone(&self.release));
        Box::pin(async move {
            release.notified().await;
            Ok(Response::new(label.to_owned()))
        })
    }
}

fn forwarded() -> Request<Body> {
    Request::builder()
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/notes")
        .body(Body::empty())
        .unwrap()
}

async fn text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_check_in_flight_finishes_under_the_policy_it_started_with() {
    let old = Arc::new(Notify::new());
    let current = Current::new(Slow {
        label: "old",
        release: Arc::clone(&old),
    });
    let mut auth = ForwardAuth::new(current.clone());
    let in_flight = tokio::spawn(auth.call(forwarded()));

    let new = Arc::new(Notify::new());
    current.replace(Slow {
        label: "new",
        release: Arc::clone(&new),
    });
    new.notify_one();
    let after = auth.call(forwarded()).await.unwrap();
    assert_eq!(text(after).await, "new");

    old.notify_one();
    let started_before = in_flight.await.unwrap().unwrap();
    assert_eq!(text(started_before).await, "old");
}

#[tokio::test]
async fn admitted_sends_every_identity_header_empty_without_a_principal() {
    let response = Admitted.call(Request::new(())).await.unwrap();
    for name in super::IDENTITY_HEADERS {
        assert_eq!(
            response.headers().get(&name).map(|v| v.as_bytes()),
            Some(&b""[..]),
            "{name}"
        );
    }
    let mut request = Request::new(());
    let record = tokengate_store::testing::record("José", "notes:read notes:write");
    let principal = tokengate_core::Principal::from_record(&record);
    request.extensions_mut().insert(principal);
    let response = Admitted.call(request).await.unwrap();
    assert_eq!(response.headers()[SUBJECT].as_bytes(), "José".as_bytes());
    assert_eq!(response.headers()[super::SCOPES], "notes:read notes:write");
}
