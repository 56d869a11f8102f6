//! The faults, and when each is injected.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokengate_store::testing::Proxy;

use crate::cluster::{Cluster, Store, fill, free, redis_cli, sh, wait_for};
use crate::report::Window;

/// One fault.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Redis `CLIENT PAUSE` for 500 ms: ten times the rate state's
    /// 50 ms timeout.
    RedisPaused,
    /// `pg_terminate_backend` on every connection to the soak's database.
    PostgresConnectionsKilled,
    /// Redis shut down, and started again 2 s later.
    RedisRestarted,
    /// PostgreSQL stopped (fast) and started again.
    PostgresRestarted,
    /// Every byte to and from PostgreSQL delayed 4 s for 4 s: past the
    /// 3 s lookup timeout.
    SlowStore,
    /// The audit file's filesystem full for a while: instance 0 (drop)
    /// or instance 1 (block).
    AuditDiskFull(usize),
    /// SIGTERM, then started again.
    Terminated(usize),
    /// SIGKILL, then started again.
    Killed(usize),
}

/// The faults of a run on `store`, each at a fraction of the run.
pub(crate) fn schedule(store: Store) -> Vec<(f64, Fault)> {
    match store {
        Store::Postgres => vec![
            (0.08, Fault::RedisPaused),
            (0.16, Fault::PostgresConnectionsKilled),
            (0.24, Fault::RedisRestarted),
            (0.32, Fault::PostgresRestarted),
            (0.41, Fault::SlowStore),
            (0.52, Fault::AuditDiskFull(0)),
            (0.61, Fault::AuditDiskFull(1)),
            (0.70, Fault::Terminated(1)),
            (0.80, Fault::Killed(2)),
        ],
        Store::Sqlite => vec![
            (0.10, Fault::RedisPaused),
            (0.25, Fault::RedisRestarted),
            (0.40, Fault::AuditDiskFull(0)),
            (0.55, Fault::AuditDiskFull(1)),
            (0.70, Fault::Terminated(1)),
            (0.82, Fault::Killed(2)),
        ],
    }
}

/// What the faults act on beside the cluster.
pub(crate) struct Targets {
    pub(crate) pg_start: String,
    pub(crate) redis_start: String,
    /// The soak's PostgreSQL database, and the proxy the instances reach
    /// it through.
    pub(crate) postgres: Option<(String, Proxy)>,
    /// The instances' audit folders on filesystems of their own (none
    /// where mounting is not allowed).
    pub(crate) audit_mounts: Vec<Option<PathBuf>>,
}

/// How long the slow store delays each byte, and for how long.
const SLOW: Duration = Duration::from_secs(4);

impl Fault {
    /// Injects the fault, waits for it to pass, and says when it was in
    /// force and which instances should have said they were not ready;
    /// `None` when it cannot be injected here.
    pub(crate) async fn inject(
        self,
        cluster: &mut Cluster,
        targets: &Targets,
        start: Instant,
    ) -> Option<Window> {
        let began = start.elapsed();
        let all = vec![0, 1, 2];
        let (name, unready, extra): (String, Vec<usize>, Duration) = match self {
            Fault::RedisPaused => {
                redis_cli("CLIENT PAUSE 500 ALL");
                tokio::time::sleep(Duration::from_millis(500)).await;
                ("Redis paused 500 ms".into(), vec![], Duration::ZERO)
            }
            Fault::PostgresConnectionsKilled => {
                let (name, _) = targets.postgres.as_ref()?;
                sh(&format!(
                    "psql -h 127.0.0.1 -U postgres -d postgres -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'\""
                ));
                (
                    "PostgreSQL connections killed".into(),
                    vec![],
                    Duration::from_secs(1),
                )
            }
            Fault::RedisRestarted => {
                redis_cli("SHUTDOWN NOSAVE");
                tokio::time::sleep(Duration::from_secs(2)).await;
                sh(&targets.redis_start);
                wait_for(6379);
                ("Redis down 2 s, restarted".into(), all, Duration::ZERO)
            }
            Fault::PostgresRestarted => {
                targets.postgres.as_ref()?;
                sh(
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop -m fast",
                );
                sh(&targets.pg_start);
                wait_for(5432);
                ("PostgreSQL restarted".into(), all, Duration::from_secs(1))
            }
            Fault::SlowStore => {
                let (_, proxy) = targets.postgres.as_ref()?;
                proxy.set_latency(SLOW);
                tokio::time::sleep(SLOW).await;
                proxy.set_latency(Duration::ZERO);
                // Bytes already held back arrive up to SLOW later.
                ("PostgreSQL answering 4 s late".into(), all, SLOW)
            }
            Fault::AuditDiskFull(i) => {
                let dir = targets.audit_mounts.get(i)?.as_ref()?;
                fill(dir);
                // Block: shorter than the 5 s a request waits for room.
                let hold = if i == 0 { 4 } else { 3 };
                tokio::time::sleep(Duration::from_secs(hold)).await;
                free(dir);
                (
                    format!(
                        "instance {i}: audit disk full {hold} s ({})",
                        if i == 0 { "drop" } else { "block" }
                    ),
                    vec![i],
                    Duration::from_secs(1),
                )
            }
            Fault::Terminated(i) => {
                cluster.signal(i, "-TERM");
                cluster.start(i);
                (
                    format!("instance {i} SIGTERM, restarted"),
                    vec![],
                    Duration::ZERO,
                )
            }
            Fault::Killed(i) => {
                cluster.signal(i, "-KILL");
                cluster.instances[i].killed = true;
                cluster.start(i);
                (
                    format!("instance {i} SIGKILL, restarted"),
                    vec![],
                    Duration::ZERO,
                )
            }
        };
        Some(Window {
            name,
            start: began,
            end: start.elapsed() + extra,
            unready,
        })
    }

    /// What the table calls a fault that could not be injected.
    pub(crate) fn skipped(self) -> String {
        match self {
            Fault::AuditDiskFull(i) => {
                format!("instance {i}: audit disk full (no tmpfs: mounting needs root)")
            }
            other => format!("{other:?}"),
        }
    }
}
