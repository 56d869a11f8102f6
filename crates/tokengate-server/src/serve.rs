//! `tokengate serve`: the Gate of a policy file as an authorization
//! service for proxies in front of services in any language.
//!
//! - `/auth`: HTTP forward-auth for Caddy `forward_auth` and Traefik
//!   `ForwardAuth` (any method);
//! - `/auth/nginx`: the same for nginx `auth_request` (refusals other than
//!   401 as 403, with their status and body in headers: see
//!   [`Refusals::Nginx`]);
//! - `/auth/envoy/...`: Envoy's HTTP ext_authz with `path_prefix:
//!   /auth/envoy` (the original method and path are the request's own);
//! - with `--grpc-listen`: Envoy's ext_authz gRPC service, and the
//!   standard gRPC health service beside it;
//! - with `--secret-scanning`: the leak receivers under `/leaks`
//!   ([`tokengate::leaks`]).
//!
//! On the same store, cache, rate state, audit file, metrics and
//! readiness as the example servers. SIGHUP reads the policy file again:
//! a valid file is in force from the next check, an invalid one is logged
//! and the old policy stays; a check in flight finishes under the policy
//! it started with.
#![allow(
    clippy::print_stdout,
    reason = "a server that tells its operator where it listens"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokengate::audit::{CountUsage, JsonLinesSink};
use tokengate::config::GateConfig;
use tokengate::deployment::{AnyStore, Database, SetupError};
use tokengate::gate::GateService;
use tokengate::rate::{MemoryRateState, RateState};
use tokengate::sidecar::{Admitted, Current, ExtAuthz, ForwardAuth, Refusals};
use tokengate::store::SharedUses;
use tokengate::{Deployment, ScopePolicy};

use crate::{Admin, LeaksArgs, OpsArgs, RedisArgs};

/// `tokengate serve`'s flags (the database and pepper file are the CLI's
/// own `--db` and `--pepper-file`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The policy file (TOML): audience, routes, quotas, networks,
    /// headers, audit. SIGHUP reads it again.
    #[arg(long)]
    pub config: PathBuf,
    /// Where the forward-auth endpoints (/auth, /auth/nginx) listen.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub listen: SocketAddr,
    /// Also serve Envoy's ext_authz gRPC service (and gRPC health) here.
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// The JSON-lines audit file (default: the policy's `[audit] file`,
    /// else audit.jsonl beside a SQLite database).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// The rate state shared by every instance.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// How DPoP proofs are checked.
    #[command(flatten)]
    pub dpop: crate::DpopArgs,
    /// Secret-scanning receivers under /leaks on the forward-auth listener.
    #[command(flatten)]
    pub leaks: LeaksArgs,
    /// How per-token usage is kept.
    #[command(flatten)]
    pub usage: crate::UsageArgs,
    /// Logs and the admin listener.
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// The check every endpoint runs: the policy's Gate around [`Admitted`].
type Check<R> = GateService<Admitted, AnyStore, ScopePolicy, CountUsage<JsonLinesSink>, R>;

/// Runs `tokengate serve` on `db` until SIGTERM or SIGINT. Every flag and
/// the policy file are checked before anything is opened, bound or
/// written.
pub async fn serve(
    db: Database,
    pepper_file: Option<PathBuf>,
    args: ServeArgs,
) -> Result<(), SetupError> {
    let config = GateConfig::load(&args.config)?;
    args.redis.check()?;
    args.leaks.check()?;
    args.dpop.settings()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--listen): {e}", args.listen))?;
    let grpc = match args.grpc_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (--grpc-listen): {e}"))?,
        ),
    };
    let admin = Admin::bind(&args.ops).await?;
    // Made after the recorder is in: its counters are registered once.
    let redis = args.redis.state()?;
    let mut builder = args.usage.apply(Deployment::builder(db)).config(&config);
    if let Some(file) = &args.audit_log {
        builder = builder.audit_log(file);
    }
    if let Some(file) = &pepper_file {
        builder = builder.pepper_file(file);
    }
    let deployment = builder.open().await?;
    let mut readiness = deployment.readiness();
    let receivers = receivers(&deployment, &config, &args.leaks)?;
    let parts = Parts {
        deployment,
        config_path: args.config.clone(),
        remove_authorization: config.remove_authorization(),
        receivers,
        dpop: args.dpop.settings()?,
        replay: redis.as_ref().map(|shared| {
            let replay: Arc<dyn tokengate::store::SharedReplay> = Arc::new(shared.replay());
            replay
        }),
    };
    let servers = match redis {
        None => {
            let state = MemoryRateState::default();
            parts.run(config, state, None, listener, grpc).await?
        }
        Some(shared) => {
            readiness = readiness.redis(shared.clone());
            let uses: Arc<dyn SharedUses> = Arc::new(shared.uses());
            parts
                .run(config, shared, Some(uses), listener, grpc)
                .await?
        }
    };
    if let Some(admin) = admin {
        println!(
            "tokengate serve: admin (/healthz, /readyz, /metrics) on http://{}",
            admin.local_addr()?
        );
        admin.serve(readiness);
    }
    for line in &servers.lines {
        println!("{line}");
    }
    let deployment = servers.wait().await?;
    deployment.shutdown().await;
    println!("tokengate serve stopped; audit log flushed");
    Ok(())
}

/// The leak receivers (`--secret-scanning`) behind a Gate of their own:
/// public, with the policy's client-address resolution, networks and
/// audit file (each report's request record beside its leak records).
fn receivers(
    deployment: &Deployment,
    config: &GateConfig,
    leaks: &LeaksArgs,
) -> Result<Option<axum::Router>, SetupError> {
    let Some(router) = leaks.router(deployment.lifecycle.clone(), deployment.audit.clone())? else {
        return Ok(None);
    };
    let policy = tokengate::leaks::policy_rules(ScopePolicy::builder()).build()?;
    let gate = tokengate::Gate::new(
        deployment.authenticate(config.audience().clone()),
        tokengate::EnforceScopeLayer::new(policy),
    )
    .client_ip(config.client_ip())
    .ip_filter(tokengate::ipfilter::IpFilterLayer::new(config.ip_rules()))
    .audit(tokengate::audit::AuditLayer::new(deployment.audit_sink()));
    Ok(Some(router.layer(gate)))
}

/// What every policy's Gate is built on.
struct Parts {
    deployment: Deployment,
    config_path: PathBuf,
    remove_authorization: bool,
    /// The leak receivers, served beside the checks when on.
    receivers: Option<axum::Router>,
    /// How DPoP proofs are checked (`None`: not read).
    dpop: Option<tokengate::authenticate::Dpop>,
    /// The DPoP proofs every instance has seen, with a Redis state.
    replay: Option<Arc<dyn tokengate::store::SharedReplay>>,
}

/// The servers, started.
struct Running {
    lines: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    reloads: tokio::task::JoinHandle<()>,
    parts: Arc<Parts>,
}

impl Running {
    /// Waits for every server to stop (SIGTERM or SIGINT), then for the
    /// reloads to stop; the deployment, to shut down.
    async fn wait(self) -> Result<Deployment, SetupError> {
        for task in self.tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        self.reloads.abort();
        let _ = self.reloads.await;
        let parts = Arc::try_unwrap(self.parts)
            .map_err(|_| "the policy reloader still holds the deployment")?;
        Ok(parts.deployment)
    }
}

impl Parts {
    /// The Gate of `config` around [`Admitted`], on `state`.
    async fn check<R: RateState + Clone>(
        &self,
        config: &GateConfig,
        state: &R,
        uses: Option<&Arc<dyn SharedUses>>,
    ) -> Result<Check<R>, SetupError> {
        let mut gate = self
            .deployment
            .gate_from_config(config)
            .await?
            .dpop(self.dpop.clone());
        if let Some(uses) = uses {
            gate = gate.shared_uses(Arc::clone(uses));
        }
        if let Some(replay) = &self.replay {
            gate = gate.shared_replay(Arc::clone(replay));
        }
        Ok(tokengate::sidecar::checking(
            &gate.rate_state(state.clone()),
        ))
    }

    async fn run<R: RateState + Clone>(
        self,
        config: GateConfig,
        state: R,
        uses: Option<Arc<dyn SharedUses>>,
        listener: tokio::net::TcpListener,
        grpc: Option<tokio::net::TcpListener>,
    ) -> Result<Running, SetupError> {
        let current = Current::new(self.check(&config, &state, uses.as_ref()).await?);
        let mut lines = Vec::new();
        let mut tasks = Vec::new();

        let mut app = axum::Router::new()
            .route_service("/auth", ForwardAuth::new(current.clone()))
            .route_service(
                "/auth/nginx",
                ForwardAuth::new(current.clone()).refusals(Refusals::Nginx),
            )
            .route_service(
                "/auth/envoy/{*path}",
                ForwardAuth::new(current.clone()).path_prefix("/auth/envoy"),
            );
        let mut leaks = "";
        if let Some(receivers) = &self.receivers {
            app = app.merge(receivers.clone());
            leaks = "; leaks: /leaks/github";
        }
        // Last: whoever waits for the listening line has every address.
        let listening = format!(
            "tokengate serve listening on http://{} (forward-auth: /auth; nginx: /auth/nginx; Envoy HTTP: /auth/envoy{leaks})",
            listener.local_addr()?
        );
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            // Each answer at once, not after the proxy's delayed ACK.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot set TCP_NODELAY on a proxy's connection");
            }
        });
        tasks.push(tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(tokengate::shutdown_signal())
            .await
            .map_err(|e| format!("the forward-auth listener stopped: {e}"))
        }));

        if let Some(grpc) = grpc {
            lines.push(format!(
                "tokengate serve: ext_authz (gRPC) on {}",
                grpc.local_addr()?
            ));
            let ext_authz = ExtAuthz::new(current.clone(), self.remove_authorization);
            let (_reporter, health) = tonic_health::server::health_reporter();
            // Each answer at once: a refusal written in two parts would
            // otherwise wait for the proxy's delayed ACK (about 40 ms).
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
            tasks.push(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(ext_authz.into_server())
                    .serve_with_incoming_shutdown(incoming, tokengate::shutdown_signal())
                    .await
                    .map_err(|e| format!("the ext_authz listener stopped: {e}"))
            }));
        }

        lines.push(listening);
        let parts = Arc::new(self);
        let reloads = Arc::clone(&parts).follow_reloads(state, uses, current, config);
        Ok(Running {
            lines,
            tasks,
            reloads,
            parts,
        })
    }
}

impl Parts {
    /// Follows SIGHUP on a task of its own, reading the policy file again
    /// each time.
    fn follow_reloads<R: RateState + Clone>(
        self: Arc<Self>,
        state: R,
        uses: Option<Arc<dyn SharedUses>>,
        current: Current<Check<R>>,
        first: GateConfig,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot follow SIGHUP: the policy file will not be reloaded");
                return;
            };
            while hangups.recv().await.is_some() {
                self.reload(&first, &state, uses.as_ref(), &current).await;
            }
        })
    }

    /// Reads the policy file again and puts it in force, or keeps the old
    /// policy and says why.
    async fn reload<R: RateState + Clone>(
        &self,
        first: &GateConfig,
        state: &R,
        uses: Option<&Arc<dyn SharedUses>>,
        current: &Current<Check<R>>,
    ) {
        let file = self.config_path.display();
        let config = match GateConfig::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%file, %error, "the policy file was not reloaded; the old policy stays in force");
                return;
            }
        };
        if config.audit() != first.audit()
            || config.remove_authorization() != self.remove_authorization
        {
            tracing::warn!(%file, "[audit] and [upstream] take effect on a restart, not on a reload");
        }
        match self.check(&config, state, uses).await {
            Ok(check) => {
                current.replace(check);
                tracing::warn!(%file, "policy reloaded");
            }
            Err(error) => {
                tracing::error!(%file, %error, "the policy file was not reloaded; the old policy stays in force");
            }
        }
    }
}
