use tracing::Level;

use super::AuditSink;
use crate::event::Decision;
use crate::record::AuditRecord;

/// Emits each record as a structured `tracing` event (target
/// `tokengate::audit`): `INFO` for allowed requests, `WARN` for denials.
/// Formatting and I/O are the subscriber's (use a non-blocking writer).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn record(&self, record: AuditRecord) {
        let e = record.event();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "tokengate::audit",
                    $level,
                    http.request.id = %e.request_id,
                    client.address = e.client_address.as_deref(),
                    http.request.method = %e.method,
                    url.path = %e.path,
                    url.query = e.query.as_deref(),
                    rpc.service = e.rpc_service.as_deref(),
                    rpc.method = e.rpc_method.as_deref(),
                    tokengate.token_id = e.token_id.as_deref(),
                    enduser.id = e.subject.as_deref(),
                    tokengate.reason = e.reason.as_deref(),
                    http.response.status_code = e.status,
                    rpc.grpc.status_code = e.grpc_status,
                    tokengate.latency_us = u64::try_from(e.latency.as_micros()).unwrap_or(u64::MAX),
                    tokengate.ending = e.ending.as_str(),
                    user_agent.original = e.user_agent.as_deref(),
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
