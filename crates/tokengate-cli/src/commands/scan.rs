//! `tokengate scan`: leaked tokens in files, found by their checksum,
//! shown masked, looked up and revoked on request.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::json;
use tokengate::audit::{AuditKey, AuditRecord, AuditSink, JsonLinesSink, LeakReport};
use tokengate::core::{Token, TokenPrefix, TokenStatus, escape_for_display, find_tokens};
use tokengate::deployment::AnyStore;
use tokengate::store::LeakAction;
use tokengate::{Lifecycle, TokenRecord};

use super::{Result, open};
use crate::args::{Cli, Scan};

/// Files larger than this are skipped (and said so).
const MAX_FILE: u64 = 256 * 1024 * 1024;
/// A file with a NUL byte in its first this many bytes is binary, as git
/// decides.
const BINARY_PROBE: usize = 8000;

/// One place a token was found.
struct Finding {
    path: String,
    line: usize,
    column: usize,
    token: Token,
}

impl Finding {
    fn location(&self) -> String {
        format!("{}:{}:{}", self.path, self.line, self.column)
    }
}

/// What the store says of a token.
#[derive(Clone)]
struct Known {
    record: Option<TokenRecord>,
    revoked_now: bool,
}

impl Known {
    /// Whether the token is live now.
    fn is_active(&self) -> bool {
        !self.revoked_now
            && self
                .record
                .as_ref()
                .is_some_and(|r| r.status(SystemTime::now()) == TokenStatus::Active)
    }

    fn status(&self) -> &'static str {
        match &self.record {
            None => "unknown",
            Some(_) if self.revoked_now => "revoked",
            Some(record) => status_name(record.status(SystemTime::now())),
        }
    }
}

fn status_name(status: TokenStatus) -> &'static str {
    match status {
        TokenStatus::Active => "active",
        TokenStatus::Expired => "expired",
        TokenStatus::Revoked => "revoked",
        TokenStatus::Disabled => "disabled",
        _ => "refused",
    }
}

/// Runs the scan; every error is exit status 2.
pub(crate) async fn scan(cli: &Cli, args: &Scan) -> ExitCode {
    match run(cli, args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", escape_for_display(&error));
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli, args: &Scan) -> Result<ExitCode> {
    let prefixes = args
        .prefixes
        .iter()
        .map(|p| TokenPrefix::new(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>>>()?;
    let from_stdin = args.paths.is_empty();
    if args.revoke && !args.yes && (from_stdin || !std::io::stdin().is_terminal()) {
        return Err(
            "--revoke asks on the terminal before it revokes: add --yes where there is \
                    none (or when the text comes from standard input)"
                .to_owned(),
        );
    }
    let mut findings = Vec::new();
    let mut unreadable = 0usize;
    if from_stdin {
        let mut text = Vec::new();
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        collect("stdin", &text, &prefixes, &mut findings);
    } else {
        for root in &args.paths {
            unreadable += walk(root, args.no_ignore, &prefixes, &mut findings);
        }
    }

    // Each distinct token is looked up (and revoked) once.
    let lookup = args.revoke || cli.db_given;
    let mut known: HashMap<String, Known> = HashMap::new();
    if lookup && !findings.is_empty() {
        let lifecycle = open(cli).await?;
        for finding in &findings {
            let secret = finding.token.expose_secret();
            if known.contains_key(secret) {
                continue;
            }
            let record = lifecycle
                .find_token(secret)
                .await
                .map_err(|e| e.to_string())?;
            known.insert(
                secret.to_owned(),
                Known {
                    record,
                    revoked_now: false,
                },
            );
        }
        if args.revoke {
            revoke(&lifecycle, args, &findings, &mut known).await?;
        }
    }

    let mut live = false;
    let mut out = std::io::stdout().lock();
    for finding in &findings {
        let state = known.get(finding.token.expose_secret());
        // Without the store, every token found may be live; a token
        // revoked now was live when found.
        live |= state.is_none_or(|k| k.revoked_now || k.is_active());
        let line = if args.json {
            json!({
                "path": finding.path,
                "line": finding.line,
                "column": finding.column,
                "token": finding.token.redacted(),
                "token_id": state.and_then(|k| k.record.as_ref()).map(|r| r.id.as_str()),
                "status": state.map(Known::status),
                "revoked_now": state.is_some_and(|k| k.revoked_now),
            })
            .to_string()
        } else {
            let mut line = format!(
                "{}: {}",
                escape_for_display(&finding.location()),
                finding.token.redacted()
            );
            if let Some(state) = state {
                match &state.record {
                    Some(record) => line.push_str(&format!(" {} {}", record.id, state.status())),
                    None => line.push_str(" unknown"),
                }
                if state.revoked_now {
                    line.push_str(" (revoked now)");
                }
            }
            line
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    if !args.json {
        let tokens = findings
            .iter()
            .map(|f| f.token.expose_secret())
            .collect::<std::collections::HashSet<_>>()
            .len();
        eprintln!(
            "{} finding(s) of {tokens} token(s){}",
            findings.len(),
            if unreadable > 0 {
                format!("; {unreadable} path(s) could not be read")
            } else {
                String::new()
            }
        );
    }
    Ok(if unreadable > 0 {
        ExitCode::from(2)
    } else if live {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Revokes every live token found, after asking (unless --yes), and
/// writes its audit record when --audit-log names a file.
async fn revoke(
    lifecycle: &Lifecycle<AnyStore>,
    args: &Scan,
    findings: &[Finding],
    known: &mut HashMap<String, Known>,
) -> Result<()> {
    // The first place each live token was found.
    let mut live: Vec<&Finding> = Vec::new();
    for finding in findings {
        let secret = finding.token.expose_secret();
        let is_live = known.get(secret).is_some_and(Known::is_active);
        if is_live && !live.iter().any(|f| f.token.expose_secret() == secret) {
            live.push(finding);
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    if !args.yes && !confirm(live.len())? {
        eprintln!("nothing revoked");
        return Ok(());
    }
    let audit = match &args.audit_log {
        Some(path) => Some(open_audit(path)?),
        None => None,
    };
    for finding in live {
        let secret = finding.token.expose_secret();
        let handled = lifecycle
            .report_leak(secret, LeakAction::Revoke, "scan", &finding.location())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(audit) = &audit {
            let mut report = LeakReport::new("scan", handled.outcome.as_str(), SystemTime::now());
            report.source = Some(finding.location());
            report.token_id = handled.record.as_ref().map(|r| r.id.as_str().to_owned());
            report.subject = handled.record.as_ref().map(|r| r.subject.clone());
            audit.record(AuditRecord::leak_reported(report));
        }
        known.insert(
            secret.to_owned(),
            Known {
                revoked_now: handled.outcome == tokengate::store::LeakOutcome::Revoked,
                record: handled.record,
            },
        );
    }
    if let Some(audit) = audit {
        audit.shutdown();
        let stats = audit.stats();
        if stats.failed > 0 || stats.dropped > 0 {
            return Err("some audit records could not be written".to_owned());
        }
    }
    Ok(())
}

fn open_audit(path: &Path) -> Result<JsonLinesSink> {
    let key = AuditKey::load_or_create(path).map_err(|e| e.to_string())?;
    JsonLinesSink::builder()
        .key(key)
        .open(path)
        .map_err(|e| e.to_string())
}

fn confirm(count: usize) -> Result<bool> {
    eprint!("revoke {count} live token(s)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Scans `root` (a file, or a directory walked as git sees it); returns
/// how many paths could not be read (each said on stderr).
fn walk(root: &Path, no_ignore: bool, prefixes: &[TokenPrefix], found: &mut Vec<Finding>) -> usize {
    let mut unreadable = 0;
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .require_git(false)
        .git_ignore(!no_ignore)
        .git_global(!no_ignore)
        .git_exclude(!no_ignore)
        .ignore(!no_ignore)
        .parents(!no_ignore)
        .filter_entry(|entry| entry.file_name() != ".git")
        .sort_by_file_path(Path::cmp)
        .build();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                eprintln!("cannot read: {}", escape_for_display(&error.to_string()));
                unreadable += 1;
                continue;
            }
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        match read(path) {
            Ok(Some(bytes)) => collect(&shown(path), &bytes, prefixes, found),
            Ok(None) => {}
            Err(error) => {
                eprintln!("cannot read {}: {error}", escape_for_display(&shown(path)));
                unreadable += 1;
            }
        }
    }
    unreadable
}

fn shown(path: &Path) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    path.to_string_lossy().into_owned()
}

/// The file's bytes, or `None` for a binary or oversized file.
fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_FILE {
        eprintln!(
            "skipped {} ({size} bytes, over {MAX_FILE})",
            escape_for_display(&shown(path))
        );
        return Ok(None);
    }
    let bytes = std::fs::read(path)?;
    if bytes[..bytes.len().min(BINARY_PROBE)].contains(&0) {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// The tokens in `bytes`, with their line and column (1-based, in
/// characters).
fn collect(path: &str, bytes: &[u8], prefixes: &[TokenPrefix], found: &mut Vec<Finding>) {
    let text = String::from_utf8_lossy(bytes);
    let mut line = 1;
    let mut line_start = 0;
    let mut counted = 0;
    for (at, token) in find_tokens(&text) {
        if !prefixes.is_empty() && !prefixes.iter().any(|p| p.as_str() == token.prefix()) {
            continue;
        }
        for (i, b) in text.as_bytes()[counted..at].iter().enumerate() {
            if *b == b'\n' {
                line += 1;
                line_start = counted + i + 1;
            }
        }
        counted = at;
        found.push(Finding {
            path: path.to_owned(),
            line,
            column: text[line_start..at].chars().count() + 1,
            token,
        });
    }
}
