use std::fmt;

use tracing::Level;

use super::AuditSink;
use crate::json::needs_unicode_escape;
use crate::record::AuditRecord;
use crate::record::Decision;

/// Request-controlled text as the subscriber writes it: line separators,
/// bidi controls and zero-width characters shown as `\u{..}` escapes (the
/// record's text has no control characters left), since a subscriber's
/// formatter writes the rest as it is.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut plain = 0;
        for (at, c) in self.0.char_indices() {
            if needs_unicode_escape(c) {
                f.write_str(&self.0[plain..at])?;
                write!(f, "\\u{{{:04x}}}", u32::from(c))?;
                plain = at + c.len_utf8();
            }
        }
        f.write_str(&self.0[plain..])
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Emits each record as a structured `tracing` event (target
/// `tokengate::audit`): `INFO` for allowed requests, `WARN` for denials.
/// Formatting and I/O are the subscriber's (use a non-blocking writer).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn record(&self, record: AuditRecord) {
        let e = record.event();
        if let Some(leak) = &e.leak {
            tracing::event!(
                target: "tokengate::audit",
                Level::WARN,
                tokengate.event = crate::LEAK_REPORTED,
                tokengate.leak.reporter = leak.reporter,
                tokengate.leak.outcome = leak.outcome,
                tokengate.leak.source = leak.source.as_deref().map(Shown).map(tracing::field::display),
                tokengate.token_id = e.token_id.as_deref(),
                enduser.id = e.subject.as_deref().map(Shown).map(tracing::field::display),
                client.address = e.client_address.as_deref(),
                "audit"
            );
            return;
        }
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "tokengate::audit",
                    $level,
                    http.request.id = %Shown(&e.request_id),
                    client.address = e.client_address.as_deref(),
                    http.request.method = %e.method,
                    url.path = %Shown(&e.path),
                    url.query = e.query.as_deref().map(Shown).map(tracing::field::display),
                    rpc.service = e.rpc_service.as_deref().map(Shown).map(tracing::field::display),
                    rpc.method = e.rpc_method.as_deref().map(Shown).map(tracing::field::display),
                    tokengate.token_id = e.token_id.as_deref(),
                    enduser.id = e.subject.as_deref().map(Shown).map(tracing::field::display),
                    tokengate.reason = e.reason.as_deref(),
                    tokengate.rate_fallback = e.rate_fallback,
                    http.response.status_code = e.status,
                    rpc.grpc.status_code = e.grpc_status,
                    tokengate.latency_us = u64::try_from(e.latency.as_micros()).unwrap_or(u64::MAX),
                    tokengate.ending = e.ending.as_str(),
                    user_agent.original = e.user_agent.as_deref().map(Shown).map(tracing::field::display),
                    "audit"
                )
            };
        }
        match e.decision {
            Decision::Allow => emit!(Level::INFO),
            Decision::Deny => emit!(Level::WARN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

    #[test]
    fn invisible_and_line_breaking_characters_are_shown_escaped() {
        let shown = Shown("/a\u{2028}b\u{202e}c\u{200b}d\u{feff}").to_string();
        assert_eq!(shown, "/a\\u{2028}b\\u{202e}c\\u{200b}d\\u{feff}");
        assert_eq!(Shown("plain é").to_string(), "plain é");
    }
}
