use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Service, ServiceExt, service_fn};

use super::*;
use crate::Renderer;
use tokengate_core::Denial;

/// Sets `name: value` on the response it admits.
#[derive(Clone, Copy, Debug)]
struct SetHeader(&'static str, &'static str);

impl Admit for SetHeader {
    fn apply<B>(self, response: &mut Response<B>) {
        response
            .headers_mut()
            .insert(self.0, HeaderValue::from_static(self.1));
    }
}

/// Admits with a header, refuses, or waits once before admitting, as told
/// by the request's `x-<name>` header (`refuse`, `wait`, or anything else).
#[derive(Clone, Copy, Debug)]
struct Scripted(&'static str);

/// Pending once, then ready.
struct Once(bool);

impl Future for Once {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<B> Check<B> for Scripted {
    type Admit = SetHeader;
    type Wait = Once;

    fn check(&self, request: &mut Request<B>) -> Verdict<SetHeader, Once> {
        let told = request.headers().get(format!("x-{}", self.0));
        match told.and_then(|v| v.to_str().ok()) {
            Some("refuse") => {
                Verdict::Refuse(Renderer::default().refuse(request, Denial::Unmapped))
            }
            Some("wait") => Verdict::Wait(Once(false)),
            _ => Verdict::Admit(SetHeader("x-by", self.0)),
        }
    }

    fn resume(&self, request: &mut Request<B>, (): ()) -> Verdict<SetHeader, Once> {
        request.headers_mut().remove(format!("x-{}", self.0));
        self.check(request)
    }
}

fn request(told: &[(&'static str, &'static str)]) -> Request<()> {
    let mut request = Request::new(());
    for (name, value) in told {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    request
}

async fn answer<C>(check: C, told: &[(&'static str, &'static str)]) -> Response<CheckBody<()>>
where
    C: Check<()> + Clone,
{
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    CheckService::new(check, inner)
        .oneshot(request(told))
        .await
        .unwrap()
}

fn by(response: &Response<CheckBody<()>>) -> Option<&str> {
    response.headers().get("x-by").map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_first_checks_header_wins_as_the_outer_layer_would() {
    let chain = Chain::new(Scripted("outer"), Scripted("inner"));
    let response = answer(chain, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(by(&response), Some("outer"));
}

#[tokio::test]
async fn a_refusal_by_the_second_check_carries_the_first_checks_headers() {
    let chain = Chain::new(Scripted("outer"), Scripted("inner"));
    let response = answer(chain, &[("x-inner", "refuse")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(by(&response), Some("outer"));
    assert_eq!(
        response.extensions().get::<Denial>(),
        Some(&Denial::Unmapped)
    );
}

#[tokio::test]
async fn a_refusal_by_the_first_check_never_reaches_the_second() {
    let chain = Chain::new(Scripted("outer"), Scripted("inner"));
    let response = answer(chain, &[("x-outer", "refuse")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(by(&response), None);
}

#[tokio::test]
async fn waiting_checks_resume_in_order_and_admit() {
    let chain = Chain::new(Scripted("a"), Chain::new(Scripted("b"), Scripted("c")));
    let told = [("x-a", "wait"), ("x-b", "wait"), ("x-c", "wait")];
    let response = answer(chain, &told).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(by(&response), Some("a"));
}

#[tokio::test]
async fn a_check_refusing_after_a_wait_gets_the_earlier_headers() {
    /// Waits, then refuses.
    #[derive(Clone)]
    struct WaitThenRefuse;
    impl<B> Check<B> for WaitThenRefuse {
        type Admit = ();
        type Wait = Once;
        fn check(&self, _: &mut Request<B>) -> Verdict<(), Once> {
            Verdict::Wait(Once(false))
        }
        fn resume(&self, request: &mut Request<B>, (): ()) -> Verdict<(), Once> {
            Verdict::Refuse(Renderer::default().refuse(request, Denial::StoreUnavailable))
        }
    }
    let response = answer(Chain::new(Scripted("outer"), WaitThenRefuse), &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(by(&response), Some("outer"));
}

#[tokio::test]
async fn a_future_polled_again_after_completing_fails_closed() {
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let mut service = CheckService::new(Scripted("only"), inner);
    let mut context = Context::from_waker(Waker::noop());
    let mut future = pin!(service.call(request(&[])));
    let Poll::Ready(Ok(first)) = future.as_mut().poll(&mut context) else {
        panic!("an admitted request with a ready inner service answers at once");
    };
    assert_eq!(first.status(), StatusCode::OK);
    let mut refused = pin!(service.call(request(&[("x-only", "refuse")])));
    let Poll::Ready(Ok(_)) = refused.as_mut().poll(&mut context) else {
        panic!("a refusal answers at once");
    };
    let Poll::Ready(Ok(again)) = refused.as_mut().poll(&mut context) else {
        panic!("polled again, it answers at once");
    };
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_empty_check_admits_and_adds_nothing() {
    let response = answer((), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().is_empty());
}
