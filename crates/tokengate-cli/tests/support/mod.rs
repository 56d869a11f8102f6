//! The `tokengate` binary run over a temporary database, shared by the
//! CLI's test files.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// `issue` with the fewest flags a token needs.
pub(crate) const ISSUE: &[&str] = &[
    "issue",
    "--name",
    "ci",
    "--subject",
    "team-a",
    "--scope",
    "notes:read",
    "--audience",
    "notes",
];

/// `issue` with every flag a token needs but a scope.
pub(crate) const ISSUE_UNSCOPED: &[&str] = &[
    "issue",
    "--name",
    "x",
    "--subject",
    "y",
    "--audience",
    "notes",
];

/// Standard output and error together.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temporary folder for one test's database, removed on drop.
pub(crate) struct Db {
    pub(crate) dir: PathBuf,
}

impl Db {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tokengate-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join("tokens.db")
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--db")
            .arg(self.path())
            .args(args)
            .env_remove("TOKENGATE_PEPPER")
            .env_remove("TOKENGATE_AUDIT_KEY")
            .output()
            .unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn issue(&self, extra: &[&str]) -> Value {
        let mut args = ISSUE.to_vec();
        args.extend_from_slice(extra);
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Issues with each case's flags, and checks each is refused with
    /// an error naming its value.
    pub(crate) fn issue_refused(&self, cases: &[(&[&str], &str)]) {
        for (args, named) in cases {
            let out = self.run(&[ISSUE, args].concat());
            assert!(!out.status.success(), "{args:?}");
            assert!(text(&out).contains(named), "{args:?}: {}", text(&out));
        }
    }

    /// The names of the files in the folder, sorted.
    pub(crate) fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn count(&self) -> usize {
        self.ok(&["list", "--json"]).lines().count()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
