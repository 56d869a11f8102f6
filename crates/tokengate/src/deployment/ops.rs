//! What an operator's probes ask: is the process up, and can it serve?
//!
//! [`Readiness`] checks the parts a request may need beyond the process:
//! the token store (one indexed lookup, bounded by a timeout), the store's
//! change feed (PostgreSQL: is it listening; without it revocations from
//! other instances do not arrive), the audit file (is its writer writing),
//! and the shared rate state when one is configured (Redis: a `PING`). With the `axum` feature,
//! [`ops_router`] serves `/healthz`, `/readyz` and `/metrics` for an admin
//! listener of its own.

use std::fmt;
use std::time::Duration;

use tokengate_audit::JsonLinesSink;
use tokengate_core::{KeyId, TokenHash};
use tokengate_store::TokenStore;

use super::{AnyStore, FeedHealth};

/// The checks behind `/readyz`: the parts a request may need beyond the
/// process. The token store (one indexed lookup, bounded by a timeout),
/// the store's change feed (PostgreSQL: is it listening; without it
/// revocations from other instances do not arrive), the audit file (not
/// ready while its writes fail: under `Block` requests are about to wait
/// for it, under `Drop` their records are about to be dropped), and the
/// shared rate state when one is configured (Redis: a `PING`).
#[derive(Clone)]
pub struct Readiness {
    store: AnyStore,
    feed: FeedHealth,
    audit: Option<JsonLinesSink>,
    #[cfg(feature = "redis")]
    redis: Option<tokengate_redis::RedisRateState>,
    timeout: Duration,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("feed", &self.feed)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One part's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Component {
    /// `store`, `feed`, `audit` or `redis`.
    pub name: &'static str,
    /// Whether the part can serve.
    pub ready: bool,
    /// What was found, for the operator (`ok`, or the error).
    pub detail: String,
}

/// Every part's answer; ready when all are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Whether every part is ready.
    pub ready: bool,
    /// Each part, in the order checked.
    pub components: Vec<Component>,
}

impl Report {
    /// The report as JSON: `{"ready":true,"components":{"store":"ok",...}}`.
    pub fn to_json(&self) -> String {
        let components: serde_json::Map<String, serde_json::Value> = self
            .components
            .iter()
            .map(|c| (c.name.to_owned(), c.detail.clone().into()))
            .collect();
        serde_json::json!({ "ready": self.ready, "components": components }).to_string()
    }
}

impl Readiness {
    pub(crate) fn new(store: AnyStore, feed: FeedHealth) -> Self {
        Self {
            store,
            feed,
            audit: None,
            #[cfg(feature = "redis")]
            redis: None,
            timeout: Duration::from_secs(2),
        }
    }

    /// Also checks that `sink`'s writer is writing
    /// ([`JsonLinesSink::stalled`]).
    pub fn audit(mut self, sink: JsonLinesSink) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Also checks the shared rate state in Redis.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, state: tokengate_redis::RedisRateState) -> Self {
        self.redis = Some(state);
        self
    }

    /// How long the store may take to answer (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks every part now.
    pub async fn check(&self) -> Report {
        let mut components = vec![self.store().await];
        if let Some(feed) = self.feed() {
            components.push(feed);
        }
        if let Some(sink) = &self.audit {
            components.push(match sink.stalled() {
                None => ok("audit"),
                Some(error) => failed("audit", format!("cannot write: {error}; retrying")),
            });
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            components.push(match redis.ping().await {
                Ok(()) => ok("redis"),
                Err(error) => failed("redis", error.to_string()),
            });
        }
        Report {
            ready: components.iter().all(|c| c.ready),
            components,
        }
    }

    async fn store(&self) -> Component {
        // A hash no token has: one indexed lookup that finds nothing.
        let probe = TokenHash::from_parts(KeyId::new(1), [0; 32]);
        match tokio::time::timeout(self.timeout, self.store.find_by_hash(&probe)).await {
            Ok(Ok(_)) => ok("store"),
            Ok(Err(error)) => failed("store", error.to_string()),
            Err(_) => failed("store", format!("no answer within {:?}", self.timeout)),
        }
    }

    fn feed(&self) -> Option<Component> {
        match &self.feed {
            FeedHealth::Polling => None,
            #[cfg(feature = "postgres")]
            FeedHealth::Listening(watch) => Some(if watch.status().connected {
                ok("feed")
            } else {
                failed("feed", "not listening; reconnecting".to_owned())
            }),
        }
    }
}

fn ok(name: &'static str) -> Component {
    Component {
        name,
        ready: true,
        detail: "ok".to_owned(),
    }
}

fn failed(name: &'static str, detail: String) -> Component {
    Component {
        name,
        ready: false,
        detail,
    }
}

/// `/healthz` (200 while the process serves), `/readyz` (200 when every
/// part of `readiness` is ready, else 503; the JSON body says which) and
/// `/metrics` (whatever `metrics` renders, as Prometheus text), for an
/// admin listener kept apart from the API's.
#[cfg(feature = "axum")]
pub fn ops_router(
    readiness: Readiness,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let report = readiness.check().await;
                    let status = if report.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        [(header::CONTENT_TYPE, "application/json")],
                        report.to_json(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Database, Deployment};

    /// A device with no room left.
    struct Full;

    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_audit_writer_that_cannot_write_makes_the_deployment_not_ready() {
        let dir = std::env::temp_dir().join(format!("tokengate-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut deployment = Deployment::builder(Database::Sqlite(dir.join("tokens.db")))
            .audit_log(dir.join("audit.jsonl"))
            .open()
            .await
            .unwrap();
        let report = deployment.readiness().check().await;
        assert!(report.ready, "{}", report.to_json());
        assert!(
            report.to_json().contains(r#""audit":"ok""#),
            "{}",
            report.to_json()
        );

        deployment.audit = JsonLinesSink::builder().writer(Full);
        // One request through the audit layer: its record cannot be written.
        let service = tower::Layer::layer(
            &tokengate_audit::AuditLayer::new(deployment.audit.clone()),
            tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }),
        );
        let response = tower::ServiceExt::oneshot(service, http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let start = std::time::Instant::now();
        let report = loop {
            let report = deployment.readiness().check().await;
            if !report.ready || start.elapsed() > Duration::from_secs(5) {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(!report.ready, "{}", report.to_json());
        let audit = report
            .components
            .iter()
            .find(|c| c.name == "audit")
            .unwrap();
        assert!(!audit.ready);
        assert!(
            audit.detail.starts_with("cannot write: No space left"),
            "{}",
            audit.detail
        );
        assert!(
            report
                .components
                .iter()
                .filter(|c| c.name != "audit")
                .all(|c| c.ready)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
