//! What tokengate's servers share (the example servers and `tokengate
//! serve`): their common flags, how they start and stop ([`Instance`]),
//! logs on stderr (`RUST_LOG`, `--log-format`), the Prometheus recorder,
//! and the admin listener serving `/healthz`, `/readyz` and `/metrics`;
//! and the authorization service itself ([`serve`]).
#![allow(
    clippy::print_stdout,
    reason = "servers that tell their operator where they listen"
)]

mod dpop;
mod leaks;
pub mod serve;
mod server;

pub use dpop::DpopArgs;
pub use leaks::LeaksArgs;
pub use server::{Instance, RedisArgs, ServerArgs, Stopping, UsageArgs};

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokengate::deployment::{Readiness, ops_router};

/// How often histogram samples are drained into their buckets (the
/// exporter's own default when it runs its listener).
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The operator's flags, flattened into each server's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Serve `/healthz`, `/readyz` and `/metrics` (Prometheus text) on this
    /// address, apart from the API. Off unless given: a metrics recorder
    /// is installed only then.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// How logs are written to stderr: `pretty` for people, `json` for
    /// collectors. `RUST_LOG` filters them (default `warn`; the
    /// per-request spans are `tokengate=debug`).
    #[arg(long, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, with the current span's fields.
    Json,
}

/// Installs the log subscriber: `RUST_LOG` or `warn`, so that the
/// library's warnings (store unavailable, feed lost, audit write failed)
/// are visible by default.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber (a test harness's) is left in place.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// The admin listener, bound; [`Admin::serve`] starts it once the store
/// is open.
#[derive(Debug)]
pub struct Admin {
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
}

impl Admin {
    /// With `--admin-listen`: installs the Prometheus recorder (before any
    /// layer is built, so their counters reach it) and binds the address.
    /// Without it: nothing, and no recorder.
    pub async fn bind(args: &OpsArgs) -> Result<Option<Self>, String> {
        let Some(addr) = args.admin_listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (--admin-listen): {e}"))?;
        let mut builder = PrometheusBuilder::new();
        // Histograms, not the exporter's default summaries: they add up
        // across instances.
        for name in tokengate::core::metric_names::HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(
                    Matcher::Full((*name).to_owned()),
                    tokengate::core::metric_names::DURATION_BUCKETS,
                )
                .map_err(|e| format!("cannot set the buckets of {name}: {e}"))?;
        }
        let metrics = builder
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        // The recorder keeps each histogram's samples until they are
        // drained into its buckets: by a scrape, or here. Without it a
        // server nobody scrapes grows by every sample (a Redis round trip,
        // a store lookup), and so does the work of the next scrape.
        let upkeep = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        tokengate::check::describe_metrics();
        Ok(Some(Self { listener, metrics }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/healthz`, `/readyz` (from `readiness`) and `/metrics` on a
    /// task of its own.
    pub fn serve(self, readiness: Readiness) {
        let handle = self.metrics;
        let app = ops_router(readiness, move || handle.render());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(self.listener, app).await {
                tracing::error!(%error, "the admin listener stopped");
            }
        });
    }
}
