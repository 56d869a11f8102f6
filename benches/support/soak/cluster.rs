//! The instances, the store and Redis the soak runs on, and the commands
//! that drive and fail them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which token store the instances share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// One PostgreSQL database, reached through a proxy that can slow it.
    Postgres,
    /// One embedded SQLite file.
    Sqlite,
}

/// The `tokengate` CLI on the soak's database.
#[derive(Debug, Clone)]
pub(crate) struct Cli {
    pub(crate) bin: PathBuf,
    /// `--db ...` and, for PostgreSQL, `--pepper-file ...`.
    pub(crate) global: Vec<String>,
}

impl Cli {
    /// Runs `tokengate ARGS`: its stdout, or why it failed.
    pub(crate) fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(&self.global)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "tokengate {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The id of `token` (`inspect`).
    pub(crate) fn id_of(&self, token: &str) -> Option<String> {
        self.run(&["inspect", token]).ok().and_then(|out| {
            out.lines()
                .find_map(|l| l.strip_prefix("id:").map(|s| s.trim().to_owned()))
        })
    }
}

pub(crate) struct Instance {
    pub(crate) child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) admin: u16,
    pub(crate) audit: PathBuf,
    /// `--audit-overflow` and `--audit-capacity`.
    pub(crate) audit_flags: Vec<&'static str>,
    pub(crate) killed: bool,
}

pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) cli: Cli,
    /// What the instances are given for the store (through the proxy for
    /// PostgreSQL).
    pub(crate) server_db: Vec<String>,
    pub(crate) redis: String,
    pub(crate) prefix: String,
    pub(crate) instances: Vec<Instance>,
}

/// `n` distinct ports, each free when chosen, below the kernel's range of
/// ephemeral ports: an instance restarts on its port, so neither a client
/// connection (the load's, or `wait_for`'s) nor another instance may have
/// taken it meanwhile. `bind("127.0.0.1:0")` would draw from that range,
/// and two draws released in between can even answer the same port.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = u32::from(ephemeral_low - low);
    // A start of its own per process, so two soaks rarely probe alike.
    let start = std::process::id() % span;
    let mut held = Vec::with_capacity(n);
    for step in 0..span {
        if held.len() == n {
            break;
        }
        let port = low + u16::try_from((start + step) % span).expect("below the range");
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    assert_eq!(
        held.len(),
        n,
        "fewer than {n} free ports below {ephemeral_low}"
    );
    held.iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

impl Cluster {
    /// Issues a token for the notes audience; the token.
    pub(crate) fn issue(&self, name: &str, flags: &[&str]) -> String {
        let base = [
            "issue",
            "--name",
            name,
            "--subject",
            name,
            "--audience",
            "notes",
        ];
        self.cli.run(&[&base[..], flags].concat()).unwrap()
    }

    /// Starts (or starts again) instance `i` on its port.
    pub(crate) fn start(&mut self, i: usize) {
        let instance = &self.instances[i];
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", instance.admin)])
            .args(&self.server_db)
            .args(["--redis", &self.redis, "--redis-prefix", &self.prefix])
            .args(["--audit-log", instance.audit.to_str().unwrap()])
            .args(&instance.audit_flags)
            .args(["--admin", "--pre-auth-rate", "1000000"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = instance.port;
        self.instances[i].child = Some(child);
        self.wait_until_listening(i, port);
    }

    /// Waits until instance `i` listens on `port`; panics, saying so, when
    /// it exits first (a port taken, a bad flag) rather than let another
    /// process's answers count as its own.
    fn wait_until_listening(&mut self, i: usize, port: u16) {
        let start = Instant::now();
        loop {
            let child = self.instances[i].child.as_mut().expect("just started");
            if let Ok(Some(status)) = child.try_wait() {
                self.instances[i].child = None;
                panic!("instance {i} exited while starting on port {port}: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance {i}: nothing listens on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&mut self, i: usize, signal: &str) {
        let Some(child) = self.instances[i].child.as_mut() else {
            return;
        };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        self.instances[i].child = None;
    }

    pub(crate) fn rss_kib(&self, i: usize) -> u64 {
        self.status_field(i, "VmRSS:")
    }

    pub(crate) fn threads(&self, i: usize) -> u64 {
        self.status_field(i, "Threads:")
    }

    fn status_field(&self, i: usize, field: &str) -> u64 {
        status_field(self.instances[i].child.as_ref().map_or(0, Child::id), field)
    }

    pub(crate) fn fds(&self, i: usize) -> usize {
        let pid = self.instances[i].child.as_ref().map_or(0, Child::id);
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
    }

    /// The sum of the series of `name` whose labels contain `label` in
    /// instance `i`'s `/metrics` (0 when none).
    pub(crate) fn metric(&self, i: usize, name: &str, label: &str) -> f64 {
        let text = crate::load::http_get(self.instances[i].admin, "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Cluster {
    /// An instance still running (a run that panicked) is killed with it.
    fn drop(&mut self) {
        for instance in &mut self.instances {
            if let Some(mut child) = instance.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The RSS of process `pid` (KiB; 0 when it is gone).
pub(crate) fn rss_of(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `tokengate audit verify FILE`: its exit status and first line.
pub(crate) fn verify_audit(cli: &Cli, file: &Path) -> (Option<i32>, String) {
    let out = Command::new(&cli.bin)
        .args(["audit", "verify", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        text.lines().next().unwrap_or_default().to_owned(),
    )
}

pub(crate) fn wait_for(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn sh(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", command])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn redis_cli(args: &str) -> bool {
    sh(&format!("redis-cli -h 127.0.0.1 -p 6379 {args}"))
}

/// Small filesystems of the soak's own (tmpfs), unmounted when dropped.
#[derive(Default)]
pub(crate) struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Mounts a 1 GiB tmpfs on `dir`; false where mounting is not allowed
    /// (not root).
    pub(crate) fn mount(&mut self, dir: &Path) -> bool {
        std::fs::create_dir_all(dir).unwrap();
        let done = sh(&format!(
            "mount -t tmpfs -o size=1g,mode=0700 tmpfs '{}'",
            dir.display()
        ));
        if done {
            self.0.push(dir.to_owned());
        }
        done
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in &self.0 {
            sh(&format!("umount -l '{}'", dir.display()));
        }
    }
}

/// Fills the filesystem of `dir` to the last byte.
pub(crate) fn fill(dir: &Path) {
    let d = dir.display();
    sh(&format!(
        "fallocate -l $(df --output=avail -B1 '{d}' | tail -1) '{d}/filler'; \
         dd if=/dev/zero of='{d}/filler-rest' bs=4096 2>/dev/null; true"
    ));
}

/// Frees what [`fill`] took.
pub(crate) fn free(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("filler"));
    let _ = std::fs::remove_file(dir.join("filler-rest"));
}
