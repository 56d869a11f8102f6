//! How every example server starts and stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokengate::audit::{JsonLinesSink, Overflow};
use tokengate::core::Audience;
use tokengate::deployment::{Database, DeploymentBuilder, Readiness, SetupError};
use tokengate::ipfilter::{IpRules, ResolveClientIpLayer};
use tokengate::redis::RedisRateState;
use tokengate::store::IssuedToken;
use tokengate::{Deployment, ScopePolicy, TokenSpec};

use crate::{Admin, OpsArgs};

/// The flags every example server takes, flattened into its arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The token database, shared with the `tokengate` CLI: a SQLite file,
    /// or a `postgres://` URL shared by every instance.
    #[arg(long, default_value = "./tokengate.db")]
    pub db: Database,
    /// The pepper file, for PostgreSQL (else TOKENGATE_PEPPER); created,
    /// private, on a first start. A SQLite database keeps its own beside it.
    #[arg(long)]
    pub pepper_file: Option<PathBuf>,
    /// The JSON-lines audit file.
    #[arg(long, default_value = "./audit.jsonl")]
    pub audit_log: PathBuf,
    /// What a full audit queue does: `block` (a request waits up to 5 s for
    /// room, then gets 503; no record is lost) or `drop` (the record is
    /// dropped and counted in tokengate_audit_records_total{result="dropped"}).
    #[arg(long, default_value = "block", value_parser = parse_overflow)]
    pub audit_overflow: Overflow,
    /// Records queued between requests and the audit writer (at least 1).
    #[arg(long, default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_capacity: u32,
    /// This service's audience: tokens must list it.
    #[arg(long, default_value = "notes")]
    pub audience: String,
    /// A proxy whose X-Forwarded-For is trusted (CIDR, repeatable).
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// Only these client networks may call (CIDR, repeatable).
    #[arg(long = "allow-ip")]
    pub allow_ips: Vec<String>,
    /// These client networks may not call (CIDR, repeatable; wins over --allow-ip).
    #[arg(long = "deny-ip")]
    pub deny_ips: Vec<String>,
    /// The rate state shared by every instance.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// How DPoP proofs are checked.
    #[command(flatten)]
    pub dpop: crate::DpopArgs,
    /// How per-token usage is kept, and webhooks delivered.
    #[command(flatten)]
    pub usage: UsageArgs,
    /// Logs and the admin listener.
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// Per-token usage (`tokengate usage`): requests by hour and outcome,
/// counted in memory and added to the store in batches; and the webhook
/// outbox (`tokengate webhooks`), posted from here.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// How often counted usage is added to the store (at least 100ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub usage_flush: Duration,
    /// How long per-token usage is kept (at least 1h; older hours are
    /// removed once an hour).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub usage_retention: Duration,
    /// Count no per-token usage.
    #[arg(long)]
    pub no_usage: bool,
    /// How often the store's webhook outbox is polled for deliveries due
    /// (at least 100ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_poll: Duration,
    /// Post no webhook deliveries from this server (another server on the
    /// same store does).
    #[arg(long)]
    pub no_webhooks: bool,
    /// How long before its expiry a token's `token.expiring` event is sent.
    #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
    pub webhook_expiring_within: Duration,
}

impl UsageArgs {
    /// `builder` keeping usage as these flags say.
    pub fn apply(&self, builder: DeploymentBuilder) -> DeploymentBuilder {
        let builder = builder
            .usage_flush(self.usage_flush)
            .usage_retention(self.usage_retention)
            .webhook_poll((!self.no_webhooks).then_some(self.webhook_poll))
            .webhook_expiring_within(self.webhook_expiring_within);
        if self.no_usage {
            builder.no_usage_counts()
        } else {
            builder
        }
    }
}

/// `--audit-overflow`: `block` or `drop`.
fn parse_overflow(value: &str) -> Result<Overflow, String> {
    match value {
        "block" => Ok(Overflow::Block),
        "drop" => Ok(Overflow::Drop),
        other => Err(format!(
            "{other:?} is not an overflow policy: use block or drop"
        )),
    }
}

/// Where rate limits are shared, flattened into each server's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Share rate limits with every instance using this Redis
    /// (`redis://host:port`); without it each instance limits on its own.
    #[arg(long)]
    pub redis: Option<String>,
    /// The Redis key prefix of this deployment's rate limits.
    #[arg(long, default_value = "tokengate")]
    pub redis_prefix: String,
    /// How long a Redis call may take (milliseconds) before the instance
    /// decides with its own limits instead.
    #[arg(long, default_value_t = 50)]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    /// Checks the flags, before anything is bound or opened.
    pub fn check(&self) -> Result<(), SetupError> {
        self.state().map(drop)
    }

    /// The shared rate state, when `--redis` names one (not yet
    /// connected). Its metrics are registered here, once: make it after
    /// the recorder is installed.
    pub fn state(&self) -> Result<Option<RedisRateState>, SetupError> {
        let Some(url) = &self.redis else {
            return Ok(None);
        };
        Ok(Some(
            RedisRateState::new(url)?
                .prefix(&self.redis_prefix)?
                .timeout(Duration::from_millis(self.redis_timeout_ms)),
        ))
    }
}

/// A server as every example starts it: each flag checked before anything
/// is opened, bound or written; then its port bound (a second server on it
/// fails before it writes anything), the admin listener bound (its metrics
/// recorder in before any layer registers a counter), the deployment open,
/// the policy's scopes registered (so `tokengate issue` refuses a scope no
/// server accepts), and a demo token issued on a first start of the
/// embedded store (a shared database is set up with the CLI, and no
/// instance prints a token).
#[derive(Debug)]
pub struct Instance {
    /// The store, cache, lifecycle and audit file.
    pub deployment: Deployment,
    /// The API's listener.
    pub listener: tokio::net::TcpListener,
    /// Its address.
    pub addr: SocketAddr,
    /// `--audience`.
    pub audience: Audience,
    /// `--trusted-proxy`.
    pub client_ip: ResolveClientIpLayer,
    /// `--allow-ip` and `--deny-ip`.
    pub ip_rules: IpRules,
    /// `--redis`: the rate state (and use counter) shared by every instance.
    pub redis: Option<RedisRateState>,
    /// The demo token of a first start, to show once.
    pub demo: Option<IssuedToken>,
    admin: Option<Admin>,
    name: &'static str,
    audit_log: PathBuf,
}

impl Instance {
    /// Starts `name` on `listen` with `args`, under `policy` (check the
    /// server's own flags first).
    pub async fn start(
        name: &'static str,
        args: &ServerArgs,
        listen: SocketAddr,
        policy: &ScopePolicy,
    ) -> Result<Self, SetupError> {
        let audience: Audience = args.audience.parse()?;
        let client_ip = ResolveClientIpLayer::trusted_proxies(&args.trusted_proxies)?;
        let ip_rules = IpRules::from_lists(&args.allow_ips, &args.deny_ips)?;
        args.redis.check()?;
        args.dpop.settings()?;
        let demo = demo_spec(&audience)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let admin = Admin::bind(&args.ops).await?;
        // Made after the recorder is in: its counters are registered once.
        let redis = args.redis.state()?;
        let mut builder = args
            .usage
            .apply(Deployment::builder(args.db.clone()))
            .audit_log(&args.audit_log)
            .audit_sink(
                JsonLinesSink::builder()
                    .overflow(args.audit_overflow)
                    .capacity(args.audit_capacity as usize),
            );
        if let Some(file) = &args.pepper_file {
            builder = builder.pepper_file(file);
        }
        let deployment = builder.open().await?;
        deployment.register_scopes(policy).await?;
        let demo = match args.db {
            Database::Sqlite(_) => deployment.issue_if_empty(demo).await?,
            _ => None,
        };
        Ok(Self {
            deployment,
            listener,
            addr,
            audience,
            client_ip,
            ip_rules,
            redis,
            demo,
            admin,
            name,
            audit_log: args.audit_log.clone(),
        })
    }

    /// Starts the admin listener (its readiness checks the store, its
    /// feed and the Redis rate state) and says where everything listens:
    /// the admin line first, so whoever waits for the listening line has
    /// both. `shown` is how the API's address is written. Answers the
    /// API's listener to serve on, and what stops the instance after.
    pub fn announce(self, shown: &str) -> Result<(tokio::net::TcpListener, Stopping), SetupError> {
        let mut readiness: Readiness = self.deployment.readiness();
        if let Some(redis) = &self.redis {
            readiness = readiness.redis(redis.clone());
        }
        if let Some(admin) = self.admin {
            println!(
                "{} admin (/healthz, /readyz, /metrics) on http://{}",
                self.name,
                admin.local_addr()?
            );
            admin.serve(readiness);
        }
        println!("{} listening on {shown}", self.name);
        let stopping = Stopping {
            deployment: self.deployment,
            name: self.name,
            audit_log: self.audit_log,
        };
        Ok((self.listener, stopping))
    }
}

/// What an announced instance needs once its server has stopped.
#[derive(Debug)]
pub struct Stopping {
    deployment: Deployment,
    name: &'static str,
    audit_log: PathBuf,
}

impl Stopping {
    /// Writes pending usage, flushes the audit file, and says so.
    pub async fn stop(self) {
        self.deployment.shutdown().await;
        println!(
            "{} stopped; audit log flushed to {}",
            self.name,
            self.audit_log.display()
        );
    }
}

/// The demo token of a first start: notes:read notes:write for
/// `audience`, valid 24 h.
fn demo_spec(audience: &Audience) -> Result<TokenSpec, SetupError> {
    Ok(TokenSpec::new("demo", "demo-user")
        .scopes(["notes:read".parse()?, "notes:write".parse()?])
        .audiences([audience.clone()])
        .expiry(tokengate::store::Expiry::After(Duration::from_secs(
            24 * 3600,
        ))))
}
