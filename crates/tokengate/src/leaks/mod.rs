//! Leaked tokens revoke themselves: receivers for GitHub's and GitLab's
//! secret-scanning reports.
//!
//! A secret-scanning provider that finds a token matching a registered
//! pattern (see [the token pattern](crate::core::TokenFormat::pattern)) in
//! a public repository posts it to the token issuer's endpoint. [`router`]
//! serves those endpoints:
//!
//! | method and path | what |
//! |---|---|
//! | `POST /leaks/github` | GitHub's partner format: `[{token, type, url, source}]`, signed (`Github-Public-Key-Identifier`, `Github-Public-Key-Signature`); answered with GitHub's feedback format |
//! | `POST /leaks/gitlab` | GitLab's: `[{type, token, url}]`, signed (`Gitlab-Public-Key-Identifier`, `Gitlab-Public-Key-Signature`); the same feedback |
//! | `GET /leaks/gitlab/v1/revocable_token_types` | GitLab self-managed's token revocation API: the token type revoked here |
//! | `POST /leaks/gitlab/v1/revoke_tokens` | GitLab self-managed's: `[{type, token, url}]`, authenticated by the shared token GitLab is configured with; 204 |
//!
//! Each report is verified before anything else: the signature (ECDSA
//! P-256 over SHA-256 of the raw body, base64 DER) against the provider's
//! published key set, fetched from a configurable URL, cached, fetched
//! again when a report names a key id the cache lacks (at most once per
//! [`SecretScanning::key_refresh`]). Every listed key is accepted, current
//! or not. An unsigned, mis-signed or unknown-key report gets 401 and
//! nothing is done; a body over the size bound 413, malformed JSON 400,
//! too many tokens 422; with no key set fetched yet, 503 and
//! `Retry-After` (the provider retries).
//!
//! Then, for every distinct token of the report, as one batch within the
//! store's time bound ([`SecretScanning::timeout`]; past it 503, and what
//! was done stays done: the same report again changes nothing more):
//!
//! - a live token gets the [`LeakAction`]: revoked (the default),
//!   disabled, or left alone (notify only); its metadata records where it
//!   leaked ([`LEAKED_AT`](crate::store::LEAKED_AT)) and who said so;
//! - one audit record (`tokengate.event`: `leak_reported`, the source
//!   URL, the outcome, the token's id when known, never the token);
//! - the [`LEAK_REPORTS`] counter, by provider and outcome;
//! - for a live token, the [`NotifyOwner`] hook, through a bounded queue
//!   (see [`SecretScanning::notify`] for its loss policy).
//!
//! The answer to GitHub lists one object per reported token: `token_hash`
//! (lowercase hex SHA-256 of the token), `token_type` as reported, and
//! `label`: `true_positive` for a token the store knows (live or not),
//! `false_positive` otherwise. Never the token.
//!
//! The receivers carry no tokengate token (the signature is their
//! authentication): mount them behind the Gate with [`policy_rules`],
//! which makes these paths public, so they keep the Gate's IP filter and
//! request audit, and the address it resolves for their own per-address
//! limit ([`SecretScanning::per_address`]): the Gate's own limit charges
//! only refused requests, and a report may be refused after the Gate
//! admitted it.

mod keys;
mod notify;
mod report;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::Uri;
use tokengate_core::RateQuota;
use tokengate_rate::{MissingKey, RateLimitLayer};
use tokengate_scope::{Requirement, ScopePolicyBuilder};
use tokengate_store::{LeakAction, Lifecycle, TokenAdmin, TokenStore};

use crate::audit::AuditSink;

pub use notify::{LeakNotice, NotifyOwner};

/// GitHub's secret-scanning public keys.
pub const GITHUB_KEYS: &str = "https://api.github.com/meta/public_keys/secret_scanning";

pub use tokengate_core::metric_names::{LEAK_NOTICES_DROPPED, LEAK_REPORTS, LEAK_REPORTS_REFUSED};

/// The receivers' settings; [`SecretScanning::router`] (or [`router`])
/// serves them.
pub struct SecretScanning<S> {
    lifecycle: Lifecycle<S>,
    github_keys: Uri,
    gitlab_keys: Option<Uri>,
    gitlab_token: Option<String>,
    token_type: String,
    action: LeakAction,
    audit: Option<Arc<dyn AuditSink>>,
    notify: Option<Arc<dyn NotifyOwner>>,
    notify_capacity: usize,
    body_limit: usize,
    max_tokens: usize,
    timeout: Duration,
    key_refresh: Duration,
    per_address: RateQuota,
}

impl<S> std::fmt::Debug for SecretScanning<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretScanning")
            .field("github_keys", &self.github_keys)
            .field("gitlab_keys", &self.gitlab_keys)
            .field("action", &self.action)
            .field("body_limit", &self.body_limit)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S> SecretScanning<S>
where
    S: TokenStore + TokenAdmin,
{
    /// Receivers acting through `lifecycle`: GitHub's keys from
    /// [`GITHUB_KEYS`], GitLab's receivers off until
    /// [`gitlab_keys`](Self::gitlab_keys) names its key set, action
    /// [`LeakAction::Revoke`], bodies up to 1 MiB and 1,000 tokens, a
    /// batch within 5 s, keys fetched again at most once a minute.
    pub fn new(lifecycle: Lifecycle<S>) -> Self {
        Self {
            lifecycle,
            github_keys: Uri::from_static(GITHUB_KEYS),
            gitlab_keys: None,
            gitlab_token: None,
            token_type: "tokengate_api_token".to_owned(),
            action: LeakAction::Revoke,
            audit: None,
            notify: None,
            notify_capacity: 1024,
            body_limit: 1024 * 1024,
            max_tokens: 1000,
            timeout: Duration::from_secs(5),
            key_refresh: Duration::from_secs(60),
            per_address: default_per_address(),
        }
    }

    /// How many report requests one client address may send: every
    /// request is charged, refused or not (5 a second, bursts of 20, by
    /// default); past it 429 with `Retry-After`, before the body is read.
    /// The address is the one the Gate resolved (its trusted proxies), so
    /// this holds behind the Gate (or a
    /// [`ResolveClientIpLayer`](crate::ipfilter::ResolveClientIpLayer));
    /// without one, no address is known and nothing is charged.
    #[must_use]
    pub fn per_address(mut self, quota: RateQuota) -> Self {
        self.per_address = quota;
        self
    }

    /// Where GitHub's key set is fetched (http or https).
    #[must_use]
    pub fn github_keys(mut self, url: Uri) -> Self {
        self.github_keys = url;
        self
    }

    /// Where GitLab's key set is fetched; serves `POST /leaks/gitlab`.
    #[must_use]
    pub fn gitlab_keys(mut self, url: Uri) -> Self {
        self.gitlab_keys = Some(url);
        self
    }

    /// The token GitLab self-managed sends in `Authorization` to its token
    /// revocation API; serves `/leaks/gitlab/v1/*`.
    #[must_use]
    pub fn gitlab_revocation_token(mut self, token: impl Into<String>) -> Self {
        self.gitlab_token = Some(token.into());
        self
    }

    /// The token type `GET /leaks/gitlab/v1/revocable_token_types` names
    /// (`tokengate_api_token` by default).
    #[must_use]
    pub fn token_type(mut self, name: impl Into<String>) -> Self {
        self.token_type = name.into();
        self
    }

    /// What a live leaked token gets.
    #[must_use]
    pub fn action(mut self, action: LeakAction) -> Self {
        self.action = action;
        self
    }

    /// Where each reported token's `leak_reported` record goes (the
    /// deployment's audit file, so it sits in the requests' chain).
    #[must_use]
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }

    /// The owner-notification hook, called for each live reported token.
    /// Notices wait in a queue of `capacity` (1,024 by default, see
    /// [`notify_capacity`](Self::notify_capacity)) and the hook takes them
    /// one at a time; a notice that finds the queue full is dropped,
    /// counted in [`LEAK_NOTICES_DROPPED`] and logged with the token's id.
    /// The revocation and the audit record never wait for the hook.
    #[must_use]
    pub fn notify(mut self, hook: impl NotifyOwner) -> Self {
        self.notify = Some(Arc::new(hook));
        self
    }

    /// How many notices may wait for the hook.
    #[must_use]
    pub fn notify_capacity(mut self, capacity: usize) -> Self {
        self.notify_capacity = capacity;
        self
    }

    /// The largest report body read, in bytes (413 past it).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The most tokens one report may name (422 past it).
    #[must_use]
    pub fn max_tokens(mut self, count: usize) -> Self {
        self.max_tokens = count;
        self
    }

    /// How long a report's batch may take in the store (503 past it).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The least time between two fetches of a key set.
    #[must_use]
    pub fn key_refresh(mut self, every: Duration) -> Self {
        self.key_refresh = every;
        self
    }

    /// The receivers (see the [module docs](self)).
    pub fn router(self) -> Router {
        let has_gitlab = self.gitlab_keys.is_some();
        let has_gitlab_api = self.gitlab_token.is_some();
        let shared = Arc::new(report::Receiver {
            github: keys::KeySet::new(self.github_keys, self.key_refresh),
            gitlab: self
                .gitlab_keys
                .map(|url| keys::KeySet::new(url, self.key_refresh)),
            gitlab_token: self.gitlab_token,
            token_type: self.token_type,
            lifecycle: self.lifecycle,
            action: self.action,
            audit: self.audit,
            notifier: self
                .notify
                .map(|hook| notify::Notifier::new(hook, self.notify_capacity)),
            body_limit: self.body_limit,
            max_tokens: self.max_tokens,
            timeout: self.timeout,
        });
        let mut router = Router::new().route("/leaks/github", post(report::github::<S>));
        if has_gitlab {
            router = router.route("/leaks/gitlab", post(report::gitlab::<S>));
        }
        if has_gitlab_api {
            router = router
                .route(
                    "/leaks/gitlab/v1/revocable_token_types",
                    get(report::revocable_token_types::<S>),
                )
                .route(
                    "/leaks/gitlab/v1/revoke_tokens",
                    post(report::revoke_tokens::<S>),
                );
        }
        let per_address = RateLimitLayer::per_client_ip(self.per_address)
            .missing_key(MissingKey::Skip)
            .success_headers(false);
        router.with_state(shared).layer(per_address)
    }
}

/// The receivers over `lifecycle` with every default (see
/// [`SecretScanning::new`]).
pub fn router<S>(lifecycle: Lifecycle<S>) -> Router
where
    S: TokenStore + TokenAdmin,
{
    SecretScanning::new(lifecycle).router()
}

/// 5 report requests a second per address, bursts of 20.
fn default_per_address() -> RateQuota {
    match (NonZeroU32::new(5), NonZeroU32::new(20)) {
        (Some(count), Some(burst)) => RateQuota::new(count, Duration::from_secs(1), burst)
            .unwrap_or_else(|_| unreachable!("a valid constant quota")),
        _ => unreachable!("non-zero constants"),
    }
}

/// Adds the receivers' paths to a scope policy as public: a provider
/// sends no token, its signature is checked by the receiver.
pub fn policy_rules(builder: ScopePolicyBuilder) -> ScopePolicyBuilder {
    use http::Method;
    builder
        .route([Method::POST], "/leaks/github", Requirement::Public)
        .route([Method::POST], "/leaks/gitlab", Requirement::Public)
        .route(
            [Method::GET],
            "/leaks/gitlab/v1/revocable_token_types",
            Requirement::Public,
        )
        .route(
            [Method::POST],
            "/leaks/gitlab/v1/revoke_tokens",
            Requirement::Public,
        )
}
