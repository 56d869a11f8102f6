use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::render::*;
use crate::CheckBody;
use tokengate_core::RequestTrail;
use tokengate_core::denial::*;

type Body = CheckBody<Empty<Bytes>>;

fn rate_limited(retry_after: Duration) -> Denial {
    Denial::RateLimited(RateLimited {
        retry_after,
        policy: RateLimitPolicy::new("default", 10, Duration::from_secs(60)).unwrap(),
        fallback: None,
    })
}

fn every_row() -> Vec<(Denial, u16, u8, Option<&'static str>)> {
    vec![
        (
            Denial::MalformedRequest(MalformedReason::MultipleCredentials),
            400,
            3,
            Some(r#"Bearer realm="notes", error="invalid_request""#),
        ),
        (
            Denial::MissingToken,
            401,
            16,
            Some(r#"Bearer realm="notes""#),
        ),
        (
            Denial::InvalidToken(InvalidReason::Revoked),
            401,
            16,
            Some(r#"Bearer realm="notes", error="invalid_token""#),
        ),
        (
            Denial::InsufficientScope {
                missing: vec![
                    "notes:write".parse().unwrap(),
                    "notes:admin".parse().unwrap(),
                ],
            },
            403,
            7,
            Some(
                r#"Bearer realm="notes", error="insufficient_scope", scope="notes:write notes:admin""#,
            ),
        ),
        (Denial::Unmapped, 403, 7, None),
        (Denial::IpForbidden(IpReason::Denied), 403, 7, None),
        (rate_limited(Duration::from_millis(2500)), 429, 8, None),
        (Denial::StoreUnavailable, 503, 14, None),
        (
            Denial::UsageExhausted {
                retry_after: Some(Duration::from_secs(90)),
            },
            429,
            8,
            None,
        ),
        (Denial::UsageExhausted { retry_after: None }, 403, 7, None),
        (Denial::RateStateUnavailable, 503, 14, None),
        (Denial::NoPeerAddress, 500, 13, None),
        (Denial::AuditUnavailable, 503, 14, None),
    ]
}

fn renderer() -> Renderer {
    Renderer::new(Realm::new("notes").unwrap())
}

async fn body_json(response: Response<Body>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn every_row_renders_as_http_problem_json() {
    for (denial, status, _, challenge) in every_row() {
        let response: Response<Body> = renderer().render(denial.clone(), false);
        assert_eq!(response.status().as_u16(), status, "{denial}");
        let headers = response.headers();
        assert_eq!(
            headers[CONTENT_TYPE], "application/problem+json",
            "{denial}"
        );
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(
            headers.get(WWW_AUTHENTICATE).map(|v| v.to_str().unwrap()),
            challenge,
            "{denial}"
        );
        assert_eq!(response.extensions().get::<Denial>(), Some(&denial));
        let detail = denial.public_detail();
        let json = body_json(response).await;
        assert_eq!(json["status"], status, "{denial}");
        assert_eq!(json["detail"], detail);
        assert_eq!(
            json["type"],
            format!("urn:tokengate:problem:{}", denial.problem_slug())
        );
        assert!(json["title"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

#[tokio::test]
async fn every_row_renders_as_grpc_trailers_only() {
    for (denial, _, code, _) in every_row() {
        let response: Response<Body> = renderer().render(denial.clone(), true);
        assert_eq!(response.status(), StatusCode::OK, "{denial}");
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(
            headers["grpc-status"],
            code.to_string().as_str(),
            "{denial}"
        );
        assert_eq!(headers["grpc-message"], denial.public_detail());
        assert!(headers.get(WWW_AUTHENTICATE).is_none());
        assert_eq!(response.extensions().get::<Denial>(), Some(&denial));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "{denial}");
    }
}

#[tokio::test]
async fn every_invalid_token_reason_gets_the_same_response() {
    let reasons = [
        InvalidReason::Unknown,
        InvalidReason::Expired,
        InvalidReason::Revoked,
        InvalidReason::WrongAudience,
        InvalidReason::Malformed(tokengate_core::TokenFormatError::BadChecksum),
        InvalidReason::Malformed(tokengate_core::TokenFormatError::WrongLength),
    ];
    let mut seen = Vec::new();
    for reason in reasons {
        let response: Response<Body> = renderer().render(Denial::InvalidToken(reason), false);
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        seen.push((parts.status, parts.headers, bytes));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let reasons: std::collections::HashSet<_> = reasons
        .iter()
        .map(|r| Denial::InvalidToken(*r).reason())
        .collect();
    assert_eq!(reasons.len(), 6, "audit reasons must tell the causes apart");
}

#[tokio::test]
async fn insufficient_scope_names_the_missing_scopes_in_the_body() {
    let (denial, ..) = every_row().swap_remove(3);
    let json = body_json(renderer().render(denial, false)).await;
    assert_eq!(
        json["missing_scopes"],
        serde_json::json!(["notes:write", "notes:admin"])
    );
}

#[test]
fn rate_limited_sets_retry_after_and_ratelimit_headers() {
    let response: Response<Body> =
        renderer().render(rate_limited(Duration::from_millis(2500)), false);
    let headers = response.headers();
    assert_eq!(headers[RETRY_AFTER], "3");
    assert_eq!(headers["ratelimit-policy"], r#""default";q=10;w=60"#);
    assert_eq!(headers["ratelimit"], r#""default";r=0;t=3"#);

    let short: Response<Body> = renderer().render(rate_limited(Duration::from_millis(10)), false);
    assert_eq!(
        short.headers()[RETRY_AFTER],
        "1",
        "Retry-After is at least 1"
    );

    let grpc: Response<Body> = renderer().render(rate_limited(Duration::from_millis(2500)), true);
    assert_eq!(grpc.headers()["grpc-status"], "8");
    assert_eq!(grpc.headers()[RETRY_AFTER], "3");
    assert_eq!(grpc.headers()["grpc-retry-pushback-ms"], "2500");
    // The same quota headers as the HTTP 429 (and as an admitted gRPC call).
    assert_eq!(grpc.headers()["ratelimit-policy"], r#""default";q=10;w=60"#);
    assert_eq!(grpc.headers()["ratelimit"], r#""default";r=0;t=3"#);
}

#[tokio::test]
async fn a_spent_token_is_told_when_it_refills_or_that_it_never_will() {
    let refills = Denial::UsageExhausted {
        retry_after: Some(Duration::from_millis(90_500)),
    };
    let response: Response<Body> = renderer().render(refills.clone(), false);
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert_eq!(headers[RETRY_AFTER], "91");
    assert_eq!(headers["token-uses-remaining"], "0");
    assert!(headers.get("ratelimit").is_none(), "not a rate quota");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["type"], "urn:tokengate:problem:usage-exhausted");
    assert_eq!(body["retry_after"], 91);

    let never: Response<Body> =
        renderer().render(Denial::UsageExhausted { retry_after: None }, false);
    assert_eq!(never.status(), 403);
    assert!(never.headers().get(RETRY_AFTER).is_none());
    assert_eq!(never.headers()["token-uses-remaining"], "0");

    let grpc: Response<Body> = renderer().render(refills, true);
    assert_eq!(grpc.headers()["grpc-status"], "8");
    assert_eq!(grpc.headers()["grpc-retry-pushback-ms"], "90500");
    assert_eq!(grpc.headers()["token-uses-remaining"], "0");
    let grpc: Response<Body> =
        renderer().render(Denial::UsageExhausted { retry_after: None }, true);
    assert_eq!(grpc.headers()["grpc-status"], "7");
    assert!(grpc.headers().get("grpc-retry-pushback-ms").is_none());
    assert_eq!(Denial::UsageExhausted { retry_after: None }.layer(), "uses");
}

#[test]
fn grpc_is_detected_by_content_type() {
    let with = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        is_grpc(&headers)
    };
    assert!(with("application/grpc"));
    assert!(with("application/grpc+proto"));
    assert!(with("application/grpc;charset=utf-8"));
    assert!(with("Application/GRPC"));
    assert!(!with("application/grpc-web"));
    assert!(!with("application/json"));
    assert!(!with("application/grp"));
    assert!(!is_grpc(&HeaderMap::new()));
}

#[tokio::test]
async fn a_custom_body_cannot_change_status_or_challenge() {
    let custom = renderer().with_body(|denial: &Denial| {
        Response::new(Bytes::from(format!("nope: {}", denial.problem_slug())))
    });
    let response: Response<Body> =
        custom.render(Denial::InvalidToken(InvalidReason::Unknown), false);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="notes", error="invalid_token""#
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "nope: invalid-token");
}

#[test]
fn reject_notes_the_denial_in_the_trail_and_follows_the_protocol() {
    let trail = RequestTrail::new();
    let mut request = Request::new(());
    request.extensions_mut().insert(trail.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let response: Response<Body> = renderer()
        .refuse(&request, Denial::MissingToken)
        .into_response();
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(trail.denial(), Some(&Denial::MissingToken));
}

#[test]
fn bad_realms_and_policy_names_are_refused_by_name() {
    for bad in ["", "a\"b", "a\\b", "tab\there"] {
        let err = Realm::new(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
    let err = RateLimitPolicy::new("Per Token", 1, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("\"Per Token\""));
}

#[test]
fn reasons_are_stable_and_distinct() {
    let all = [
        Denial::MalformedRequest(MalformedReason::MultipleCredentials),
        Denial::MalformedRequest(MalformedReason::BadAuthorizationHeader),
        Denial::MalformedRequest(MalformedReason::QueryTokenNotAllowed),
        Denial::MissingToken,
        Denial::InvalidToken(InvalidReason::Unknown),
        Denial::InvalidToken(InvalidReason::Expired),
        Denial::InvalidToken(InvalidReason::Revoked),
        Denial::InvalidToken(InvalidReason::WrongAudience),
        Denial::Unmapped,
        Denial::IpForbidden(IpReason::Denied),
        Denial::IpForbidden(IpReason::NotAllowed),
        Denial::IpForbidden(IpReason::OutsideTokenNetworks),
        Denial::IpForbidden(IpReason::Unresolved),
        Denial::StoreUnavailable,
        Denial::NoPeerAddress,
        Denial::AuditUnavailable,
        Denial::UsageExhausted { retry_after: None },
    ];
    let reasons: std::collections::HashSet<_> = all.iter().map(Denial::reason).collect();
    assert_eq!(reasons.len(), all.len());
    assert_eq!(
        Denial::InvalidToken(InvalidReason::Revoked).reason(),
        "token_revoked"
    );
}
