//! A database, `tokengate serve`, an echoing upstream, an in-process Gate
//! on the same policy file, and nginx and Caddy in front of the sidecar.
#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Request;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokengate::Deployment;
use tokengate::Principal;
use tokengate::config::GateConfig;
use tokengate_tests::process::{Started, start_process, temp_dir};

/// The shipped policy, with one client address denied (127.0.0.2, which
/// a test connects from) and the audit file left to the flags.
pub fn policy() -> String {
    let shipped = include_str!("../../../../examples/sidecar/notes.toml");
    let policy = shipped.replace("deny = []", "deny = [\"127.0.0.2/32\"]");
    assert_ne!(
        policy, shipped,
        "the shipped policy has a deny list to fill"
    );
    policy
}

/// The shipped proxy configuration `file`, pointed at the test's ports.
fn shipped(file: &str, proxy: SocketAddr, serve: SocketAddr, upstream: SocketAddr) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sidecar");
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    for default in ["127.0.0.1:8080", "127.0.0.1:8181", "127.0.0.1:3000"] {
        assert!(text.contains(default), "{file} names {default}");
    }
    text.replace("127.0.0.1:8080", &proxy.to_string())
        .replace("127.0.0.1:8181", &serve.to_string())
        .replace("127.0.0.1:3000", &upstream.to_string())
}

/// What the upstream (or the in-process service) was told, and what the
/// client got.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The header's values joined by ", ", or "".
    pub fn header(&self, name: &str) -> String {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect();
        values.join(", ")
    }

    /// How many times the header is sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// The problem's type.
    pub fn problem(&self) -> String {
        self.body["type"].as_str().unwrap_or("").to_owned()
    }

    /// The problem body, less what moves with the clock.
    pub fn problem_body(&self) -> Value {
        let mut body = self.body.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("retry_after");
        }
        body
    }

    /// Who the service behind the check was told the caller is: `name`
    /// of its `identity` (`subject`, `scopes`), "" when none.
    pub fn upstream_header(&self, name: &str) -> String {
        let key = name.trim_start_matches("x-tokengate-");
        self.body["identity"][key].as_str().unwrap_or("").to_owned()
    }
}

/// One way in: the in-process Gate, or a proxy in front of the sidecar.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub base: String,
    process: Option<Child>,
}

impl Drop for Target {
    /// Stops the proxy as its own tools would (SIGTERM: nginx's master
    /// stops its workers first), then kills what is left: a proxy's
    /// workers outliving a failed test keep the test's output pipe open.
    fn drop(&mut self) {
        if let Some(child) = &mut self.process {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Target {
    /// A target that runs elsewhere (no process of its own).
    pub fn unmanaged(name: &str, base: String) -> Self {
        Self {
            name: name.to_owned(),
            base,
            process: None,
        }
    }

    pub fn get(&self, path: &str) -> Call {
        self.request("GET", path)
    }

    pub fn request(&self, method: &str, path: &str) -> Call {
        Call {
            url: format!("{}{path}", self.base),
            method: method.to_owned(),
            headers: Vec::new(),
            from: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body: "",
        }
    }
}

/// A request to send.
pub struct Call {
    url: String,
    method: String,
    headers: Vec<(String, String)>,
    from: IpAddr,
    body: &'static str,
}

impl Call {
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends `body`.
    pub fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    /// Connects from `ip` (a loopback address).
    pub fn from(mut self, ip: IpAddr) -> Self {
        self.from = ip;
        self
    }

    pub async fn send(self) -> Answer {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(self.from));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, Full<Bytes>>(connector);
        let mut request = http::Request::builder()
            .method(self.method.as_str())
            .uri(&self.url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = client
            .request(
                request
                    .body(Full::new(Bytes::from_static(self.body.as_bytes())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// The upstream: echoes the identity headers it received.
async fn upstream(request: Request) -> Json<Value> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    Json(json!({
        "identity": {"subject": header("x-tokengate-subject"), "scopes": header("x-tokengate-scopes")},
    }))
}

/// The in-process service: echoes the principal the Gate verified.
async fn in_process(request: Request) -> Json<Value> {
    let principal = request.extensions().get::<Principal>();
    let subject = principal
        .map(|p| p.subject().to_owned())
        .unwrap_or_default();
    let scopes = principal
        .map(|p| {
            p.scopes()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Json(json!({ "identity": {"subject": subject, "scopes": scopes} }))
}

/// Everything one test runs on.
pub struct Fixture {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub policy: PathBuf,
    pub serve: Started,
    pub serve_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    upstream: SocketAddr,
    in_process: SocketAddr,
}

async fn listen(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Starts `tokengate serve` on `db` under `policy` (in `dir`).
pub fn serve(
    dir: &Path,
    db: &Path,
    policy: &Path,
    flags: &[&str],
) -> (Started, SocketAddr, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command
        .current_dir(dir)
        .arg("--db")
        .arg(db)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(policy)
        .args(["--audit-log", "serve-audit.jsonl"])
        .args(flags);
    let started = start_process(command, "tokengate serve listening on http://");
    let http: SocketAddr = started
        .addr
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let grpc: SocketAddr = started
        .output
        .iter()
        .find_map(|l| l.strip_prefix("tokengate serve: ext_authz (gRPC) on "))
        .unwrap()
        .parse()
        .unwrap();
    (started, http, grpc)
}

impl Fixture {
    pub async fn new(name: &str) -> Self {
        let dir = temp_dir(&format!("tokengate-sidecar-{name}"));
        let db = dir.join("tokens.db");
        let policy = dir.join("notes.toml");
        std::fs::write(&policy, policy_text()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--db")
            .arg(&db)
            .arg("init")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (serve, serve_addr, grpc_addr) = serve(&dir, &db, &policy, &[]);
        let upstream = listen(axum::Router::new().fallback(upstream)).await;

        // The Rust service on the same file.
        let config = GateConfig::load(&policy).unwrap();
        let deployment = Deployment::builder(db.to_str().unwrap().parse().unwrap())
            .config(&config)
            .audit_log(dir.join("in-process-audit.jsonl"))
            .open()
            .await
            .unwrap();
        let gate = deployment.gate_from_config(&config).await.unwrap();
        let in_process = listen(axum::Router::new().fallback(in_process).layer(gate)).await;
        std::mem::forget(deployment);
        Self {
            dir,
            db,
            policy,
            serve,
            serve_addr,
            grpc_addr,
            upstream,
            in_process,
        }
    }

    /// The CLI on this database; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tokengate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A token for `subject`, named after the target, with `flags`.
    pub fn issue(&self, target: &str, subject: &str, flags: &[&str]) -> String {
        let name = format!("{target}-{subject}");
        let args = [
            &[
                "issue",
                "--name",
                &name,
                "--subject",
                subject,
                "--audience",
                "notes",
            ][..],
            flags,
        ]
        .concat();
        self.cli(&args)
    }

    pub fn token_id(&self, token: &str) -> String {
        self.cli(&["inspect", token])
            .lines()
            .find_map(|l| l.strip_prefix("id:"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn serve_audit(&self) -> PathBuf {
        self.dir.join("serve-audit.jsonl")
    }

    pub fn serve_audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.serve_audit())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The sidecar's audit records once there are `count` (flushed within a second).
    pub async fn wait_for_serve_audit(&self, count: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.serve_audit_lines();
            if lines.len() >= count || start.elapsed() > Duration::from_secs(5) {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The in-process Gate, and nginx and Caddy in front of the sidecar
    /// where they are installed.
    pub async fn targets(&self) -> Vec<Target> {
        let mut targets = vec![Target {
            name: "in-process".to_owned(),
            base: format!("http://{}", self.in_process),
            process: None,
        }];
        if let Some(nginx) = proxy_binary("nginx") {
            targets.push(self.nginx(&nginx).await);
        }
        if let Some(caddy) = proxy_binary("caddy") {
            targets.push(self.caddy(&caddy).await);
        }
        targets
    }

    async fn nginx(&self, binary: &Path) -> Target {
        let port = free_port();
        let prefix = self.dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        std::fs::write(
            prefix.join("sidecar.conf"),
            shipped("nginx.conf", port, self.serve_addr, self.upstream),
        )
        .unwrap();
        std::fs::write(
            prefix.join("nginx.conf"),
            "daemon off;\nuser root;\nworker_processes 1;\npid nginx.pid;\nerror_log stderr warn;\n\
             events { worker_connections 256; }\n\
             http {\n  access_log off;\n  client_body_temp_path tmp/body;\n  proxy_temp_path tmp/proxy;\n  \
             fastcgi_temp_path tmp/fastcgi;\n  uwsgi_temp_path tmp/uwsgi;\n  scgi_temp_path tmp/scgi;\n  include sidecar.conf;\n}\n",
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&prefix)
            .args(["-c", "nginx.conf"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(port).await;
        Target {
            name: "nginx".to_owned(),
            base: format!("http://{port}"),
            process: Some(child),
        }
    }

    async fn caddy(&self, binary: &Path) -> Target {
        let port = free_port();
        let home = self.dir.join("caddy");
        std::fs::create_dir_all(&home).unwrap();
        // Its admin endpoint off: tests run side by side.
        let config = format!(
            "{{\n\tadmin off\n}}\n\n{}",
            shipped("Caddyfile", port, self.serve_addr, self.upstream)
        );
        std::fs::write(home.join("Caddyfile"), config).unwrap();
        let child = Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(home.join("Caddyfile"))
            .env("XDG_DATA_HOME", &home)
            .env("XDG_CONFIG_HOME", &home)
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(port).await;
        Target {
            name: "caddy".to_owned(),
            base: format!("http://{port}"),
            process: Some(child),
        }
    }
}

fn policy_text() -> String {
    policy()
}

/// `name` from Debian's package, or `None` (with one printed line) when
/// it is missing and the run does not require it.
pub fn proxy_binary(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Some(path);
        }
    }
    assert!(
        std::env::var("TOKENGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{name} is not installed (apt-get install {name}) and TOKENGATE_REQUIRE_SERVICES=1"
    );
    println!("skipped: {name} is not installed (apt-get install {name})");
    None
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn wait_for(addr: SocketAddr) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
