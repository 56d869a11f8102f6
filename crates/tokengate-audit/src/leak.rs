//! The record of a leaked token's report: not a request's own record, but
//! written to the same sink, in the same chain.
//!
//! A secret-scanning provider's report (or `tokengate scan --revoke`)
//! leaves one record per reported token, `tokengate.event` being
//! `leak_reported`: who reported it, where it leaked, what was done, and
//! the token's id and owner when the store knows it. Never the token.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::limits::clean_into;
use crate::record::{AuditEvent, AuditRecord, Decision};

/// The `tokengate.event` of a leak report's record.
pub const LEAK_REPORTED: &str = "leak_reported";

/// One reported token, as the application hands it to
/// [`AuditRecord::leak_reported`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakReport {
    /// When the report came in.
    pub timestamp: SystemTime,
    /// Who reported it: `github`, `gitlab`, `scan`.
    pub reporter: &'static str,
    /// Where the token leaked: the provider's URL, or `file:line:column`.
    pub source: Option<String>,
    /// What was done: `revoked`, `disabled`, `notified`, `already_dead`,
    /// `unknown`.
    pub outcome: &'static str,
    /// The token's id, when the store knows the token.
    pub token_id: Option<String>,
    /// The token's owner, when the store knows the token.
    pub subject: Option<String>,
    /// The address the report came from.
    pub client_address: Option<IpAddr>,
    /// The id of the request that carried the report.
    pub request_id: Option<String>,
}

impl LeakReport {
    /// A report by `reporter` at `timestamp` whose outcome is `outcome`;
    /// the rest is set field by field.
    pub fn new(reporter: &'static str, outcome: &'static str, timestamp: SystemTime) -> Self {
        Self {
            timestamp,
            reporter,
            source: None,
            outcome,
            token_id: None,
            subject: None,
            client_address: None,
            request_id: None,
        }
    }
}

/// What a leak record adds to an [`AuditEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakFacts {
    /// Who reported it.
    pub reporter: &'static str,
    /// Where it leaked, cleaned and cut like every text field.
    pub source: Option<String>,
    /// What was done.
    pub outcome: &'static str,
}

/// The most of a leak's source a record keeps.
const SOURCE_LIMIT: usize = 512;

impl AuditRecord {
    /// The record of one leaked token's report: `tokengate.event` is
    /// `leak_reported`, with who reported it, where it leaked, what was
    /// done, and the token's id and owner when the store knows it; never
    /// the token. It goes to the sink like a request's record, in the same
    /// chain.
    pub fn leak_reported(report: LeakReport) -> Self {
        Self::leak(Box::new(report))
    }
}

/// Writes `report` over `event`.
pub(crate) fn fill_leak(report: &LeakReport, event: &mut AuditEvent) {
    event.truncated.clear();
    event.timestamp = report.timestamp;
    event.request_id.clear();
    if let Some(id) = &report.request_id {
        clean_into(
            &mut event.request_id,
            id,
            128,
            "http.request.id",
            &mut event.truncated,
        );
    }
    event.client_address = report.client_address.map(|ip| ip.to_string());
    event.method.clear();
    event.path.clear();
    event.query = None;
    event.rpc_service = None;
    event.rpc_method = None;
    event.token_id.clone_from(&report.token_id);
    event.subject = None;
    if let Some(subject) = &report.subject {
        let slot = event.subject.get_or_insert_with(String::new);
        clean_into(slot, subject, 256, "enduser.id", &mut event.truncated);
    }
    event.decision = Decision::Deny;
    event.reason = Some(LEAK_REPORTED.to_owned());
    event.rate_fallback = None;
    event.status = 0;
    event.grpc_status = None;
    event.latency = std::time::Duration::ZERO;
    event.user_agent = None;
    let source = report.source.as_deref().map(|source| {
        let mut out = String::new();
        clean_into(
            &mut out,
            source,
            SOURCE_LIMIT,
            "tokengate.leak.source",
            &mut event.truncated,
        );
        out
    });
    event.leak = Some(LeakFacts {
        reporter: report.reporter,
        source,
        outcome: report.outcome,
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::{AuditKey, AuditSink, JsonLinesSink, hash_chain};

    fn report() -> LeakReport {
        let mut report = LeakReport::new(
            "github",
            "revoked",
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        );
        report.source = Some("https://github.com/o/r/blob/abc/.env#L3\u{1b}[2J".to_owned());
        report.token_id = Some("tok_aaaaaaaaaaaaaaaa".to_owned());
        report.subject = Some("team-a".to_owned());
        report.client_address = Some("192.0.2.7".parse().unwrap());
        report.request_id = Some("req-1".to_owned());
        report
    }

    #[test]
    fn a_leak_record_is_one_line_of_its_own_members_cleaned_and_chained() {
        let dir = std::env::temp_dir().join(format!(
            "tokengate-leak-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let key = AuditKey::from_hex(&"cd".repeat(32), "test").unwrap();
        let sink = JsonLinesSink::builder()
            .key(key.clone())
            .open(&path)
            .unwrap();
        sink.record(AuditRecord::sample());
        sink.record(AuditRecord::leak_reported(report()));
        sink.record(AuditRecord::sample());
        sink.shutdown();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let leak: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(leak["tokengate.event"], "leak_reported");
        assert_eq!(leak["tokengate.leak.reporter"], "github");
        assert_eq!(leak["tokengate.leak.outcome"], "revoked");
        assert_eq!(
            leak["tokengate.leak.source"],
            "https://github.com/o/r/blob/abc/.env#L3\\u{1b}[2J"
        );
        assert_eq!(leak["tokengate.token_id"], "tok_aaaaaaaaaaaaaaaa");
        assert_eq!(leak["enduser.id"], "team-a");
        assert_eq!(leak["client.address"], "192.0.2.7");
        assert_eq!(leak["http.request.id"], "req-1");
        assert_eq!(leak["timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(leak.get("url.path").is_none(), "{leak}");
        assert!(leak.get("http.response.status_code").is_none(), "{leak}");
        // The request records around it are request records.
        let after: Value = serde_json::from_str(lines[2]).unwrap();
        assert!(after.get("tokengate.event").is_none());
        assert_eq!(after["url.path"], "/");
        // One chain through all three.
        let verified = hash_chain::verify_with(&path, Some(&key)).unwrap();
        assert_eq!(verified.records, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_writer_event_reused_for_a_leak_then_a_request_keeps_nothing_of_either() {
        let mut event = AuditEvent::blank();
        AuditRecord::leak_reported(report()).fill(&mut event);
        assert!(event.leak.is_some());
        AuditRecord::sample().fill(&mut event);
        assert_eq!(event.leak, None);
        assert_eq!(event.token_id, None);
        assert_eq!(event.path, "/");
        AuditRecord::leak_reported(LeakReport::new("scan", "unknown", SystemTime::UNIX_EPOCH))
            .fill(&mut event);
        assert_eq!(event.path, "");
        assert_eq!(event.token_id, None);
        assert_eq!(event.client_address, None);
        assert_eq!(event.leak.as_ref().unwrap().source, None);
    }
}
