//! What an operator sees: axum-notes on PostgreSQL (behind a proxy that
//! can be cut) with `--admin-listen`, driven through allow, 401, 403, 429
//! and 503; the Prometheus endpoint's counters are exact, and `/readyz`
//! turns 503 while the database is unreachable and 200 when it is back.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokengate_postgres::testing::TestDatabase;
use tokengate_store::testing::Proxy;
use tokengate_tests::process::{cli, start_example_with, temp_dir};

async fn send(url: &str, method: &str, token: Option<&str>) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Prometheus text as `name{labels, sorted}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let key = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_owned(),
            };
            Some((key, value.parse().ok()?))
        })
        .collect()
}

fn decision(layer: &str, outcome: &str, reason: &str) -> String {
    format!(
        "tokengate_decisions_total{{layer=\"{layer}\",outcome=\"{outcome}\",reason=\"{reason}\"}}"
    )
}

/// `/readyz` until it answers `want`, at most 15 s.
async fn ready_becomes(admin: &str, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = send(&format!("{admin}/readyz"), "GET", None).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_and_readiness_follows_the_store() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_axum-notes");
    let dir = temp_dir("axum-notes-ops");
    let pepper = dir.join("pepper").display().to_string();
    let global = ["--pepper-file", pepper.as_str()];
    cli(bin, db.url(), &[&global[..], &["init"]].concat());
    let issue = |name: &str, extra: &[&str]| {
        let args = [
            &global[..],
            &["issue", "--name", name, "--subject", "team-a"],
            &["--scope", "notes:read", "--audience", "notes"],
            extra,
        ]
        .concat();
        cli(bin, db.url(), &args).trim().to_owned()
    };
    let reader = issue("reader", &[]);
    let slow = issue("slow", &["--rate", "1/min", "--burst", "1"]);
    let unseen = issue("unseen", &[]);
    // Within the 7-day near-expiry window.
    let soon = issue("soon", &["--ttl", "1d"]);

    let mut proxy = Proxy::start(&db.target()).await;
    let url = db.url_via(&proxy.addr().to_string());
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let flags = [
        "--db",
        url.as_str(),
        "--pepper-file",
        pepper.as_str(),
        "--audit-log",
        "audit.jsonl",
        "--admin-listen",
        admin_addr.as_str(),
        "--log-format",
        "json",
    ];
    let mut server = start_example_with(bin, &dir, "axum-notes listening on ", &flags);
    let admin = server
        .output
        .iter()
        .find_map(|line| line.split(" on ").nth(1).filter(|_| line.contains("admin")))
        .expect("the admin address was printed")
        .trim()
        .to_owned();
    let api = server.addr.clone();
    let notes = format!("{api}/notes");

    assert_eq!(
        send(&format!("{admin}/healthz"), "GET", None).await.0,
        StatusCode::OK
    );
    let body = ready_becomes(&admin, StatusCode::OK).await;
    assert!(body.contains(r#""ready":true"#), "{body}");
    assert!(body.contains(r#""feed":"ok""#), "{body}");
    assert!(body.contains(r#""audit":"ok""#), "{body}");

    // Allowed three times: two readers (a miss, then a hit) and the slow
    // token's one request.
    assert_eq!(send(&notes, "GET", Some(&reader)).await.0, StatusCode::OK);
    assert_eq!(send(&notes, "GET", Some(&reader)).await.0, StatusCode::OK);
    assert_eq!(send(&notes, "GET", Some(&slow)).await.0, StatusCode::OK);
    // The near-expiry token: two admitted, one refused by the scope check
    // (which runs after authenticate, so it must not be counted).
    assert_eq!(send(&notes, "GET", Some(&soon)).await.0, StatusCode::OK);
    assert_eq!(send(&notes, "GET", Some(&soon)).await.0, StatusCode::OK);
    assert_eq!(
        send(&format!("{api}/notes/1"), "DELETE", Some(&soon))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // 401, 403, 429.
    assert_eq!(send(&notes, "GET", None).await.0, StatusCode::UNAUTHORIZED);
    let delete = format!("{api}/notes/1");
    assert_eq!(
        send(&delete, "DELETE", Some(&reader)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&notes, "GET", Some(&slow)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // The database goes away: not ready, and a token the cache has not
    // seen gets 503 while known ones are still served.
    proxy.cut();
    let body = ready_becomes(&admin, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains(r#""ready":false"#), "{body}");
    assert_eq!(
        send(&notes, "GET", Some(&unseen)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let (status, text) = send(&format!("{admin}/metrics"), "GET", None).await;
    assert_eq!(status, StatusCode::OK);
    let scraped = samples(&text);
    let value = |key: &str| scraped.get(key).copied();
    assert_eq!(
        value(&decision("gate", "allow", "allowed")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(&decision("authenticate", "deny", "missing_token")),
        Some(1.0)
    );
    assert_eq!(
        value(&decision("scope", "deny", "insufficient_scope")),
        Some(2.0)
    );
    assert_eq!(value(&decision("rate", "deny", "rate_limited")), Some(1.0));
    assert_eq!(
        value(&decision("authenticate", "deny", "store_unavailable")),
        Some(1.0)
    );
    assert_eq!(
        value(r#"tokengate_rate_limited_total{limiter="per-token"}"#),
        Some(1.0),
        "{text}"
    );
    // Listed from the start, before any refusal.
    assert_eq!(
        value(r#"tokengate_rate_limited_total{limiter="per-ip"}"#),
        Some(0.0),
        "{text}"
    );
    // The cache: reader, slow, soon and unseen each missed once; the
    // reader's second GET and DELETE, the slow token's second request and
    // soon's second GET and DELETE hit.
    assert_eq!(
        value(r#"tokengate_cache_lookups_total{result="miss"}"#),
        Some(4.0)
    );
    assert_eq!(
        value(r#"tokengate_cache_lookups_total{result="hit"}"#),
        Some(5.0)
    );
    assert_eq!(
        value(r#"tokengate_store_errors_total{kind="error"}"#),
        Some(1.0)
    );
    // Listed from the start, before any timeout.
    assert_eq!(
        value(r#"tokengate_store_errors_total{kind="timeout"}"#),
        Some(0.0),
        "{text}"
    );
    // Admitted requests only: the refused DELETE is not counted.
    assert_eq!(
        value("tokengate_near_expiry_requests_total"),
        Some(2.0),
        "{text}"
    );
    // A histogram with the documented buckets, not a summary.
    assert!(
        text.contains("# TYPE tokengate_store_lookup_duration_seconds histogram"),
        "{text}"
    );
    for bound in tokengate::core::metric_names::DURATION_BUCKETS {
        let series = format!("tokengate_store_lookup_duration_seconds_bucket{{le=\"{bound}\"}}");
        assert!(value(&series).is_some(), "no {series} in {text}");
    }
    assert_eq!(value("tokengate_feed_connected"), Some(0.0), "{text}");

    // The library's warning reached stderr with no RUST_LOG set, as JSON.
    let warned = |text: &str| {
        server.stderr_lines().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["level"] == "WARN"
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(text))
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned("token change feed lost") {
        assert!(
            Instant::now() < deadline,
            "no feed warning on stderr: {:?}",
            server.stderr_lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: ready again, and the token that got 503 is served.
    proxy.restore().await;
    let body = ready_becomes(&admin, StatusCode::OK).await;
    assert!(body.contains(r#""store":"ok""#), "{body}");
    assert_eq!(send(&notes, "GET", Some(&unseen)).await.0, StatusCode::OK);
    let (_, text) = send(&format!("{admin}/metrics"), "GET", None).await;
    let scraped = samples(&text);
    assert_eq!(
        scraped.get(&decision("gate", "allow", "allowed")).copied(),
        Some(6.0)
    );
    assert_eq!(scraped.get("tokengate_feed_connected").copied(), Some(1.0));
    assert!(
        scraped
            .get("tokengate_feed_reconnects_total")
            .is_some_and(|n| *n >= 1.0),
        "{text}"
    );
    // Eleven requests went through the Gate, so eleven audit records; the
    // writer tells the count after each batch, and the queue's depth is 0
    // once it has drained.
    let written = r#"tokengate_audit_records_total{result="written"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = send(&format!("{admin}/metrics"), "GET", None).await;
        match samples(&text).get(written).copied() {
            Some(11.0) => {
                assert_eq!(
                    samples(&text).get("tokengate_audit_queue_depth").copied(),
                    Some(0.0),
                    "{text}"
                );
                break;
            }
            seen => assert!(Instant::now() < deadline, "{written} stayed {seen:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(server.terminate(), "the server stops cleanly");
}
