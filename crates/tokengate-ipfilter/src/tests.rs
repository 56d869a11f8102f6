use std::convert::Infallible;
use std::net::IpAddr;

use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokengate_check::{Check, Verdict};
use tokengate_core::{ClientIp, Denial, IpReason, RequestTrail};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;

/// Answers 200 with the ClientIp it was handed.
async fn seen(
    layer: ResolveClientIpLayer,
    filter: Option<IpFilterLayer>,
    request: Request<()>,
) -> (StatusCode, Option<IpAddr>, Option<Denial>) {
    let handler = service_fn(|r: Request<()>| async move {
        let ip = ClientIp::of(r.extensions())
            .map(|ip| ip.addr().to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(ip))))
    });
    let filter = filter
        .unwrap_or_else(|| IpFilterLayer::new(IpRules::deny_list(Vec::<&str>::new()).unwrap()));
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(filter)
        .service(handler);
    let response = service.oneshot(request).await.unwrap();
    let denial = response.extensions().get::<Denial>().cloned();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(bytes.to_vec()).unwrap();
    (status, body.parse().ok(), denial)
}

fn from(peer: Option<&str>, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(()).unwrap();
    if let Some(peer) = peer {
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
    }
    request
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn proxies() -> ResolveClientIpLayer {
    ResolveClientIpLayer::trusted_proxies(["10.0.0.0/8"]).unwrap()
}

#[tokio::test]
async fn an_untrusted_peer_is_decided_on_its_own_address() {
    let (status, client, _) = seen(
        proxies(),
        None,
        from(Some("203.0.113.5:1"), &[("x-forwarded-for", "1.1.1.1")]),
    )
    .await;
    assert_eq!((status, client), (StatusCode::OK, Some(ip("203.0.113.5"))));
}

#[tokio::test]
async fn a_trusted_proxy_yields_the_rightmost_untrusted_address() {
    let request = from(
        Some("10.0.0.1:1"),
        &[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.9.9.9"),
        ],
    );
    let (_, client, _) = seen(proxies(), None, request).await;
    assert_eq!(client, Some(ip("198.51.100.7")));
}

#[tokio::test]
async fn a_mapped_peer_matches_ipv4_rules() {
    let filter =
        IpFilterLayer::new(IpRules::allow_list(["10.0.0.0/8"], Vec::<&str>::new()).unwrap());
    let (status, client, _) = seen(
        ResolveClientIpLayer::new(),
        Some(filter.clone()),
        from(Some("[::ffff:10.1.2.3]:1"), &[]),
    )
    .await;
    assert_eq!((status, client), (StatusCode::OK, Some(ip("10.1.2.3"))));
    let (status, ..) = seen(
        ResolveClientIpLayer::new(),
        Some(filter),
        from(Some("[::1]:1"), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_malformed_trusted_chain_is_unresolved_and_denied() {
    for bad in ["1.2.3.4:80", "[::1]", "fe80::1%eth0", "unknown", "01.2.3.4"] {
        let request = from(Some("10.0.0.1:1"), &[("x-forwarded-for", bad)]);
        let (status, client, denial) = seen(proxies(), None, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(client, None);
        assert_eq!(denial, Some(Denial::IpForbidden(IpReason::Unresolved)));
    }
}

#[tokio::test]
async fn no_peer_address_fails_closed_as_the_servers_fault() {
    // The server never handed the connection's address to the layers: a
    // 500 naming no client fault, never a 403 the client can do nothing about.
    let (status, _, denial) = seen(
        proxies(),
        None,
        from(None, &[("x-forwarded-for", "1.2.3.4")]),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(denial, Some(Denial::NoPeerAddress));
}

#[tokio::test]
async fn a_chosen_peer_source_is_kept_and_a_default_one_fills_in() {
    let fixed = |ip: &'static str| move |_: &http::Extensions| Some(ip.parse().unwrap());
    let chosen = ResolveClientIpLayer::new()
        .peer_source(fixed("192.0.2.1"))
        .default_peer_source(fixed("192.0.2.2"));
    assert_eq!(resolved(&chosen), "192.0.2.1");
    let filled = ResolveClientIpLayer::new().default_peer_source(fixed("192.0.2.2"));
    assert_eq!(resolved(&filled), "192.0.2.2");
}

/// The client address `layer` inserts into a bare request.
fn resolved(layer: &ResolveClientIpLayer) -> String {
    let mut request = Request::new(());
    assert!(matches!(layer.check(&mut request), Verdict::Admit(())));
    ClientIp::of(request.extensions())
        .unwrap()
        .addr()
        .to_string()
}

#[tokio::test]
async fn a_filter_without_a_client_address_fails_closed() {
    let filter = IpFilterLayer::new(IpRules::deny_list(Vec::<&str>::new()).unwrap());
    let handler =
        service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let response = ServiceBuilder::new()
        .layer(filter)
        .service(handler)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn deny_wins_over_an_overlapping_allow() {
    let rules = IpRules::allow_list(["198.51.100.0/24"], ["198.51.100.128/25"]).unwrap();
    let filter = IpFilterLayer::new(rules);
    let check = |peer: &'static str| {
        seen(
            ResolveClientIpLayer::new(),
            Some(filter.clone()),
            from(Some(peer), &[]),
        )
    };
    assert_eq!(check("198.51.100.1:1").await.0, StatusCode::OK);
    let (status, _, denial) = check("198.51.100.200:1").await;
    assert_eq!(
        (status, denial),
        (
            StatusCode::FORBIDDEN,
            Some(Denial::IpForbidden(IpReason::Denied))
        )
    );
    let (status, _, denial) = check("192.0.2.1:1").await;
    assert_eq!(
        (status, denial),
        (
            StatusCode::FORBIDDEN,
            Some(Denial::IpForbidden(IpReason::NotAllowed))
        )
    );
}

#[tokio::test]
async fn rules_can_be_replaced_at_runtime_for_every_clone() {
    let filter = IpFilterLayer::new(IpRules::deny_list(Vec::<&str>::new()).unwrap());
    let clone = filter.clone();
    let check = |f: IpFilterLayer| {
        seen(
            ResolveClientIpLayer::new(),
            Some(f),
            from(Some("192.0.2.1:1"), &[]),
        )
    };
    assert_eq!(check(clone.clone()).await.0, StatusCode::OK);
    filter.replace(IpRules::deny_list(["192.0.2.0/24"]).unwrap());
    assert_eq!(check(clone).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_forwarded_header_can_be_chosen() {
    let layer = proxies().header(ForwardedHeader::Forwarded);
    let request = from(
        Some("10.0.0.1:1"),
        &[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    );
    assert_eq!(seen(layer, None, request).await.1, Some(ip("198.51.100.7")));
}

#[tokio::test]
async fn grpc_clients_get_status_7() {
    let filter = IpFilterLayer::new(IpRules::deny_list(["192.0.2.0/24"]).unwrap());
    let request = from(
        Some("192.0.2.1:1"),
        &[(CONTENT_TYPE.as_str(), "application/grpc")],
    );
    let handler =
        service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let service = ServiceBuilder::new()
        .layer(ResolveClientIpLayer::new())
        .layer(filter)
        .service(handler);
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "7");
}

#[tokio::test]
async fn the_client_address_reaches_the_trail() {
    let trail = RequestTrail::new();
    let mut request = from(Some("203.0.113.5:1"), &[]);
    request.extensions_mut().insert(trail.clone());
    seen(proxies(), None, request).await;
    assert_eq!(
        trail.client_ip().map(ClientIp::addr),
        Some(ip("203.0.113.5"))
    );
}

#[test]
fn invalid_cidrs_fail_at_construction_naming_them() {
    let err = ResolveClientIpLayer::trusted_proxies(["10.0.0.0/8", "10.0.0.0/40"]).unwrap_err();
    assert!(err.to_string().contains("\"10.0.0.0/40\""), "{err}");
    let err = IpRules::allow_list(["nope"], Vec::<&str>::new()).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn rules_from_flag_lists_choose_allow_or_deny_mode() {
    let deny_only = IpRules::from_lists(Vec::<&str>::new(), ["192.0.2.0/24"]).unwrap();
    assert_eq!(deny_only.decide(ip("192.0.2.1")), Err(IpReason::Denied));
    assert_eq!(deny_only.decide(ip("198.51.100.1")), Ok(()));
    let allow = IpRules::from_lists(["198.51.100.0/24"], Vec::<&str>::new()).unwrap();
    assert_eq!(allow.decide(ip("192.0.2.1")), Err(IpReason::NotAllowed));
    assert_eq!(allow.decide(ip("198.51.100.1")), Ok(()));
}
