//! DPoP-bound and certificate-bound tokens: every check failing on its
//! own is a 401 with its own audit reason; real proofs signed in the test
//! with ES256 and Ed25519 keys made here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use tokengate_core::{Binding, Thumbprint};
use tokengate_store::{ReplayFuture, SharedReplay};

use super::*;
use crate::dpop::{CLIENT_CERT, DPOP, DPOP_NONCE, DpopSigner};

const URL: &str = "http://api.test/notes";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fixture whose clock reads the real time (proofs carry it).
fn dpop_fixture(dpop: Dpop) -> Fixture {
    let f = fixture();
    f.world.clock.set(SystemTime::now());
    let layer = f.layer.clone().dpop(dpop);
    Fixture {
        world: f.world,
        layer,
    }
}

fn dpop_request(token: &str, proofs: &[&str]) -> Request<Full<Bytes>> {
    let mut builder = get("/notes")
        .header(http::header::HOST, "api.test")
        .header(AUTHORIZATION, format!("DPoP {token}"));
    for proof in proofs {
        builder = builder.header(DPOP, *proof);
    }
    builder.body(Full::default()).unwrap()
}

fn claims(token: &str) -> serde_json::Value {
    serde_json::json!({
        "jti": URL_SAFE_NO_PAD.encode(rand_bytes()),
        "htm": "GET",
        "htu": URL,
        "iat": now_secs(),
        "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    })
}

fn rand_bytes() -> [u8; 12] {
    use rand::Rng as _;
    let mut bytes = [0; 12];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

async fn bound(f: &Fixture, key: &DpopSigner) -> Token {
    f.issue(spec().binding(Binding::Dpop(key.jkt()))).await.0
}

fn reason(out: &Outcome) -> &'static str {
    match &out.denial {
        Some(Denial::InvalidToken(reason)) => reason.as_str(),
        other => panic!("expected an invalid-token denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bound_token_with_its_proof_is_admitted_with_es256_and_ed25519() {
    let f = dpop_fixture(Dpop::new());
    for key in [DpopSigner::generate_es256(), DpopSigner::generate_ed25519()] {
        let token = bound(&f, &key).await;
        let secret = token.expose_secret();
        let proof = key.proof("GET", URL, secret, None);
        let out = f.send(dpop_request(secret, &[&proof])).await;
        assert_eq!(out.status, StatusCode::OK, "{:?} {out:?}", key.algorithm());
        assert_eq!(out.body, "alice /notes");
        // The same token as a bearer token is refused.
        let out = f.send_token(secret).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reason(&out), "dpop_bound_as_bearer");
    }
}

#[tokio::test]
async fn an_unbound_token_may_come_with_a_proof_which_must_still_hold() {
    let f = dpop_fixture(Dpop::new());
    let (token, _) = f.issue(spec()).await;
    let key = DpopSigner::generate_es256();
    let secret = token.expose_secret();
    let ok = f
        .send(dpop_request(
            secret,
            &[&key.proof("GET", URL, secret, None)],
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let bad = f
        .send(dpop_request(
            secret,
            &[&key.proof("POST", URL, secret, None)],
        ))
        .await;
    assert_eq!(reason(&bad), "dpop_htm_mismatch");
}

#[tokio::test]
async fn each_check_failing_alone_is_401_with_its_reason_and_one_body() {
    let f = dpop_fixture(Dpop::new());
    let key = DpopSigner::generate_es256();
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let other = DpopSigner::generate_ed25519();
    let other_ec = DpopSigner::generate_es256();
    let header = key.header();
    let with = |change: &dyn Fn(&mut serde_json::Value, &mut serde_json::Value)| {
        let (mut h, mut c) = (header.clone(), claims(secret));
        change(&mut h, &mut c);
        key.sign(&h, &c)
    };
    let good = with(&|_, _| {});
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let private = {
        let mut h = header.clone();
        h["jwk"]["d"] = "AAAA".into();
        key.sign(&h, &claims(secret))
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("dpop_missing", vec![]),
        ("dpop_malformed", vec![good.clone(), good.clone()]),
        ("dpop_malformed", vec!["not.a.proof".into()]),
        (
            "dpop_malformed",
            vec![with(&|h, _| h["typ"] = "JWT".into())],
        ),
        ("dpop_malformed", vec![private]),
        ("dpop_malformed", vec![with(&|_, c| c["jti"] = "".into())]),
        (
            "dpop_malformed",
            vec![with(&|_, c| c["iat"] = "soon".into())],
        ),
        (
            "dpop_malformed",
            vec![format!("{}.{}", "a".repeat(4096), good)],
        ),
        (
            "dpop_alg_not_allowed",
            vec![with(&|h, _| h["alg"] = "none".into())],
        ),
        (
            "dpop_alg_not_allowed",
            vec![with(&|h, _| h["alg"] = "HS256".into())],
        ),
        (
            "dpop_alg_not_allowed",
            vec![with(&|h, _| h["alg"] = "EdDSA".into())],
        ),
        ("dpop_invalid_signature", vec![flipped]),
        (
            "dpop_invalid_signature",
            vec![with(&|h, _| h["jwk"] = other_ec.public_jwk().clone())],
        ),
        (
            "dpop_alg_not_allowed",
            vec![with(&|h, _| h["jwk"] = other.public_jwk().clone())],
        ),
        (
            "dpop_htm_mismatch",
            vec![with(&|_, c| c["htm"] = "POST".into())],
        ),
        (
            "dpop_htu_mismatch",
            vec![with(&|_, c| c["htu"] = "http://evil.test/notes".into())],
        ),
        (
            "dpop_htu_mismatch",
            vec![with(&|_, c| c["htu"] = "https://api.test/notes".into())],
        ),
        (
            "dpop_iat",
            vec![with(&|_, c| c["iat"] = (now_secs() - 120).into())],
        ),
        (
            "dpop_iat",
            vec![with(&|_, c| c["iat"] = (now_secs() + 120).into())],
        ),
        (
            "dpop_ath_mismatch",
            vec![with(&|_, c| c["ath"] = "AAAA".into())],
        ),
        (
            "dpop_ath_mismatch",
            vec![with(&|_, c| {
                c.as_object_mut().unwrap().remove("ath");
            })],
        ),
        (
            "dpop_key_mismatch",
            vec![other.proof("GET", URL, secret, None)],
        ),
    ];
    let mut bodies = std::collections::BTreeSet::new();
    for (expected, proofs) in cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let out = f.send(dpop_request(secret, &proofs)).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{expected}");
        assert_eq!(reason(&out), expected, "{proofs:?}");
        assert!(
            out.headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .any(|v| v == r#"DPoP error="invalid_token", algs="ES256 EdDSA""#),
            "{expected}: {:?}",
            out.headers
        );
        bodies.insert(out.body);
    }
    assert_eq!(
        bodies.len(),
        1,
        "one body for every binding failure: {bodies:?}"
    );
    // A proof that passed once is a replay the second time.
    let proof = key.proof("GET", URL, secret, None);
    assert_eq!(
        f.send(dpop_request(secret, &[&proof])).await.status,
        StatusCode::OK
    );
    let again = f.send(dpop_request(secret, &[&proof])).await;
    assert_eq!(reason(&again), "dpop_replay");
}

#[tokio::test]
async fn the_iat_window_reads_the_layers_clock() {
    let f = dpop_fixture(Dpop::new().iat_window(Duration::from_secs(5)).unwrap());
    let key = DpopSigner::generate_ed25519();
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let proof = key.proof("GET", URL, secret, None);
    f.world.clock.advance(Duration::from_secs(30));
    let out = f.send(dpop_request(secret, &[&proof])).await;
    assert_eq!(reason(&out), "dpop_iat");
}

#[tokio::test]
async fn the_url_comes_from_the_external_origin_or_a_trusted_proxys_headers() {
    let key = DpopSigner::generate_es256();
    // An external origin: the Host header does not matter.
    let f = dpop_fixture(
        Dpop::new()
            .external_origin("https://api.example.com")
            .unwrap(),
    );
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let proof = key.proof("GET", "https://api.example.com/notes", secret, None);
    assert_eq!(
        f.send(dpop_request(secret, &[&proof])).await.status,
        StatusCode::OK
    );

    // Forwarded headers count only from a trusted proxy.
    let f = dpop_fixture(Dpop::new());
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let forwarded = |trusted: bool| {
        let mut request = dpop_request(
            secret,
            &[&key.proof("GET", "https://public.example/notes", secret, None)],
        );
        request
            .headers_mut()
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        request.headers_mut().insert(
            "x-forwarded-host",
            HeaderValue::from_static("public.example"),
        );
        if trusted {
            RequestTrail::note_peer_trusted(request.extensions_mut());
        }
        request
    };
    let out = f.send(forwarded(false)).await;
    assert_eq!(reason(&out), "dpop_htu_mismatch");
    assert_eq!(f.send(forwarded(true)).await.status, StatusCode::OK);
    assert!(Dpop::new().external_origin("https://h/path").is_err());
    assert!(Dpop::new().external_origin("ftp://h").is_err());
}

#[tokio::test]
async fn nonces_are_asked_for_then_accepted_and_sent_on_every_dpop_response() {
    let f = dpop_fixture(Dpop::new().nonces(Duration::from_secs(60)).unwrap());
    let key = DpopSigner::generate_es256();
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let first = f
        .send(dpop_request(
            secret,
            &[&key.proof("GET", URL, secret, None)],
        ))
        .await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reason(&first), "dpop_nonce");
    assert!(first.headers.get_all(WWW_AUTHENTICATE).iter().any(|v| {
        v.to_str()
            .unwrap()
            .starts_with(r#"DPoP error="use_dpop_nonce""#)
    }));
    let nonce = first.headers[&DPOP_NONCE].to_str().unwrap().to_owned();
    // Another instance (a layer of its own over the same pepper) accepts
    // the nonce this one handed out: nothing else is shared.
    let other = AuthenticateLayer::new(
        f.world.cache.clone(),
        f.world.hasher().clone(),
        "notes".parse().unwrap(),
    )
    .clock(f.world.clock.shared())
    .dpop(Dpop::new().nonces(Duration::from_secs(60)).unwrap());
    let elsewhere = Outcome::of(
        service(&other)
            .oneshot(dpop_request(
                secret,
                &[&key.proof("GET", URL, secret, Some(&nonce))],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::OK, "{elsewhere:?}");
    let ok = f
        .send(dpop_request(
            secret,
            &[&key.proof("GET", URL, secret, Some(&nonce))],
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.headers.contains_key(DPOP_NONCE));
    // Two periods later the nonce is stale.
    f.world.clock.advance(Duration::from_secs(150));
    let stale = f
        .send(dpop_request(
            secret,
            &[&key.proof("GET", URL, secret, Some(&nonce))],
        ))
        .await;
    // The proof's iat is the real time, 150 s behind the clock now.
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
}

/// A shared record that is another instance's memory.
#[derive(Default)]
struct SharedState(Mutex<std::collections::HashSet<[u8; 16]>>, Mutex<bool>);

#[derive(Clone, Default)]
struct Shared(Arc<SharedState>);

impl SharedReplay for Shared {
    fn first_use(&self, key: [u8; 16], _keep: Duration) -> ReplayFuture {
        let down = *self.0.1.lock().unwrap();
        let first = self.0.0.lock().unwrap().insert(key);
        Box::pin(async move {
            if down {
                Err(tokengate_store::SharedReplayError("down".into()))
            } else {
                Ok(first)
            }
        })
    }
}

#[tokio::test]
async fn a_proof_replayed_at_another_instance_sharing_the_record_is_refused() {
    let shared = Shared::default();
    let a = dpop_fixture(Dpop::new().shared_replay(Arc::new(shared.clone())));
    let b_layer = a
        .layer
        .clone()
        .dpop(Dpop::new().shared_replay(Arc::new(shared.clone())));
    let key = DpopSigner::generate_es256();
    let token = bound(&a, &key).await;
    let secret = token.expose_secret();
    let proof = key.proof("GET", URL, secret, None);
    assert_eq!(
        a.send(dpop_request(secret, &[&proof])).await.status,
        StatusCode::OK
    );
    let out = Outcome::of(
        service(&b_layer)
            .oneshot(dpop_request(secret, &[&proof]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reason(&out), "dpop_replay");
    // The shared record down: the instance's own record decides.
    *shared.0.1.lock().unwrap() = true;
    let fresh = key.proof("GET", URL, secret, None);
    assert_eq!(
        a.send(dpop_request(secret, &[&fresh])).await.status,
        StatusCode::OK
    );
    assert_eq!(
        reason(&a.send(dpop_request(secret, &[&fresh])).await),
        "dpop_replay"
    );
}

#[tokio::test]
async fn without_dpop_a_bound_token_is_refused_and_the_scheme_is_not_read() {
    let f = dpop_fixture(Dpop::new());
    let key = DpopSigner::generate_es256();
    let token = bound(&f, &key).await;
    let secret = token.expose_secret();
    let layer = f.layer.clone().no_dpop();
    let out = Outcome::of(
        service(&layer)
            .oneshot(dpop_request(
                secret,
                &[&key.proof("GET", URL, secret, None)],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(out.denial, Some(Denial::MissingToken));
    assert_eq!(out.headers.get_all(WWW_AUTHENTICATE).iter().count(), 1);
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_certificate_from_tls_or_a_trusted_proxy() {
    let f = dpop_fixture(Dpop::new());
    let der = b"a certificate's DER".as_slice();
    let sha: [u8; 32] = Sha256::digest(der).into();
    let (token, _) = f
        .issue(spec().binding(Binding::Certificate(Thumbprint::new(sha))))
        .await;
    let secret = token.expose_secret();
    let send = |cert: Option<&[u8]>, header: Option<&[u8]>, trusted: bool| {
        let mut request = bearer(secret);
        if let Some(der) = cert {
            request
                .extensions_mut()
                .insert(ClientCertificate::from_der(der));
        }
        if let Some(der) = header {
            let value = format!(":{}:", STANDARD.encode(der));
            request
                .headers_mut()
                .insert(CLIENT_CERT, HeaderValue::from_str(&value).unwrap());
        }
        if trusted {
            RequestTrail::note_peer_trusted(request.extensions_mut());
        }
        f.send(request)
    };
    assert_eq!(send(Some(der), None, false).await.status, StatusCode::OK);
    assert_eq!(send(None, Some(der), true).await.status, StatusCode::OK);
    assert_eq!(
        reason(&send(None, Some(der), false).await),
        "cert_untrusted_header"
    );
    assert_eq!(reason(&send(None, None, false).await), "cert_missing");
    assert_eq!(
        reason(&send(Some(b"another"), None, false).await),
        "cert_mismatch"
    );
    assert_eq!(
        reason(&send(None, Some(b"another"), true).await),
        "cert_mismatch"
    );
}
