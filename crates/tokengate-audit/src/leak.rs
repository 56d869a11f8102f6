//! The record of a leaked token's report: not a request's own record, but
//! written to the same sink, in the same chain.
//!
//! A secret-scanning provider's report (or `tokengate scan --revoke`)
//! leaves one record per reported token, `tokengate.event` being
//! `leak_reported`: who reported it, where it leaked, what was done, and
//! the token's id and owner when the store knows it. Never the token.

use std::net::IpAddr;
use std::time::SystemTime;

/// The `tokengate.event` of a leak report's record.
pub const LEAK_REPORTED: &str = "leak_reported";

/// One reported token, as the application hands it to
/// [`AuditRecord::leak_reported`](crate::AuditRecord::leak_reported).
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

/// What a leak record adds to an [`AuditEvent`](crate::AuditEvent).
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
