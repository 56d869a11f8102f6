//! The Gate's whole configuration as a file: one policy for an
//! in-process Gate and for `tokengate serve`, the authorization service
//! that nginx, Caddy, Traefik and Envoy ask.
//!
//! ```toml
//! audience = "notes"
//! scopes = ["notes:read", "notes:write", "notes:admin"]
//!
//! [[routes]]
//! path = "/healthz"
//! methods = ["GET"]
//! public = true
//!
//! [[routes]]
//! path = "/notes"
//! methods = ["GET", "HEAD"]
//! scopes = ["notes:read"]
//!
//! [network]
//! trusted_proxies = ["127.0.0.1/32", "::1/128"]
//! ```
//!
//! Every key is described in `docs/policy-file.md`. A file that cannot be
//! used is refused whole, with every problem named by file, line, column
//! and field ([`ConfigError`]):
//!
//! ```text
//! notes.toml:14:11: routes[3].scopes[0]: "notes:raed" is not a scope of this policy; did you mean "notes:read"?
//! ```
//!
//! A Rust service builds its Gate from the file with
//! [`Deployment::gate_from_config`](crate::Deployment::gate_from_config)
//! (or [`GateConfig::gate`] over a store of its own).

mod error;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Problem};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokengate_audit::{JsonLinesSinkBuilder, Overflow};
use tokengate_authenticate::AuthenticateLayer;
use tokengate_cache::CachedStore;
use tokengate_core::{Audience, RateQuota, ScopeSet, TokenHasher};
use tokengate_ipfilter::{IpFilterLayer, IpRules, ResolveClientIpLayer};
use tokengate_rate::{MissingKey, RateLimitLayer};
use tokengate_scope::{EnforceScopeLayer, ScopePolicy};

use crate::gate::Gate;

/// A policy file, read and checked: the audience, the routes and their
/// requirements, the quotas, the networks, the headers to send, how
/// credentials may come, and the audit settings.
#[derive(Debug, Clone)]
pub struct GateConfig {
    source: String,
    audience: Audience,
    scopes: ScopeSet,
    policy: ScopePolicy,
    trusted_proxies: Vec<String>,
    allow: Vec<String>,
    deny: Vec<String>,
    client_ip_quota: RateQuota,
    token_quota: RateQuota,
    owner_quota: Option<RateQuota>,
    rate_headers: bool,
    token_expires: TokenExpires,
    query_param: Option<String>,
    remove_authorization: bool,
    audit: AuditSettings,
}

/// When admitted responses carry `token-expires` (`[headers] token_expires`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenExpires {
    /// Never.
    Never,
    /// On every admitted response of an expiring token.
    Always,
    /// Once the token expires within this long (the default: 7 days).
    Within(Duration),
}

/// `[audit]`: where the records go and what a slow disk does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditSettings {
    /// The JSON-lines file, relative paths resolved against the policy
    /// file's folder; `None` leaves it to the deployment.
    pub file: Option<PathBuf>,
    /// `block` (the default: a request waits for room, never lost) or
    /// `drop` (counted).
    pub overflow: Overflow,
    /// Records queued between requests and the writer.
    pub capacity: usize,
    /// Whether every flush is `fsync`ed.
    pub fsync: bool,
    /// How long a request waits for room under `block` before a 503.
    pub block_timeout: Duration,
}

impl GateConfig {
    /// Reads and checks the policy file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(&name, format!("cannot read it: {e}")))?;
        let folder = path.parent().unwrap_or_else(|| Path::new(""));
        validate::parse(&text, &name, folder)
    }

    /// Checks the policy `text`; `name` is how problems name the file,
    /// and relative paths in it are taken as they are.
    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        validate::parse(text, name, Path::new(""))
    }

    /// The file it was read from, as named.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `audience`: tokens must list it.
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// The routes and their requirements.
    pub fn policy(&self) -> &ScopePolicy {
        &self.policy
    }

    /// Every scope the policy names (`scopes`, or the routes').
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// `[network] allow` and `deny`.
    pub fn ip_rules(&self) -> IpRules {
        // Checked when the file was read.
        IpRules::from_lists(&self.allow, &self.deny)
            .unwrap_or_else(|_| unreachable!("the networks were checked on reading"))
    }

    /// `[network] trusted_proxies`.
    pub fn client_ip(&self) -> ResolveClientIpLayer {
        ResolveClientIpLayer::trusted_proxies(&self.trusted_proxies)
            .unwrap_or_else(|_| unreachable!("the networks were checked on reading"))
    }

    /// `[upstream] remove_authorization`: whether an authorization service
    /// tells the proxy to drop the `Authorization` header before the
    /// upstream.
    pub fn remove_authorization(&self) -> bool {
        self.remove_authorization
    }

    /// `[audit]`.
    pub fn audit(&self) -> &AuditSettings {
        &self.audit
    }

    /// The audit file's settings as a sink builder (add the key, then open).
    pub fn audit_sink(&self) -> JsonLinesSinkBuilder {
        let a = &self.audit;
        JsonLinesSinkBuilder::default()
            .overflow(a.overflow)
            .capacity(a.capacity)
            .fsync(a.fsync)
            .block_timeout(a.block_timeout)
    }

    /// The Gate this policy describes, over `store` hashed by `hasher`:
    /// its audience, routes, networks, quotas, headers and credentials;
    /// audit goes to `tracing` until [`Gate::audit`] says otherwise.
    pub fn gate<St>(&self, store: CachedStore<St>, hasher: TokenHasher) -> Gate<St, ScopePolicy> {
        self.configure(AuthenticateLayer::new(store, hasher, self.audience.clone()))
    }

    /// The Gate of this policy around `authenticate` (made for
    /// [`audience`](Self::audience)).
    pub(crate) fn configure<St>(
        &self,
        authenticate: AuthenticateLayer<St>,
    ) -> Gate<St, ScopePolicy> {
        let mut authenticate = match self.token_expires {
            TokenExpires::Never => authenticate.expires_header(None),
            TokenExpires::Always => authenticate.expires_header_within(None),
            TokenExpires::Within(window) => authenticate.expires_header_within(Some(window)),
        };
        if let Some(name) = &self.query_param {
            authenticate = authenticate.query_param(name);
        }
        let token_rate = RateLimitLayer::per_token(self.token_quota)
            .missing_key(MissingKey::Skip)
            .success_headers(self.rate_headers);
        let gate = Gate::new(authenticate, EnforceScopeLayer::new(self.policy.clone()))
            .client_ip(self.client_ip())
            .ip_filter(IpFilterLayer::new(self.ip_rules()))
            .pre_auth_quota(self.client_ip_quota)
            .token_rate(token_rate);
        match self.owner_quota {
            None => gate,
            Some(owner) => gate
                .token_and_owner_quota(self.token_quota, owner)
                .unwrap_or_else(|_| unreachable!("a token and an owner quota fit one layer")),
        }
    }
}

/// A rate that is not `N/s`, `N/min`, `N/h` or `N/d`; names the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateError {
    input: tokengate_core::Echo,
}

impl std::fmt::Display for RateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a rate like 100/min (units: s, min, h, d)",
            self.input
        )
    }
}

impl std::error::Error for RateError {}

/// Parses a rate such as `100/s`, `5000/min`, `1000/h` or `10000/d`:
/// the count and its period (the policy file's and the CLI's `--rate`).
pub fn parse_rate(text: &str) -> Result<(u32, Duration), RateError> {
    let bad = || RateError {
        input: tokengate_core::Echo::new(text, 40),
    };
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(bad()),
    };
    Ok((count, period))
}
