use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use tokengate::core::{Binding, Echo, RateQuota, Refill, Thumbprint, TokenStatus, UseLimit};
use tokengate::deployment::Database;
use tokengate::store::{Expiry, TokenPatch};
use tokengate::{Audience, Scope};

/// Manage tokengate API tokens.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub(crate) struct Cli {
    /// The token database: a SQLite file (its pepper file sits beside it),
    /// or a `postgres://` URL (the pepper from --pepper-file or
    /// TOKENGATE_PEPPER, never stored in the database).
    #[arg(long, global = true, default_value = "./tokengate.db")]
    pub(crate) db: Database,
    /// The pepper file of a PostgreSQL database (hex; created, private, on
    /// a first start). TOKENGATE_PEPPER wins over it.
    #[arg(long, global = true)]
    pub(crate) pepper_file: Option<PathBuf>,
    /// Whether --db was given rather than defaulted (`scan` looks tokens
    /// up only then).
    #[arg(skip)]
    pub(crate) db_given: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new, empty token database and its pepper.
    Init,
    /// Serve the Gate of a policy file to proxies: forward-auth for nginx,
    /// Caddy, Traefik and Envoy at /auth (nginx: /auth/nginx), and Envoy's
    /// ext_authz over gRPC with --grpc-listen. SIGHUP reloads the policy.
    Serve(Box<tokengate_server::serve::ServeArgs>),
    /// Issue a token; it is printed once and never stored. Creates the
    /// database (and its pepper) if there is none.
    Issue(Issue),
    /// List the scope catalogue: the scopes the servers on this database use.
    Scopes,
    /// List tokens (never a secret), oldest first.
    List {
        /// One JSON object per token, one per line (JSON lines), in the
        /// admin API's rendering.
        #[arg(long)]
        json: bool,
        /// With --json: one JSON array of every token instead of lines.
        #[arg(long, requires = "json")]
        array: bool,
        /// Only this subject's tokens.
        #[arg(long)]
        subject: Option<String>,
        /// Only tokens in this state: active, expired, revoked or disabled.
        #[arg(long)]
        status: Option<TokenStatus>,
        /// Only active tokens expiring within this long, e.g. 7d.
        #[arg(long, value_parser = parse_duration)]
        expiring_within: Option<Duration>,
        /// At most this many tokens.
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this token id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one token's record.
    Show {
        /// The token id (tok_...).
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// A token's requests by hour (admitted, refused by reason, the last
    /// client address), or with --top the tokens with the most requests.
    /// Servers add what they counted every few seconds (--usage-flush).
    Usage {
        /// The token id (tok_...); omitted with --top.
        #[arg(required_unless_present = "top", conflicts_with = "top")]
        id: Option<String>,
        /// Rank this many tokens by requests (admitted and refused) instead.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        top: Option<u16>,
        /// From this long ago (default: 7d for a token, 24h with --top).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// As JSON: `{"token_id", "buckets": [...]}`, or with --top an
        /// array of `{"token_id", "admitted", "refused"}`.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it fails from the next request on.
    Revoke {
        /// The token id.
        id: String,
    },
    /// Replace a token; the old one keeps working for the grace period. The
    /// new token keeps the old one's lifetime (or its lack of expiry) unless
    /// --ttl or --expires says otherwise.
    Rotate {
        /// The token id.
        id: String,
        /// How long the old token keeps working (e.g. 1h, 30m).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        grace: Duration,
        /// The new token's lifetime, e.g. 30d.
        #[arg(long, value_parser = parse_duration, conflicts_with = "expires")]
        ttl: Option<Duration>,
        /// The new token's expiry as RFC 3339.
        #[arg(long, value_parser = parse_time)]
        expires: Option<SystemTime>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a token without reissuing it: its name, scopes, audiences,
    /// expiry, networks, quota or metadata. Every server's cache forgets it
    /// within the change feed's bound.
    Update(Update),
    /// Disable a token: refused like a revoked one until enabled again.
    Disable {
        /// The token id.
        id: String,
    },
    /// Enable a disabled token again.
    Enable {
        /// The token id.
        id: String,
    },
    /// Set the count a usage-limited token has left (by default the uses
    /// it was issued with); it holds from the next request on.
    ResetUses {
        /// The token id.
        id: String,
        /// The count left, instead of the limit's uses.
        #[arg(long)]
        remaining: Option<u64>,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find leaked tokens in files: every token of any prefix (or of
    /// --prefix) whose checksum holds, as `file:line:column`, masked.
    /// With --db, each token's id and status. Exit status: 1 when a live
    /// token is found (without --db, any token), 2 when something could
    /// not be read, 0 otherwise: a CI step or a pre-commit hook.
    Scan(Scan),
    /// Say whether a token is valid, and why not.
    Inspect {
        /// The token.
        token: String,
    },
    /// The pepper the tokens are hashed under: status, rotate, retire.
    Pepper {
        #[command(subcommand)]
        command: PepperCommand,
    },
    /// Audit file tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Lifecycle webhooks: URLs that get a signed POST when a token is
    /// issued, updated, rotated, revoked, disabled, enabled or leaks.
    /// Servers on this database post them; the CLI only writes.
    Webhooks {
        #[command(subcommand)]
        command: WebhookCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Add a webhook. Its signing secret is generated and printed once,
    /// unless --secret-file gives one.
    Add {
        /// Where events are posted (http:// or https://).
        url: String,
        /// The event types, comma-separated: issued, updated, rotated,
        /// revoked, disabled, enabled, leaked, expiring, uses_threshold,
        /// uses_exhausted (or `all`).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// A file holding the signing secret (32 to 256 characters).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// List the webhooks (never their secrets).
    List {
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook; what it had pending is given up.
    Remove {
        /// The webhook id (wh_...).
        id: String,
    },
    /// The latest deliveries, newest first.
    Log {
        /// Only those given up, or whose last attempt failed.
        #[arg(long)]
        failed: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PepperCommand {
    /// Each pepper's key id, whether it is current, and how many tokens
    /// are still hashed under it.
    Status,
    /// Make a new pepper current. Tokens under the old one keep working
    /// and move to the new one on their first use. Restart every server
    /// on this database afterwards: until then they do not know the new
    /// pepper, and tokens issued meanwhile fail on them.
    Rotate,
    /// Remove a previous pepper from the pepper file, once no token is
    /// hashed under it.
    Retire {
        /// Its key id.
        key: u32,
        /// Retire it although tokens remain under it: they stop working.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of a JSON-lines audit file. Exit status: 0
    /// intact, 1 tampered (or unreadable), 2 intact but for a torn last
    /// line (a crash mid-write).
    Verify {
        /// The file.
        file: PathBuf,
        /// The audit key of a keyed chain (HMAC): a file holding it as hex.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Scan {
    /// Files and directories (recursively, honouring .gitignore; hidden
    /// files such as .env included, .git skipped, binary files skipped).
    /// Standard input when none is given.
    pub(crate) paths: Vec<PathBuf>,
    /// Only tokens of this prefix (repeatable); by default every prefix.
    #[arg(long = "prefix")]
    pub(crate) prefixes: Vec<String>,
    /// Scan files that .gitignore and .ignore exclude too.
    #[arg(long)]
    pub(crate) no_ignore: bool,
    /// Revoke every live token found (the database is --db, by default
    /// ./tokengate.db); asks first unless --yes. The token's metadata
    /// records where it was found (leaked_at).
    #[arg(long)]
    pub(crate) revoke: bool,
    /// Revoke without asking.
    #[arg(long, requires = "revoke")]
    pub(crate) yes: bool,
    /// Append one `leak_reported` audit record per revoked token to this
    /// JSON-lines audit file (chained, keyed like a server's). Not a file
    /// a running server writes: two writers fork its chain.
    #[arg(long, requires = "revoke")]
    pub(crate) audit_log: Option<PathBuf>,
    /// One JSON object per finding, one per line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Issue {
    /// A label, e.g. ci-deploy.
    #[arg(long)]
    pub(crate) name: String,
    /// The owner: a user, service account or tenant.
    #[arg(long)]
    pub(crate) subject: String,
    /// A scope, resource:action (repeatable).
    #[arg(long = "scope", value_parser = parse_scope)]
    pub(crate) scopes: Vec<Scope>,
    /// A service the token may be used at (repeatable; at least one).
    #[arg(long = "audience", value_parser = parse_audience)]
    pub(crate) audiences: Vec<Audience>,
    /// Lifetime, e.g. 30d, 12h (at most 90 days).
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["expires", "no_expiry"])]
    pub(crate) ttl: Option<Duration>,
    /// Expiry as RFC 3339, e.g. 2027-01-31T00:00:00Z.
    #[arg(long, value_parser = parse_time, conflicts_with = "no_expiry")]
    pub(crate) expires: Option<SystemTime>,
    /// No expiry at all (the token lives until revoked).
    #[arg(long)]
    pub(crate) no_expiry: bool,
    /// A network the token may be used from (repeatable).
    #[arg(long = "allow-ip", value_parser = parse_net)]
    pub(crate) allow_ip: Vec<IpNet>,
    /// A quota of its own: N/UNIT with UNIT one of s, min, h, d (e.g.
    /// 100/min), each with a --burst; repeat both for several quotas, all
    /// checked (--rate 100/min --burst 20 --rate 10000/d --burst 100).
    #[arg(long, value_parser = parse_rate, requires = "burst")]
    pub(crate) rate: Vec<(u32, Duration)>,
    /// The burst of the --rate given in the same place.
    #[arg(long, requires = "rate")]
    pub(crate) burst: Vec<u32>,
    #[command(flatten)]
    pub(crate) uses: UsesArgs,
    /// Bind the token to a DPoP key: its RFC 7638 thumbprint (the `jkt`,
    /// 43 base64url characters). The token then works only beside a DPoP
    /// proof signed by that key.
    #[arg(long = "dpop-jkt", value_name = "THUMBPRINT", value_parser = parse_thumbprint, allow_hyphen_values = true, conflicts_with = "cert_sha256")]
    pub(crate) dpop_jkt: Option<Thumbprint>,
    /// Bind the token to a client certificate: the SHA-256 of its DER, in
    /// hex (`openssl x509 -noout -fingerprint -sha256`, colons allowed).
    #[arg(long = "cert-sha256", value_name = "HEX", value_parser = parse_thumbprint)]
    pub(crate) cert_sha256: Option<Thumbprint>,
    /// Issue scopes that no server has registered in the catalogue.
    #[arg(long)]
    pub(crate) allow_unknown_scope: bool,
    /// Print one JSON object (id, token, expires_at, ...).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Update {
    /// The token id.
    pub(crate) id: String,
    /// A new label.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Replace the scopes with these (repeatable).
    #[arg(long = "scope", value_parser = parse_scope)]
    pub(crate) scopes: Vec<Scope>,
    /// Add a scope (repeatable).
    #[arg(long = "add-scope", value_parser = parse_scope)]
    pub(crate) add_scopes: Vec<Scope>,
    /// Remove a scope (repeatable).
    #[arg(long = "remove-scope", value_parser = parse_scope)]
    pub(crate) remove_scopes: Vec<Scope>,
    /// Replace the audiences with these (repeatable).
    #[arg(long = "audience", value_parser = parse_audience)]
    pub(crate) audiences: Vec<Audience>,
    /// A new lifetime from now, e.g. 30d (at most 90 days).
    #[arg(long, value_parser = parse_duration, conflicts_with = "expires")]
    pub(crate) ttl: Option<Duration>,
    /// A new expiry as RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub(crate) expires: Option<SystemTime>,
    /// Replace the networks the token may be used from (repeatable).
    #[arg(long = "allow-ip", value_parser = parse_net, conflicts_with = "any_ip")]
    pub(crate) allow_ip: Vec<IpNet>,
    /// Let the token be used from any network.
    #[arg(long)]
    pub(crate) any_ip: bool,
    /// The token's own quotas in place of those it has: N/UNIT (e.g.
    /// 100/min), each with a --burst; repeatable, all checked.
    #[arg(long, value_parser = parse_rate, requires = "burst", conflicts_with = "no_rate")]
    pub(crate) rate: Vec<(u32, Duration)>,
    /// The burst of the --rate given in the same place.
    #[arg(long, requires = "rate")]
    pub(crate) burst: Vec<u32>,
    /// Drop the token's own quotas (the servers' default applies).
    #[arg(long)]
    pub(crate) no_rate: bool,
    #[command(flatten)]
    pub(crate) uses: UsesArgs,
    /// Drop the usage limit: unlimited uses.
    #[arg(long, conflicts_with = "uses")]
    pub(crate) no_uses: bool,
    /// Set a metadata label, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    pub(crate) meta: Vec<(String, String)>,
    /// Remove a metadata label (repeatable).
    #[arg(long = "remove-meta")]
    pub(crate) remove_meta: Vec<String>,
    /// Bind the token to a DPoP key: its RFC 7638 thumbprint (the `jkt`,
    /// 43 base64url characters). The token then works only beside a DPoP
    /// proof signed by that key.
    #[arg(long = "dpop-jkt", value_name = "THUMBPRINT", value_parser = parse_thumbprint, allow_hyphen_values = true, conflicts_with_all = ["cert_sha256", "unbind"])]
    pub(crate) dpop_jkt: Option<Thumbprint>,
    /// Bind the token to a client certificate: the SHA-256 of its DER, in
    /// hex (`openssl x509 -noout -fingerprint -sha256`, colons allowed).
    #[arg(long = "cert-sha256", value_name = "HEX", value_parser = parse_thumbprint)]
    pub(crate) cert_sha256: Option<Thumbprint>,
    /// Make the token a bearer token again (drop its binding).
    #[arg(long, conflicts_with = "cert_sha256")]
    pub(crate) unbind: bool,
    /// Allow scopes that no server has registered in the catalogue.
    #[arg(long)]
    pub(crate) allow_unknown_scope: bool,
    /// Print the record as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Update {
    pub(crate) fn changes(&self) -> Result<TokenPatch, String> {
        let mut changes = TokenPatch::new();
        if let Some(name) = &self.name {
            changes = changes.name(name.clone());
        }
        if !self.scopes.is_empty() {
            changes = changes.scopes(self.scopes.iter().cloned());
        }
        for scope in &self.add_scopes {
            changes = changes.add_scope(scope.clone());
        }
        for scope in &self.remove_scopes {
            changes = changes.remove_scope(scope.clone());
        }
        if !self.audiences.is_empty() {
            changes = changes.audiences(self.audiences.iter().cloned());
        }
        if let Some(ttl) = self.ttl {
            changes = changes.expiry(Expiry::After(ttl));
        }
        if let Some(at) = self.expires {
            changes = changes.expiry(Expiry::At(at));
        }
        if !self.allow_ip.is_empty() {
            changes = changes.allowed_networks(self.allow_ip.iter().copied());
        }
        if self.any_ip {
            changes = changes.allowed_networks([]);
        }
        if !self.rate.is_empty() {
            changes = changes.rate_quotas(quotas(&self.rate, &self.burst)?);
        }
        if self.no_rate {
            changes = changes.rate_quota(None);
        }
        for (key, value) in &self.meta {
            changes = changes.set_metadata(key.clone(), value.clone());
        }
        for key in &self.remove_meta {
            changes = changes.remove_metadata(key.clone());
        }
        if let Some(limit) = self.uses.limit() {
            changes = changes.uses(Some(limit));
        }
        if self.no_uses {
            changes = changes.uses(None);
        }
        if let Some(binding) = binding(self.dpop_jkt, self.cert_sha256) {
            changes = changes.binding(Some(binding));
        }
        if self.unbind {
            changes = changes.binding(None);
        }
        Ok(changes)
    }
}

/// `--uses N [--refill N/INTERVAL]`.
#[derive(Debug, Args)]
pub(crate) struct UsesArgs {
    /// Admit exactly N requests (then 403, or 429 until a refill). With
    /// update: the new limit, the count left kept (see reset-uses).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) uses: Option<u64>,
    /// Set the count to N every INTERVAL, counted from the Unix epoch
    /// (100/1d refills at 00:00 UTC); needs --uses.
    #[arg(long, requires = "uses", value_parser = parse_refill)]
    pub(crate) refill: Option<Refill>,
}

impl UsesArgs {
    /// The limit given, if any.
    pub(crate) fn limit(&self) -> Option<UseLimit> {
        let uses = std::num::NonZeroU64::new(self.uses?)?;
        let limit = UseLimit::new(uses);
        Some(match self.refill {
            Some(refill) => limit.with_refill(refill),
            None => limit,
        })
    }
}

fn parse_refill(text: &str) -> Result<Refill, String> {
    text.parse()
        .map_err(|e: tokengate::core::UseLimitError| e.to_string())
}

/// The quotas of `--rate` and `--burst`, paired in order.
fn quotas(rates: &[(u32, Duration)], bursts: &[u32]) -> Result<Vec<RateQuota>, String> {
    if rates.len() != bursts.len() {
        return Err(format!(
            "{} --rate and {} --burst given: each --rate needs its --burst",
            rates.len(),
            bursts.len()
        ));
    }
    rates
        .iter()
        .zip(bursts)
        .map(|(&(count, period), &burst)| {
            let count =
                std::num::NonZeroU32::new(count).ok_or("--rate needs at least 1 request")?;
            let burst = std::num::NonZeroU32::new(burst).ok_or("--burst must be at least 1")?;
            RateQuota::new(count, period, burst).map_err(|e| e.to_string())
        })
        .collect()
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{} is not KEY=VALUE", Echo::new(text, 60)))?;
    Ok((key.to_owned(), value.to_owned()))
}

impl Issue {
    pub(crate) fn quotas(&self) -> Result<Vec<RateQuota>, String> {
        quotas(&self.rate, &self.burst)
    }
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
        .map_err(|e: tokengate::core::ScopeError| e.to_string())
}

fn parse_audience(text: &str) -> Result<Audience, String> {
    text.parse()
        .map_err(|e: tokengate::core::AudienceError| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{} is not a duration like 30d or 1h", Echo::new(text, 40)))
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "{} is not an RFC 3339 time like 2027-01-31T00:00:00Z",
            Echo::new(text, 40)
        )
    })
}

fn parse_thumbprint(text: &str) -> Result<Thumbprint, String> {
    text.parse()
        .map_err(|e: tokengate::core::ThumbprintError| e.to_string())
}

/// The binding `--dpop-jkt` or `--cert-sha256` names (clap refuses both).
pub(crate) fn binding(dpop_jkt: Option<Thumbprint>, cert: Option<Thumbprint>) -> Option<Binding> {
    dpop_jkt
        .map(Binding::Dpop)
        .or(cert.map(Binding::Certificate))
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    tokengate::ipfilter::parse_net(text).map_err(|e| e.to_string())
}

fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    tokengate::config::parse_rate(text).map_err(|e| e.to_string())
}
