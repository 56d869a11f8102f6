//! A database of a test's own on the test PostgreSQL server.
//!
//! The server is `TOKENGATE_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without one the tests that
//! need it skip with one printed line, unless `TOKENGATE_REQUIRE_SERVICES=1`
//! (CI) makes that a failure.

use std::time::Duration;

use tokio_postgres::NoTls;

/// The test server's URL.
pub fn server_url() -> String {
    std::env::var("TOKENGATE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let path = url[authority..].find('/').map(|i| authority + i);
    let query = url.find('?');
    match (path, query) {
        (Some(path), Some(query)) if path < query => {
            format!("{}/{name}{}", &url[..path], &url[query..])
        }
        (Some(path), None) => format!("{}/{name}", &url[..path]),
        (_, Some(query)) => format!("{}/{name}{}", &url[..query], &url[query..]),
        (None, None) => format!("{url}/{name}"),
    }
}

/// A new, empty database, dropped (with every connection to it) when this
/// is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a database named `tokengate_test_<random>`; `None` (after one
    /// printed line) when the server does not answer.
    ///
    /// # Panics
    ///
    /// When the server does not answer and `TOKENGATE_REQUIRE_SERVICES=1`,
    /// or when it answers but refuses to create a database.
    #[allow(clippy::print_stdout, clippy::panic, reason = "a test helper reports")]
    pub async fn create() -> Option<Self> {
        let server = server_url();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&server, NoTls),
        )
        .await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            _ if std::env::var("TOKENGATE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
                panic!(
                    "PostgreSQL is required (TOKENGATE_REQUIRE_SERVICES=1) but {server} does not answer"
                )
            }
            _ => {
                println!("skipped: no PostgreSQL at {server} (set TOKENGATE_POSTGRES_URL)");
                return None;
            }
        };
        tokio::spawn(connection);
        let name = format!("tokengate_test_{:016x}", rand::random::<u64>());
        if let Err(error) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            panic!("cannot create test database {name} on {server}: {error}");
        }
        Some(Self {
            url: with_database(&server, &name),
            name,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's `host:port`, for a proxy in front of it.
    ///
    /// # Panics
    ///
    /// If the URL names a Unix socket, not a TCP server.
    #[allow(
        clippy::panic,
        reason = "a test helper: such a server cannot be proxied"
    )]
    pub fn target(&self) -> String {
        let config: tokio_postgres::Config = match self.url.parse() {
            Ok(config) => config,
            Err(error) => panic!("the test database URL does not parse: {error}"),
        };
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => panic!("a TCP server is needed"),
        };
        format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        )
    }

    /// The database's URL through `proxy` (a `host:port` standing in for
    /// [`TestDatabase::target`]).
    ///
    /// # Panics
    ///
    /// If the URL does not name the target (a server given without a port).
    #[allow(clippy::panic, reason = "a test helper")]
    pub fn url_via(&self, proxy: &str) -> String {
        let target = self.target();
        let url = self
            .url
            .replacen(&target, proxy, 1)
            .replacen("localhost:5432", proxy, 1);
        if !url.contains(proxy) {
            panic!("cannot route {} through {proxy}", self.url);
        }
        url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&server_url(), NoTls).await.ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            tracing::warn!(database = %self.name, "test database not dropped");
        }
    }
}
