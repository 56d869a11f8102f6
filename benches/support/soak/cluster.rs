//! The instances, the database and Redis the soak runs on, and the
//! commands that fail them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Instance {
    pub(crate) child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) admin: u16,
    pub(crate) audit: PathBuf,
    pub(crate) killed: bool,
}

pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) cli: PathBuf,
    pub(crate) db_url: String,
    pub(crate) pepper: String,
    pub(crate) redis: String,
    pub(crate) prefix: String,
    pub(crate) instances: Vec<Instance>,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.cli)
            .args(["--db", &self.db_url, "--pepper-file", &self.pepper])
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
        self.cli(&[&base[..], flags].concat())
    }

    /// Starts (or starts again) instance `i` on its port.
    pub(crate) fn start(&mut self, i: usize) {
        let instance = &self.instances[i];
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", instance.admin)])
            .args(["--db", &self.db_url, "--pepper-file", &self.pepper])
            .args(["--redis", &self.redis, "--redis-prefix", &self.prefix])
            .args(["--audit-log", instance.audit.to_str().unwrap()])
            .args(["--admin", "--pre-auth-rate", "1000000"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = instance.port;
        self.instances[i].child = Some(child);
        wait_for(port);
    }

    pub(crate) fn signal(&mut self, i: usize, signal: &str) {
        let child = self.instances[i].child.as_mut().unwrap();
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        self.instances[i].child = None;
    }

    pub(crate) fn rss_kib(&self, i: usize) -> u64 {
        let pid = self.instances[i].child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn fds(&self, i: usize) -> usize {
        let pid = self.instances[i].child.as_ref().map_or(0, Child::id);
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
    }
}

pub(crate) fn wait_for(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
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
