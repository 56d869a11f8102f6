//! Shared by axum-notes' process tests: a real HTTP client, and three
//! servers on one PostgreSQL database and one Redis.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokengate_postgres::testing::TestDatabase;
use tokengate_tests::process::{cli, start_example_with, temp_dir};

/// The id of `token`, as `tokengate inspect` (run by `tokengate`) shows it.
pub fn token_id_by(tokengate: &dyn Fn(&[&str]) -> String, token: &str) -> String {
    tokengate(&["inspect", token])
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Sends `method path` to `base` with `token` and `body`; the status.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> StatusCode {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    send_with(base, method, path, &headers, body).await.0
}

/// Sends `method path` to `base` with `headers` and `body` (JSON when
/// not empty); the status and the body.
pub async fn send_with(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let (status, _, body) = exchange(base, method, path, headers, body).await;
    (status, body)
}

/// [`send_with`], with the response's headers.
pub async fn exchange(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Starts axum-notes number `i` on the SQLite file in `dir`, with an audit
/// file of its own (`audit-<i>.jsonl`): one of several servers on one
/// database.
pub fn start_sqlite(
    bin: &str,
    dir: &std::path::Path,
    i: usize,
) -> tokengate_tests::process::Started {
    let audit = format!("audit-{i}.jsonl");
    start_example_with(
        bin,
        dir,
        "axum-notes listening on ",
        &["--audit-log", &audit],
    )
}

/// Issues a token with `notes:read` and a quota of 10 per minute, burst
/// `burst`; the token.
pub fn issue_limited(bin: &str, db: &str, global: &[&str], name: &str, burst: u32) -> String {
    let burst = burst.to_string();
    let quota = ["--rate", "10/min", "--burst", &burst];
    let scope = ["--scope", "notes:read", "--audience", "notes"];
    let args = [
        global,
        &["issue", "--name", name, "--subject", "team-a"][..],
        &scope,
        &quota,
    ]
    .concat();
    cli(bin, db, &args).trim().to_owned()
}

/// Three axum-notes processes on one PostgreSQL database (its own, dropped
/// at the end) and one Redis, with a pepper file in `dir`.
pub struct Deployment {
    pub servers: Vec<tokengate_tests::process::Started>,
    pub bases: Vec<String>,
    pub db: TestDatabase,
    pub pepper: String,
    pub dir: std::path::PathBuf,
    prefix: String,
    redis: Option<String>,
    /// One deployment at a time in a test binary: three servers' pools
    /// (16 connections each) and feeds, twice over, pass PostgreSQL's
    /// 100 connections.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// The turn of the one deployment running in this test binary.
async fn turn() -> tokio::sync::OwnedMutexGuard<()> {
    static TURN: std::sync::OnceLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
        std::sync::OnceLock::new();
    std::sync::Arc::clone(TURN.get_or_init(Default::default))
        .lock_owned()
        .await
}

impl Deployment {
    pub async fn start(name: &str) -> Option<Self> {
        let redis = tokengate_tests::redis_url()?;
        Self::start_with(name, Some(redis)).await
    }

    /// Three servers on one PostgreSQL database, without Redis.
    pub async fn start_without_redis(name: &str) -> Option<Self> {
        Self::start_with(name, None).await
    }

    /// Three servers on one PostgreSQL database, without Redis, with
    /// `more` flags.
    pub async fn start_with_flags(name: &str, more: &[&str]) -> Option<Self> {
        Self::start_with_more(name, None, more).await
    }

    async fn start_with(name: &str, redis: Option<String>) -> Option<Self> {
        Self::start_with_more(name, redis, &[]).await
    }

    async fn start_with_more(name: &str, redis: Option<String>, more: &[&str]) -> Option<Self> {
        let turn = turn().await;
        let db = TestDatabase::create().await?;
        let bin = env!("CARGO_BIN_EXE_axum-notes");
        let dir = temp_dir(name);
        let pepper = dir.join("pepper").display().to_string();
        let prefix = format!("tg-{name}-{}", std::process::id());
        // Created by the CLI, as an operator would: the servers then share it.
        cli(bin, db.url(), &["--pepper-file", &pepper, "init"]);
        let servers: Vec<_> = (0..3)
            .map(|i| {
                let audit = format!("audit-{i}.jsonl");
                let mut flags = vec![
                    "--db",
                    db.url(),
                    "--pepper-file",
                    &pepper,
                    "--audit-log",
                    &audit,
                    // Every request of these tests comes from one address.
                    "--pre-auth-rate",
                    "100000",
                ];
                flags.extend(more);
                if let Some(redis) = &redis {
                    flags.extend([
                        "--redis",
                        redis,
                        "--redis-prefix",
                        &prefix,
                        // A loaded machine (the whole suite runs at once) must
                        // not pass for a Redis outage, whose fallback limits
                        // per instance: the counts below are exact.
                        "--redis-timeout-ms",
                        "2000",
                    ]);
                }
                start_example_with(bin, &dir, "axum-notes listening on ", &flags)
            })
            .collect();
        let bases = servers.iter().map(|s| s.addr.clone()).collect();
        Some(Self {
            servers,
            bases,
            db,
            pepper,
            dir,
            prefix,
            redis,
            _turn: turn,
        })
    }

    /// The Redis keys under this deployment's prefix, and the connection.
    pub async fn redis_keys(&self) -> (Vec<String>, redis::aio::MultiplexedConnection) {
        let url = self.redis.as_deref().expect("a deployment with Redis");
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys = redis::cmd("KEYS")
            .arg(format!("{{{}}}:*", self.prefix))
            .query_async(&mut connection)
            .await
            .unwrap();
        (keys, connection)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let args = [&["--pepper-file", self.pepper.as_str()][..], args].concat();
        cli(env!("CARGO_BIN_EXE_axum-notes"), self.db.url(), &args)
            .trim()
            .to_owned()
    }

    /// [`Deployment::cli`] that borrows nothing of the deployment.
    pub fn clone_cli(&self) -> impl Fn(&[&str]) -> String + use<> {
        let (url, pepper) = (self.db.url().to_owned(), self.pepper.clone());
        move |args| {
            let args = [&["--pepper-file", pepper.as_str()][..], args].concat();
            cli(env!("CARGO_BIN_EXE_axum-notes"), &url, &args)
                .trim()
                .to_owned()
        }
    }

    /// The id of `token`, as `tokengate inspect` shows it.
    pub fn token_id(&self, token: &str) -> String {
        token_id_by(&|args| self.cli(args), token)
    }

    pub fn issue(&self, name: &str, burst: u32) -> String {
        let global = ["--pepper-file", self.pepper.as_str()];
        issue_limited(
            env!("CARGO_BIN_EXE_axum-notes"),
            self.db.url(),
            &global,
            name,
            burst,
        )
    }

    pub async fn postgres(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(self.db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Stops the servers and removes the Redis keys, the folder and (on
    /// drop) the database.
    pub async fn stop(mut self) {
        self.servers.clear();
        if let Some(url) = &self.redis {
            tokengate_tests::remove_redis_keys(url, &self.prefix).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
