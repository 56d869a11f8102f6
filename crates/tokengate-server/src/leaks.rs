//! `--secret-scanning`: the servers' flags for the leak receivers
//! ([`tokengate::leaks`]).

use std::path::PathBuf;

use axum::Router;
use axum::http::Uri;
use tokengate::audit::JsonLinesSink;
use tokengate::deployment::SetupError;
use tokengate::leaks::{GITHUB_KEYS, SecretScanning};
use tokengate::scope::ScopePolicyBuilder;
use tokengate::store::{LeakAction, Lifecycle, TokenAdmin, TokenStore};

/// The leak receivers' flags, flattened into a server's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaksArgs {
    /// Serve secret-scanning receivers: POST /leaks/github (and
    /// /leaks/gitlab with --secret-scanning-gitlab-keys). A token a
    /// provider reports leaked, in a report signed with one of its keys,
    /// is revoked (--secret-scanning-action).
    #[arg(long)]
    pub secret_scanning: bool,
    /// GitHub's secret-scanning key set (http or https).
    #[arg(long, default_value = GITHUB_KEYS, value_parser = parse_url)]
    pub secret_scanning_keys: Uri,
    /// GitLab's key set; serves POST /leaks/gitlab.
    #[arg(long, value_parser = parse_url)]
    pub secret_scanning_gitlab_keys: Option<Uri>,
    /// A file holding the token GitLab self-managed sends to its token
    /// revocation API; serves /leaks/gitlab/v1/revocable_token_types and
    /// /leaks/gitlab/v1/revoke_tokens.
    #[arg(long)]
    pub secret_scanning_gitlab_token_file: Option<PathBuf>,
    /// What a live leaked token gets: revoke, disable or notify (change
    /// nothing; the audit record and the metric only).
    #[arg(long, default_value = "revoke")]
    pub secret_scanning_action: LeakAction,
}

/// A key-set URL: http or https, with a host.
fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{text:?} is not an http(s) URL with a host")),
    }
}

impl LeaksArgs {
    /// Refuses flags that mean nothing without --secret-scanning, and a
    /// token file that cannot be read or is empty (named).
    pub fn check(&self) -> Result<Option<String>, SetupError> {
        if !self.secret_scanning {
            if self.secret_scanning_gitlab_keys.is_some()
                || self.secret_scanning_gitlab_token_file.is_some()
            {
                return Err("--secret-scanning-gitlab-* flags need --secret-scanning".into());
            }
            return Ok(None);
        }
        match &self.secret_scanning_gitlab_token_file {
            None => Ok(None),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "cannot read {} (--secret-scanning-gitlab-token-file): {e}",
                        path.display()
                    )
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!(
                        "{} (--secret-scanning-gitlab-token-file) is empty",
                        path.display()
                    )
                    .into());
                }
                Ok(Some(token.to_owned()))
            }
        }
    }

    /// The receivers' public paths in `builder`, when they are on.
    pub fn policy_rules(&self, builder: ScopePolicyBuilder) -> ScopePolicyBuilder {
        if self.secret_scanning {
            tokengate::leaks::policy_rules(builder)
        } else {
            builder
        }
    }

    /// The receivers over `lifecycle`, their records in `audit`; `None`
    /// when --secret-scanning is off.
    pub fn router<S>(
        &self,
        lifecycle: Lifecycle<S>,
        audit: JsonLinesSink,
    ) -> Result<Option<Router>, SetupError>
    where
        S: TokenStore + TokenAdmin,
    {
        let gitlab_token = self.check()?;
        if !self.secret_scanning {
            return Ok(None);
        }
        let mut receivers = SecretScanning::new(lifecycle)
            .github_keys(self.secret_scanning_keys.clone())
            .action(self.secret_scanning_action)
            .audit(audit);
        if let Some(url) = &self.secret_scanning_gitlab_keys {
            receivers = receivers.gitlab_keys(url.clone());
        }
        if let Some(token) = gitlab_token {
            receivers = receivers.gitlab_revocation_token(token);
        }
        Ok(Some(receivers.router()))
    }
}
