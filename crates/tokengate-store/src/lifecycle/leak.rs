//! What the lifecycle does with a token reported leaked: finds it by its
//! secret, as the servers do, and revokes or disables it, recording where
//! it leaked in its metadata.

use std::fmt;
use std::str::FromStr;

use tokengate_core::{KeyId, TokenFormat, TokenRecord, TokenStatus};

use super::{Lifecycle, LifecycleError};
use crate::webhooks::EventType;
use crate::{TokenAdmin, TokenStore};

/// The metadata label a leak report leaves on the token: where it was
/// found (a URL, or `file:line:column`), cut to fit a label.
pub const LEAKED_AT: &str = "leaked_at";
/// The metadata label naming who reported the leak (`github`, `gitlab`,
/// `scan`).
pub const LEAK_REPORTED_BY: &str = "leak_reported_by";

/// What to do with a live token reported leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LeakAction {
    /// Revoke it, for good (the default).
    #[default]
    Revoke,
    /// Disable it: refused until an operator enables it again.
    Disable,
    /// Change nothing; only tell (audit record, metric, owner hook).
    Notify,
}

impl LeakAction {
    /// A stable lowercase name (`revoke`, `disable`, `notify`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Disable => "disable",
            Self::Notify => "notify",
        }
    }
}

impl fmt::Display for LeakAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A leak action that is not one of `revoke`, `disable`, `notify`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leak action {0:?} is not one of revoke, disable, notify")]
pub struct LeakActionError(String);

impl FromStr for LeakAction {
    type Err = LeakActionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "revoke" => Ok(Self::Revoke),
            "disable" => Ok(Self::Disable),
            "notify" => Ok(Self::Notify),
            other => Err(LeakActionError(other.chars().take(40).collect())),
        }
    }
}

/// What a leak report did to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeakOutcome {
    /// No stored token has this secret (or it is not a token at all).
    Unknown,
    /// The token was live and is now revoked.
    Revoked,
    /// The token was live and is now disabled.
    Disabled,
    /// The token is live and was left as it is ([`LeakAction::Notify`]).
    Notified,
    /// The token was already refused (revoked, disabled or expired):
    /// nothing changed.
    AlreadyDead,
}

impl LeakOutcome {
    /// A stable lowercase name, as audit records and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
            Self::Notified => "notified",
            Self::AlreadyDead => "already_dead",
        }
    }

    /// Whether the store knows the token (the report is a true positive).
    pub fn is_known(self) -> bool {
        self != Self::Unknown
    }

    /// Whether the token was live when reported.
    pub fn was_live(self) -> bool {
        matches!(self, Self::Revoked | Self::Disabled | Self::Notified)
    }
}

/// A leaked token's record and what the report did to it.
#[derive(Debug, Clone)]
pub struct LeakHandled {
    /// What was done.
    pub outcome: LeakOutcome,
    /// The token's record after it (`None` when the token is unknown).
    pub record: Option<TokenRecord>,
}

impl<S: TokenAdmin + TokenStore> Lifecycle<S> {
    /// The record of the token whose secret is `token`, looked up as the
    /// servers do: under the current pepper, then under each previous one
    /// (newest first). `Ok(None)` for a string that is not a well-formed
    /// token of any prefix (no store work) or that no record has.
    pub async fn find_token(&self, token: &str) -> Result<Option<TokenRecord>, LifecycleError> {
        Ok(self
            .find_token_and_key(token)
            .await?
            .map(|(record, _)| record))
    }

    /// [`find_token`](Self::find_token), with the key id of the pepper
    /// the token was found under (a previous one until a server moves it).
    pub async fn find_token_and_key(
        &self,
        token: &str,
    ) -> Result<Option<(TokenRecord, KeyId)>, LifecycleError> {
        let Ok(parsed) = TokenFormat::parse_any_prefix(token) else {
            return Ok(None);
        };
        let hasher = self.hasher();
        let hashes = std::iter::once(hasher.hash(&parsed)).chain(hasher.previous_hashes(token));
        for hash in hashes {
            if let Some(record) = self.store().find_by_hash(&hash).await? {
                return Ok(Some((record, hash.key_id())));
            }
        }
        Ok(None)
    }

    /// Acts on the token `token` reported leaked at `location` (a URL or
    /// `file:line:column`) by `reporter` (`github`, `gitlab`, `scan`): a
    /// live token is revoked or disabled as `action` says, after its
    /// metadata records [`LEAKED_AT`] and [`LEAK_REPORTED_BY`]. Idempotent:
    /// a token already refused is left exactly as it is
    /// ([`LeakOutcome::AlreadyDead`]), so the same report twice changes
    /// nothing the second time.
    pub async fn report_leak(
        &self,
        token: &str,
        action: LeakAction,
        reporter: &str,
        location: &str,
    ) -> Result<LeakHandled, LifecycleError> {
        let Some(record) = self.find_token(token).await? else {
            return Ok(LeakHandled {
                outcome: LeakOutcome::Unknown,
                record: None,
            });
        };
        let now = self.clock.now();
        if record.status(now) != TokenStatus::Active {
            return Ok(LeakHandled {
                outcome: LeakOutcome::AlreadyDead,
                record: Some(record),
            });
        }
        if action == LeakAction::Notify {
            self.announce(
                EventType::Leaked,
                &record,
                &[("action", "notify"), ("reported_by", reporter)],
            )
            .await;
            return Ok(LeakHandled {
                outcome: LeakOutcome::Notified,
                record: Some(record),
            });
        }
        let labelled = self
            .update(
                &record.id,
                &super::TokenPatch::new()
                    .set_metadata(LEAKED_AT, label(location))
                    .set_metadata(LEAK_REPORTED_BY, label(reporter)),
            )
            .await;
        match labelled {
            Ok(_) => {}
            // Revoked (or removed) meanwhile: refused either way.
            Err(
                LifecycleError::NotChangeable { .. }
                | LifecycleError::Store(super::StoreError::NotFound(_)),
            ) => {
                return Ok(LeakHandled {
                    outcome: LeakOutcome::AlreadyDead,
                    record: self.get(&record.id).await?,
                });
            }
            Err(error) => return Err(error),
        }
        let (outcome, record) = match action {
            LeakAction::Disable => (LeakOutcome::Disabled, self.disable(&record.id).await?),
            _ => (LeakOutcome::Revoked, self.revoke(&record.id).await?),
        };
        self.announce(
            EventType::Leaked,
            &record,
            &[("action", action.as_str()), ("reported_by", reporter)],
        )
        .await;
        Ok(LeakHandled {
            outcome,
            record: Some(record),
        })
    }
}

/// `text` as a metadata value: control characters dropped, at most 256
/// bytes (cut at a character boundary), never empty.
fn label(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(256));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > 256 {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() {
        out = "unknown".to_owned();
    }
    out
}
