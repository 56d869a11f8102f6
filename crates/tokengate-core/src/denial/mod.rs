//! Why a request was refused, and how the refusal is told to the client.
//!
//! Every layer refuses with a [`Denial`]. It knows its HTTP status, its gRPC
//! code and its RFC 6750 error code, and the renderer (`tokengate_check::Renderer`) turns it into a
//! response: RFC 9457 `application/problem+json` for HTTP, a trailers-only
//! `grpc-status` response for gRPC. The client sees one body for every kind
//! of invalid token; the precise [`Denial::reason`] goes to the audit record.
//!
//! | Denial | HTTP | gRPC |
//! |---|---|---|
//! | [`Denial::MalformedRequest`] | 400 `invalid_request` | 3 `INVALID_ARGUMENT` |
//! | [`Denial::MissingToken`] | 401, challenge without error code | 16 `UNAUTHENTICATED` |
//! | [`Denial::InvalidToken`] | 401 `invalid_token` (one body for all reasons) | 16 `UNAUTHENTICATED` |
//! | [`Denial::InsufficientScope`] | 403 `insufficient_scope`, `scope="…"` | 7 `PERMISSION_DENIED` |
//! | [`Denial::Unmapped`] (no rule covers the route) | 403 | 7 `PERMISSION_DENIED` |
//! | [`Denial::IpForbidden`] | 403 | 7 `PERMISSION_DENIED` |
//! | [`Denial::RateLimited`] | 429, `Retry-After`, `RateLimit-Policy`, `RateLimit` | 8 `RESOURCE_EXHAUSTED` |
//! | [`Denial::UsageExhausted`] (refills later) | 429, `Retry-After` to the refill, `token-uses-remaining: 0` | 8 `RESOURCE_EXHAUSTED` |
//! | [`Denial::UsageExhausted`] (never refills) | 403, `token-uses-remaining: 0` | 7 `PERMISSION_DENIED` |
//! | [`Denial::StoreUnavailable`] | 503 | 14 `UNAVAILABLE` |
//! | [`Denial::RateStateUnavailable`] (a shared rate state down, policy fail-closed) | 503 | 14 `UNAVAILABLE` |
//! | [`Denial::AuditUnavailable`] (no room for the record in time) | 503 | 14 `UNAVAILABLE` |
//! | [`Denial::NoPeerAddress`] (the server is not set up to tell it) | 500 | 13 `INTERNAL` |

mod rate;

use std::fmt;
use std::time::Duration;

use http::StatusCode;

pub use rate::retry_after_seconds;
pub use rate::{RateFallback, RateLimitPolicy, RateLimitPolicyError, RateLimited};

use crate::scope::Scope;
use crate::token::TokenFormatError;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The request's credentials are ambiguous or unreadable.
    MalformedRequest(MalformedReason),
    /// No credential was presented.
    MissingToken,
    /// A credential was presented and is not valid here.
    InvalidToken(InvalidReason),
    /// The token lacks scopes the route requires.
    InsufficientScope {
        /// The required scopes the token does not grant.
        missing: Vec<Scope>,
    },
    /// No access rule covers the route or gRPC method (deny by default).
    Unmapped,
    /// The client address is not allowed.
    IpForbidden(IpReason),
    /// A rate quota is spent.
    RateLimited(RateLimited),
    /// A usage-limited token has no uses left: 429 with `Retry-After`
    /// when it refills (`retry_after` is the wait for the refill), 403
    /// when it never does (nothing to wait for; retrying cannot help).
    UsageExhausted {
        /// How long until the next refill; `None` when none comes.
        retry_after: Option<Duration>,
    },
    /// The token store could not answer.
    StoreUnavailable,
    /// A shared rate state could not answer in time and its policy is to
    /// refuse ([`RateFallback::FailClosed`]).
    RateStateUnavailable,
    /// The request carries no peer address where the configuration needs
    /// one: the server's set-up (no connection info handed to the layers),
    /// not the client's fault.
    NoPeerAddress,
    /// The audit log had no room for the request's record within its wait
    /// bound: the request is refused rather than handled unrecorded.
    AuditUnavailable,
}

/// What was wrong with a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// More than one credential (two headers, or a header and a query parameter).
    MultipleCredentials,
    /// An `Authorization` header that is not valid text or not `scheme value`.
    BadAuthorizationHeader,
    /// A token in the query string where that is not enabled.
    QueryTokenNotAllowed,
    /// A header the service requires of every request is absent (for
    /// checks of your own, such as a tenant header).
    MissingRequiredHeader,
}

/// Why a presented token is not valid here. Told to the audit record, never
/// to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidReason {
    /// Not a well-formed token (refused before any store work).
    Malformed(TokenFormatError),
    /// Well-formed, but no record has its hash.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
    /// Disabled (reversibly) by an operator.
    Disabled,
    /// Issued for other audiences than this service's.
    WrongAudience,
    /// Used from outside the networks the token is bound to. Answered like
    /// any bad token (a distinct answer would confirm to the holder of a
    /// stolen token that it is real); the audit record keeps this reason.
    OutsideNetworks,
    /// `Authorization: DPoP` without a `DPoP` proof header.
    DpopMissing,
    /// A DPoP-bound token sent as a bearer token, without a proof.
    DpopBoundAsBearer,
    /// A DPoP proof that does not read: several `DPoP` headers, not a
    /// compact JWS, a claim missing, `typ` not `dpop+jwt`, a private or
    /// malformed key, over the size bound.
    DpopMalformed,
    /// A DPoP proof signed with an algorithm outside the allowlist.
    DpopAlgorithm,
    /// A DPoP proof whose signature does not verify with its key.
    DpopInvalidSignature,
    /// A DPoP proof made for another method (`htm`).
    DpopHtmMismatch,
    /// A DPoP proof made for another URL (`htu`).
    DpopHtuMismatch,
    /// A DPoP proof made too long ago or in the future (`iat`).
    DpopIat,
    /// A DPoP proof made for another token (`ath`).
    DpopAthMismatch,
    /// A DPoP proof without a current server nonce (`use_dpop_nonce`).
    DpopNonce,
    /// A DPoP proof seen before (`jti`).
    DpopReplay,
    /// A DPoP proof signed by another key than the token is bound to.
    DpopKeyMismatch,
    /// A certificate-bound token without a client certificate.
    CertMissing,
    /// A certificate-bound token with another client certificate.
    CertMismatch,
    /// A certificate-bound token whose only certificate came in a
    /// `Client-Cert` header from a peer that is not a trusted proxy
    /// (ignored: anyone can send the header).
    CertUntrustedHeader,
}

/// Why a client address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpReason {
    /// Matched a deny rule.
    Denied,
    /// Matched no allow rule where an allowlist is in force.
    NotAllowed,
    /// Outside the networks the token is bound to.
    OutsideTokenNetworks,
    /// No client address could be determined where one is needed.
    Unresolved,
}

impl Denial {
    /// The HTTP status of the rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedRequest(_) => StatusCode::BAD_REQUEST,
            Self::MissingToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::Unmapped | Self::IpForbidden(_) => {
                StatusCode::FORBIDDEN
            }
            Self::RateLimited(_)
            | Self::UsageExhausted {
                retry_after: Some(_),
            } => StatusCode::TOO_MANY_REQUESTS,
            Self::UsageExhausted { retry_after: None } => StatusCode::FORBIDDEN,
            Self::StoreUnavailable | Self::RateStateUnavailable | Self::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NoPeerAddress => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code of the rejection.
    pub fn grpc_code(&self) -> u8 {
        match self {
            Self::MalformedRequest(_) => 3,
            Self::MissingToken | Self::InvalidToken(_) => 16,
            Self::InsufficientScope { .. } | Self::Unmapped | Self::IpForbidden(_) => 7,
            Self::RateLimited(_)
            | Self::UsageExhausted {
                retry_after: Some(_),
            } => 8,
            Self::UsageExhausted { retry_after: None } => 7,
            Self::StoreUnavailable | Self::RateStateUnavailable | Self::AuditUnavailable => 14,
            Self::NoPeerAddress => 13,
        }
    }

    /// The RFC 6750 `error` code, where the rejection has one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Self::MalformedRequest(_) => Some("invalid_request"),
            Self::InvalidToken(_) => Some("invalid_token"),
            Self::InsufficientScope { .. } => Some("insufficient_scope"),
            _ => None,
        }
    }

    /// The layer that refuses this way, a label for metrics and traces:
    /// `client_ip`, `ip_filter`, `authenticate`, `rate`, `scope`, `uses`,
    /// `audit`, or `check` (a header required by a check of one's own).
    pub fn layer(&self) -> &'static str {
        match self {
            Self::MalformedRequest(MalformedReason::MissingRequiredHeader) => "check",
            Self::MalformedRequest(_)
            | Self::MissingToken
            | Self::InvalidToken(_)
            | Self::StoreUnavailable => "authenticate",
            Self::InsufficientScope { .. } | Self::Unmapped => "scope",
            Self::IpForbidden(IpReason::OutsideTokenNetworks) => "authenticate",
            Self::IpForbidden(_) => "ip_filter",
            Self::RateLimited(_) | Self::RateStateUnavailable => "rate",
            Self::UsageExhausted { .. } => "uses",
            Self::NoPeerAddress => "client_ip",
            Self::AuditUnavailable => "audit",
        }
    }

    /// The precise reason, stable and machine-readable, for audit records
    /// and metrics (e.g. `token_revoked`). Never sent to the client.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedRequest(MalformedReason::MultipleCredentials) => "multiple_credentials",
            Self::MalformedRequest(MalformedReason::BadAuthorizationHeader) => {
                "bad_authorization_header"
            }
            Self::MalformedRequest(MalformedReason::QueryTokenNotAllowed) => {
                "query_token_not_allowed"
            }
            Self::MalformedRequest(MalformedReason::MissingRequiredHeader) => {
                "missing_required_header"
            }
            Self::MissingToken => "missing_token",
            Self::InvalidToken(reason) => reason.as_str(),
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Unmapped => "no_access_rule",
            Self::IpForbidden(IpReason::Denied) => "ip_denied",
            Self::IpForbidden(IpReason::NotAllowed) => "ip_not_allowed",
            Self::IpForbidden(IpReason::OutsideTokenNetworks) => "ip_outside_token_networks",
            Self::IpForbidden(IpReason::Unresolved) => "ip_unresolved",
            Self::RateLimited(_) => "rate_limited",
            Self::UsageExhausted { .. } => "usage_exhausted",
            Self::StoreUnavailable => "store_unavailable",
            Self::RateStateUnavailable => "rate_state_unavailable",
            Self::NoPeerAddress => "no_peer_address",
            Self::AuditUnavailable => "audit_unavailable",
        }
    }

    /// What the client is told: one sentence per row of the rejection
    /// table, identical for every kind of invalid token.
    pub fn public_detail(&self) -> &'static str {
        match self {
            Self::MalformedRequest(MalformedReason::MultipleCredentials) => {
                "The request carries more than one credential."
            }
            Self::MalformedRequest(MalformedReason::BadAuthorizationHeader) => {
                "The Authorization header is malformed."
            }
            Self::MalformedRequest(MalformedReason::QueryTokenNotAllowed) => {
                "Tokens are not accepted in the query string."
            }
            Self::MalformedRequest(MalformedReason::MissingRequiredHeader) => {
                "A required header is missing."
            }
            Self::MissingToken => "A bearer token is required.",
            Self::InvalidToken(_) => "The bearer token is invalid, expired or revoked.",
            Self::InsufficientScope { .. } => "The bearer token lacks a required scope.",
            Self::Unmapped => "No access rule allows this route.",
            Self::IpForbidden(IpReason::Unresolved) => {
                "The client address could not be determined."
            }
            Self::IpForbidden(_) => "Requests from this address are not allowed.",
            Self::RateLimited(_) => "The rate limit is exceeded; retry later.",
            Self::UsageExhausted {
                retry_after: Some(_),
            } => "The bearer token has no uses left until its next refill.",
            Self::UsageExhausted { retry_after: None } => "The bearer token has no uses left.",
            Self::StoreUnavailable => "The token service is temporarily unavailable.",
            Self::NoPeerAddress => "The server could not determine the client address.",
            Self::RateStateUnavailable | Self::AuditUnavailable => {
                "The service is temporarily unavailable."
            }
        }
    }

    /// A stable slug naming the problem type (the tail of the problem
    /// `type` URI).
    pub fn problem_slug(&self) -> &'static str {
        match self {
            Self::MalformedRequest(_) => "invalid-request",
            Self::MissingToken => "missing-token",
            Self::InvalidToken(_) => "invalid-token",
            Self::InsufficientScope { .. } => "insufficient-scope",
            Self::Unmapped => "no-access-rule",
            Self::IpForbidden(_) => "ip-forbidden",
            Self::RateLimited(_) => "rate-limited",
            Self::UsageExhausted { .. } => "usage-exhausted",
            Self::StoreUnavailable | Self::RateStateUnavailable | Self::AuditUnavailable => {
                "unavailable"
            }
            Self::NoPeerAddress => "server-error",
        }
    }
}

impl Denial {
    /// How long the client should wait before retrying, for the denials
    /// that say (`Retry-After`): a spent rate quota, a spent usage-limited
    /// token that refills.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(limited) => Some(limited.retry_after),
            Self::UsageExhausted { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The policy that decided for an unreachable shared rate state, when
    /// it decided this refusal.
    pub fn rate_fallback(&self) -> Option<RateFallback> {
        match self {
            Self::RateLimited(limited) => limited.fallback,
            Self::RateStateUnavailable => Some(RateFallback::FailClosed),
            _ => None,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status().as_u16())
    }
}

impl InvalidReason {
    /// A stable lowercase name such as `token_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(TokenFormatError::BadChecksum) => "token_bad_checksum",
            Self::Malformed(TokenFormatError::WrongPrefix) => "token_wrong_prefix",
            Self::Malformed(_) => "token_malformed",
            Self::Unknown => "token_unknown",
            Self::Expired => "token_expired",
            Self::Revoked => "token_revoked",
            Self::Disabled => "token_disabled",
            Self::WrongAudience => "token_wrong_audience",
            Self::OutsideNetworks => "token_outside_networks",
            Self::DpopMissing => "dpop_missing",
            Self::DpopBoundAsBearer => "dpop_bound_as_bearer",
            Self::DpopMalformed => "dpop_malformed",
            Self::DpopAlgorithm => "dpop_alg_not_allowed",
            Self::DpopInvalidSignature => "dpop_invalid_signature",
            Self::DpopHtmMismatch => "dpop_htm_mismatch",
            Self::DpopHtuMismatch => "dpop_htu_mismatch",
            Self::DpopIat => "dpop_iat",
            Self::DpopAthMismatch => "dpop_ath_mismatch",
            Self::DpopNonce => "dpop_nonce",
            Self::DpopReplay => "dpop_replay",
            Self::DpopKeyMismatch => "dpop_key_mismatch",
            Self::CertMissing => "cert_missing",
            Self::CertMismatch => "cert_mismatch",
            Self::CertUntrustedHeader => "cert_untrusted_header",
        }
    }
}
