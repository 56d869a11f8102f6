//! Test support for tokengate's cross-crate integration tests and benches.
//!
//! This package is not published. Its `tests/` and `benches/` directories hold
//! the tests that span several crates and the criterion benches; this library
//! holds the few helpers they share.

pub mod leaks;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` once and returns its output: for benches of paths that
/// must complete without waiting (cache hits, synchronous decisions).
///
/// # Panics
///
/// If the future is not ready at once: the path under measurement waited.
#[allow(clippy::panic, reason = "a bench whose measured path waits is wrong")]
pub fn ready_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the measured path must not wait"),
    }
}

/// Sends one request through `service` and returns its response: the
/// service must be ready at once and the response future must complete
/// without waiting (see [`ready_now`]).
///
/// # Panics
///
/// If the service is not ready, the future waits, or the service fails.
#[allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a bench whose measured path waits or fails is wrong"
)]
pub fn call_now<S, R>(service: &mut S, request: R) -> S::Response
where
    S: tower::Service<R>,
    S::Error: std::fmt::Debug,
{
    let ready = ready_now(std::future::poll_fn(|cx| service.poll_ready(cx)));
    ready.expect("the service is ready");
    ready_now(service.call(request)).expect("the service answers")
}

/// Evicts the calling core's caches: [`CacheEvictor::evict`] writes one
/// word of every 64-byte line of a buffer twice the size of this machine's
/// L2 (512 KiB per core), which leaves what a request had in the core's
/// caches in the shared L3 at best. For benches of requests as a server
/// runs them, after the kernel and other connections have had the core.
#[derive(Debug)]
pub struct CacheEvictor(Vec<u64>);

impl Default for CacheEvictor {
    fn default() -> Self {
        Self(vec![0; (2 << 20) / 8])
    }
}

impl CacheEvictor {
    /// Writes over the buffer. Never inlined, so a profiler can leave it
    /// out by name (`benches/instructions.sh` toggles `*evict*`).
    #[inline(never)]
    pub fn evict(&mut self) {
        for (i, word) in self.0.iter_mut().enumerate().step_by(8) {
            *word = word.wrapping_add(i as u64);
        }
        std::hint::black_box(&self.0);
    }
}

/// Running the example apps as processes, for their end-to-end tests.
pub mod process {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex, PoisonError};

    /// A running example server, killed and reaped when dropped.
    #[derive(Debug)]
    pub struct Started {
        /// The process.
        pub child: Child,
        /// The address it listens on, as it printed it.
        pub addr: String,
        /// The demo token it printed.
        pub token: String,
        /// The demo token's id.
        pub token_id: String,
        /// Every line it printed before the listening line.
        pub output: Vec<String>,
        /// Every line it wrote to stderr so far (also passed on to the
        /// test's own stderr).
        pub stderr: Arc<Mutex<Vec<String>>>,
    }

    impl Started {
        /// The lines written to stderr so far.
        pub fn stderr_lines(&self) -> Vec<String> {
            self.stderr
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Stops the server as an operator at a terminal would (SIGINT),
        /// waits for it, and returns whether it exited cleanly.
        pub fn interrupt(&mut self) -> bool {
            self.signal("-INT")
        }

        /// Stops the server as docker, systemd and Kubernetes do (SIGTERM),
        /// waits for it, and returns whether it exited cleanly.
        pub fn terminate(&mut self) -> bool {
            self.signal("-TERM")
        }

        /// Sends SIGHUP (reload) and returns whether it was delivered; the
        /// server keeps running.
        pub fn hangup(&self) -> bool {
            Command::new("kill")
                .args(["-HUP", &self.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success())
        }

        fn signal(&mut self, signal: &str) -> bool {
            let signalled = Command::new("kill")
                .args([signal, &self.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            signalled && self.child.wait().is_ok_and(|s| s.success())
        }
    }

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts the example binary `bin` in `dir` on a free loopback port and
    /// reads its first lines: the demo token, its id, and the line
    /// `<name> listening on <addr>`.
    ///
    /// # Panics
    ///
    /// If the binary cannot start or stops before it listens.
    #[allow(
        clippy::expect_used,
        clippy::zombie_processes,
        reason = "test support; Started reaps the child"
    )]
    pub fn start_example(bin: &str, dir: &Path, listening: &str) -> Started {
        start_example_with(bin, dir, listening, &[])
    }

    /// [`start_example`] with more flags.
    ///
    /// # Panics
    ///
    /// If the binary cannot start or stops before it listens.
    #[allow(
        clippy::expect_used,
        clippy::zombie_processes,
        reason = "test support; Started reaps the child"
    )]
    pub fn start_example_with(bin: &str, dir: &Path, listening: &str, flags: &[&str]) -> Started {
        let mut command = Command::new(bin);
        command
            .current_dir(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags);
        start_process(command, listening)
    }

    /// Starts `command` (without `TOKENGATE_PEPPER` and `RUST_LOG`) and
    /// reads its standard output up to the line starting with `listening`:
    /// the rest of that line is the address. Standard error is kept and
    /// passed on.
    ///
    /// # Panics
    ///
    /// If the process cannot start or stops before it listens.
    #[allow(
        clippy::expect_used,
        clippy::zombie_processes,
        clippy::needless_pass_by_value,
        reason = "test support; Started reaps the child"
    )]
    pub fn start_process(mut command: Command, listening: &str) -> Started {
        let mut child = command
            .env_remove("TOKENGATE_PEPPER")
            // The servers' default log filter, whatever the test runner's.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let errors = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in errors.map_while(Result::ok) {
                #[allow(clippy::print_stderr, reason = "the server's stderr, passed on")]
                {
                    eprintln!("{line}");
                }
                kept.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut token, mut token_id) = (String::new(), String::new());
        let mut output = Vec::new();
        loop {
            let line = lines
                .next()
                .expect("the server stopped before listening")
                .expect("readable output");
            if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
                t.clone_into(&mut token);
            }
            if let Some(rest) = line.split(" revoke ").nth(1) {
                rest.trim().clone_into(&mut token_id);
            }
            if let Some(addr) = line.strip_prefix(listening) {
                let addr = addr.trim().to_owned();
                std::thread::spawn(move || lines.for_each(drop));
                return Started {
                    child,
                    addr,
                    token,
                    token_id,
                    output,
                    stderr,
                };
            }
            output.push(line);
        }
    }

    /// The `tokengate` CLI binary in the same target directory as `beside`
    /// (another binary of this workspace), built on demand when missing.
    ///
    /// # Panics
    ///
    /// If it is missing and cannot be built.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn tokengate_cli(beside: &str) -> PathBuf {
        let path = Path::new(beside).with_file_name("tokengate");
        if !path.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "tokengate-cli"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the tokengate CLI failed");
        }
        path
    }

    /// Runs the CLI against `db`; returns its stdout.
    ///
    /// # Panics
    ///
    /// If the CLI fails.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn cli(beside: &str, db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
        let out = Command::new(tokengate_cli(beside))
            .arg("--db")
            .arg(db.as_ref())
            .args(args)
            .env_remove("TOKENGATE_PEPPER")
            .output()
            .expect("the CLI runs");
        assert!(
            out.status.success(),
            "tokengate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Issues a token for audience `notes` through the CLI beside `beside`
    /// and returns it (the CLI prints only the token on standard output).
    ///
    /// # Panics
    ///
    /// If the CLI fails.
    pub fn cli_issue(beside: &str, db: &Path, name: &str, subject: &str, scope: &str) -> String {
        cli_issue_with(beside, db, name, subject, scope, &[])
    }

    /// [`cli_issue`] with `extra` flags (`--dpop-jkt ...`, `--uses 5`).
    ///
    /// # Panics
    ///
    /// If the CLI fails.
    pub fn cli_issue_with(
        beside: &str,
        db: &Path,
        name: &str,
        subject: &str,
        scope: &str,
        extra: &[&str],
    ) -> String {
        let args = [
            &[
                "issue",
                "--name",
                name,
                "--subject",
                subject,
                "--scope",
                scope,
                "--audience",
                "notes",
            ][..],
            extra,
        ]
        .concat();
        cli(beside, db, &args).trim().to_owned()
    }

    /// The `tokengate.reason` of each record in the audit file at `file`
    /// (`-` for an admitted request), of requests to `url_path` only when
    /// given.
    ///
    /// # Panics
    ///
    /// If the file cannot be read or holds a line that is not JSON.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn audit_reasons(file: &Path, url_path: Option<&str>) -> Vec<String> {
        std::fs::read_to_string(file)
            .expect("the audit file")
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON record"))
            .filter(|record| url_path.is_none_or(|path| record["url.path"] == path))
            .map(|record| {
                record["tokengate.reason"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect()
    }

    /// A fresh temporary directory for one test.
    ///
    /// # Panics
    ///
    /// If it cannot be created.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }

    /// Fails if any 8-character run of `secret` appears in `text`.
    ///
    /// # Panics
    ///
    /// When one does.
    pub fn assert_no_fragment(text: &str, secret: &str) {
        for window in secret.as_bytes().windows(8) {
            let window = String::from_utf8_lossy(window);
            assert!(
                !text.contains(&*window),
                "a fragment of a secret ({window}) is in the text"
            );
        }
    }
}

/// The Redis the tests share: `TOKENGATE_REDIS_URL`, by default
/// `redis://127.0.0.1:6379`. `None` (the test skips, with one printed line)
/// when nothing answers there, unless `TOKENGATE_REQUIRE_SERVICES=1`.
///
/// # Panics
///
/// When `TOKENGATE_REQUIRE_SERVICES=1` and Redis does not answer.
#[allow(clippy::print_stdout, reason = "the one line a skipped test prints")]
pub fn redis_url() -> Option<String> {
    let url =
        std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let host = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default();
    let reachable = host
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
        });
    if reachable {
        return Some(url);
    }
    assert!(
        std::env::var("TOKENGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "Redis is required (TOKENGATE_REQUIRE_SERVICES=1) but {url} does not answer"
    );
    println!("skipped: no Redis at {url} (set TOKENGATE_REDIS_URL)");
    None
}

/// Removes every key under `prefix` (a test's or bench's own hash tag,
/// `{prefix}:*`) from the Redis at `url`, and returns their names.
///
/// # Panics
///
/// When Redis does not answer: call it where the test found Redis.
#[allow(clippy::expect_used, reason = "test support")]
pub async fn remove_redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .expect("DEL");
    }
    keys
}

/// A Redis server of one test's own, on a free loopback port, for a test
/// that pauses or stops it (the machine's shared server must keep serving
/// every other test). Stopped when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    /// Starts `redis-server` (persisting nothing), or `None` with one
    /// printed line where the binary is missing (a user's machine); with
    /// `TOKENGATE_REQUIRE_SERVICES=1` a missing binary fails the test.
    ///
    /// # Panics
    ///
    /// If the server does not answer within 5 s, or the binary is missing
    /// and services are required.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = spawned else {
            assert!(
                std::env::var("TOKENGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "redis-server is required (TOKENGATE_REQUIRE_SERVICES=1) but cannot be started"
            );
            #[allow(clippy::print_stderr, reason = "the one line a skipped test prints")]
            {
                eprintln!("skipped: no redis-server on this machine");
            }
            return None;
        };
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(server)
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one command on a connection of its own (say `CLIENT PAUSE`).
    ///
    /// # Panics
    ///
    /// If the server cannot be reached or refuses the command.
    #[allow(clippy::expect_used, reason = "test support")]
    pub async fn command(&self, args: &[&str]) {
        let client = redis::Client::open(self.url.as_str()).expect("a Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("the private Redis answers");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query_async::<redis::Value>(&mut connection)
            .await
            .expect("the command succeeds");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The code of the README and of every guide in `docs/`, compiled (and,
/// where it does not serve forever, run) as doc tests, with the features
/// this package's tests enable: every block stays true to the code.
#[cfg(doctest)]
pub mod docs {
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    #[doc = include_str!("../docs/quickstart.md")]
    pub struct Quickstart;
    #[doc = include_str!("../docs/cli.md")]
    pub struct Cli;
    #[doc = include_str!("../docs/layers.md")]
    pub struct Layers;
    #[doc = include_str!("../docs/usage-limits.md")]
    pub struct UsageLimits;
    #[doc = include_str!("../docs/several-instances.md")]
    pub struct SeveralInstances;
    #[doc = include_str!("../docs/admin-api.md")]
    pub struct AdminApi;
    #[doc = include_str!("../docs/operating.md")]
    pub struct Operating;
    #[doc = include_str!("../docs/security.md")]
    pub struct Security;
    #[doc = include_str!("../docs/testing.md")]
    pub struct Testing;
    #[doc = include_str!("../docs/policy-file.md")]
    pub struct PolicyFile;
    #[doc = include_str!("../docs/any-language.md")]
    pub struct AnyLanguage;
    #[doc = include_str!("../docs/leaks.md")]
    pub struct Leaks;
    #[doc = include_str!("../docs/dpop.md")]
    pub struct Dpop;
    #[doc = include_str!("../docs/usage.md")]
    pub struct Usage;
    #[doc = include_str!("../docs/webhooks.md")]
    pub struct Webhooks;
}
