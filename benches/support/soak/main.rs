//! The soak driver (`benches/soak.sh`): three axum-notes instances on one
//! token store and one Redis, under mixed load from a client of its own,
//! with faults injected on a schedule (`faults.rs`); then what held and
//! what did not, as a table. Three runs: PostgreSQL without faults (the
//! baseline), PostgreSQL with every fault, and the embedded SQLite store
//! with the faults that apply to it. Exits 1 when an assertion fails.
//!
//! Traffic goes to 127.0.0.1 only; every loop is bounded by the run's
//! deadline. Needs the optimised binaries of axum-notes and tokengate
//! beside this one (the script builds them), PostgreSQL and Redis as the
//! tests find them (`TOKENGATE_POSTGRES_URL`, `TOKENGATE_REDIS_URL`), the
//! commands that stop and start them (`SOAK_PG_START`, `SOAK_REDIS_START`,
//! with the machine's defaults), and root for the audit disks (tmpfs).
//!
//! `DURATION` (default 60s) is the faulted PostgreSQL run's length;
//! `BASELINE` (default a quarter of it, 15 s to 150 s) and
//! `SQLITE_DURATION` (default half of it, 30 s to 300 s) the others';
//! `SOAK_RUNS` (default `baseline,postgres,sqlite`) which of them.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

mod cluster;
mod faults;
mod load;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokengate_postgres::testing::TestDatabase;
use tokengate_store::testing::Proxy;

use cluster::{Cli, Cluster, Instance, Mounts, Store, free_ports, verify_audit};
use faults::{Targets, schedule};
use load::{Shared, Tokens, spawn_changes, spawn_clients, spawn_samplers};
use report::{Calm, End, Report, USES};

/// One run.
struct Plan {
    label: &'static str,
    store: Store,
    faults: bool,
    duration: Duration,
}

fn env_duration(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|d| humantime::parse_duration(&d).ok())
}

fn main() {
    let duration = env_duration("DURATION").unwrap_or(Duration::from_secs(60));
    let clamp = |d: Duration, low: u64, high: u64| {
        d.clamp(Duration::from_secs(low), Duration::from_secs(high))
    };
    let plans = [
        Plan {
            label: "PostgreSQL, no faults",
            store: Store::Postgres,
            faults: false,
            duration: env_duration("BASELINE").unwrap_or(clamp(duration / 4, 15, 150)),
        },
        Plan {
            label: "PostgreSQL, faults",
            store: Store::Postgres,
            faults: true,
            duration,
        },
        Plan {
            label: "SQLite, faults",
            store: Store::Sqlite,
            faults: true,
            duration: env_duration("SQLITE_DURATION").unwrap_or(clamp(duration / 2, 30, 300)),
        },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // SOAK_RUNS=postgres,sqlite (say) runs only those; the comparison
    // needs the baseline.
    let runs = std::env::var("SOAK_RUNS").unwrap_or_else(|_| "baseline,postgres,sqlite".into());
    let mut failures = 0;
    let mut calm = Vec::new();
    for (plan, name) in plans.iter().zip(["baseline", "postgres", "sqlite"]) {
        if !runs.split(',').any(|r| r.trim() == name) {
            continue;
        }
        let (failed, figures) = runtime.block_on(run(plan));
        failures += failed;
        calm.push((plan.label, figures));
    }
    let base = calm.first().map(|c| c.1).unwrap_or_default();
    println!("\n## Outside fault windows, beside the no-fault run\n");
    println!("| run | answers/s | p50 | p99 | answers/s vs no faults |\n|---|---|---|---|---|");
    for (label, c) in &calm {
        println!(
            "| {label} | {:.0} | {:.1} ms | {:.1} ms | {:.2}× |",
            c.per_second,
            c.p50.as_secs_f64() * 1000.0,
            c.p99.as_secs_f64() * 1000.0,
            c.per_second / base.per_second.max(1.0)
        );
    }
    if failures > 0 {
        eprintln!("soak: {failures} assertion(s) failed");
        std::process::exit(1);
    }
}

/// Runs `plan`: its failed assertions and its figures outside faults.
async fn run(plan: &Plan) -> (usize, Calm) {
    println!(
        "\n## {} ({} s)",
        plan.label,
        plan.duration.as_secs_f64().round()
    );
    let here = std::env::current_exe().unwrap();
    let release = here.parent().unwrap().parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!(
        "tokengate-soak-{}-{}",
        std::process::id(),
        plan.label.replace([' ', ','], "")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let redis =
        std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // The audit folders of instances 0 (drop) and 1 (block) on small
    // filesystems of their own, to fill.
    let mut mounts = Mounts::default();
    let audit_dirs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("audit-{i}"))).collect();
    let audit_mounts: Vec<Option<PathBuf>> = audit_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| (plan.faults && i < 2 && mounts.mount(d)).then(|| d.clone()))
        .collect();
    for d in &audit_dirs {
        std::fs::create_dir_all(d).unwrap();
    }

    let (db, postgres, global, server_db) = match plan.store {
        Store::Postgres => {
            let db = TestDatabase::create().await.expect("PostgreSQL answers");
            let proxy = Proxy::start(&db.target()).await;
            let pepper = dir.join("pepper").display().to_string();
            let global = vec![
                "--db".to_owned(),
                db.url().to_owned(),
                "--pepper-file".to_owned(),
                pepper.clone(),
            ];
            let server = vec![
                "--db".to_owned(),
                db.url_via(&proxy.addr().to_string()),
                "--pepper-file".to_owned(),
                pepper,
            ];
            let name = db.name().to_owned();
            (Some(db), Some((name, proxy)), global, server)
        }
        Store::Sqlite => {
            let file = dir.join("tokens.db").display().to_string();
            let global = vec!["--db".to_owned(), file];
            (None, None, global.clone(), global)
        }
    };
    // Each instance's port and admin port, all distinct.
    let reserved = free_ports(6);
    let mut cluster = Cluster {
        bin: release.join("axum-notes"),
        cli: Cli {
            bin: release.join("tokengate"),
            global,
        },
        server_db,
        redis: redis.clone(),
        prefix: format!("tg-soak-{}-{}", std::process::id(), plan.faults),
        instances: (0..3)
            .map(|i| Instance {
                child: None,
                port: reserved[2 * i],
                admin: reserved[2 * i + 1],
                audit: audit_dirs[i].join("audit.jsonl"),
                audit_flags: match i {
                    0 => vec!["--audit-overflow", "drop", "--audit-capacity", "256"],
                    1 => vec!["--audit-overflow", "block", "--audit-capacity", "256"],
                    _ => vec![],
                },
                killed: false,
            })
            .collect(),
        dir: dir.clone(),
    };
    cluster.cli.run(&["init"]).unwrap();
    for i in 0..3 {
        cluster.start(i);
    }
    let tokens = Arc::new(issue_tokens(&cluster, plan.duration));
    let targets = Targets {
        pg_start: std::env::var("SOAK_PG_START").unwrap_or_else(|_| {
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start".into()
        }),
        redis_start: std::env::var("SOAK_REDIS_START").unwrap_or_else(|_| "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log".into()),
        postgres,
        audit_mounts,
    };

    let ports: Vec<u16> = cluster.instances.iter().map(|i| i.port).collect();
    let admins: Vec<u16> = cluster.instances.iter().map(|i| i.admin).collect();
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    // Instance 0 (never restarted): its RSS at each tenth of the run.
    let rss_by_tenth = {
        let (pid, shared, tenth) = (
            cluster.instances[0]
                .child
                .as_ref()
                .map_or(0, std::process::Child::id),
            Arc::clone(&shared),
            plan.duration / 10,
        );
        std::thread::spawn(move || {
            let mut kib = Vec::new();
            for t in 1..=10 {
                while start.elapsed() < tenth * t && !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                kib.push(cluster::rss_of(pid));
            }
            kib
        })
    };
    let clients = spawn_clients(&tokens, &shared, &ports, start);
    let samplers = spawn_samplers(&shared, admins, start);
    let changes = spawn_changes(&tokens, &shared, cluster.cli.clone(), ports, start);

    // Warm-up, then the faults on their schedule.
    let sleep_until = |t: Duration| async move {
        let now = start.elapsed();
        if t > now {
            tokio::time::sleep(t - now).await;
        }
    };
    sleep_until(plan.duration.mul_f64(0.05)).await;
    let rss_warm: Vec<u64> = (0..3).map(|i| cluster.rss_kib(i)).collect();
    let mut windows = Vec::new();
    let mut skipped = Vec::new();
    if plan.faults {
        for (fraction, fault) in schedule(plan.store) {
            sleep_until(plan.duration.mul_f64(fraction)).await;
            match fault.inject(&mut cluster, &targets, start).await {
                Some(window) => windows.push(window),
                None => skipped.push(fault.skipped()),
            }
        }
    }
    sleep_until(plan.duration).await;

    // The end: each instance as it is, then everything stopped.
    let restarted: Vec<bool> =
        windows
            .iter()
            .map(|w| w.name.clone())
            .fold(vec![false; 3], |mut r, name| {
                for (i, flag) in r.iter_mut().enumerate() {
                    *flag |= name.starts_with(&format!("instance {i} SIG"));
                }
                r
            });
    let mut ends: Vec<End> = (0..3)
        .map(|i| End {
            rss_warm_kib: rss_warm[i],
            rss_kib: cluster.rss_kib(i),
            fds: cluster.fds(i),
            threads: cluster.threads(i),
            ready: load::http_status(cluster.instances[i].admin, "/readyz", None) == Some(200),
            dropped: cluster.metric(i, "tokengate_audit_records_total", "dropped"),
            fallbacks: cluster.metric(i, "tokengate_rate_state_fallbacks_total", ""),
            verified: (None, String::new()),
            restarted: restarted[i],
        })
        .collect();
    shared.stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let _ = changes.join();
    let rss_by_tenth = rss_by_tenth.join().unwrap_or_default();
    for sampler in samplers {
        let _ = sampler.join();
    }
    let elapsed = start.elapsed();
    for i in 0..3 {
        cluster.signal(i, "-TERM");
    }
    for (i, end) in ends.iter_mut().enumerate() {
        end.verified = verify_audit(&cluster.cli, &cluster.instances[i].audit);
    }
    let audited_fallbacks = cluster
        .instances
        .iter()
        .map(|i| {
            std::fs::read_to_string(&i.audit).map_or(0, |t| {
                t.lines()
                    .filter(|l| l.contains("\"tokengate.rate_fallback\""))
                    .count()
            })
        })
        .sum();

    let take =
        |m: &std::sync::Mutex<Vec<(Duration, Duration)>>| std::mem::take(&mut *m.lock().unwrap());
    let report = Report {
        seen: std::mem::take(&mut *shared.seen.lock().unwrap()),
        windows,
        skipped,
        changed: shared.changed.lock().unwrap().clone(),
        elapsed,
        ends,
        obeyed: take(&shared.obeyed),
        rotations: take(&shared.rotations),
        probes: shared
            .probes
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect(),
        samples: std::mem::take(&mut *shared.samples.lock().unwrap()),
        audited_fallbacks,
        faults: plan.faults,
        rss_by_tenth,
    };
    let (failures, calm) = report.print(&cluster);
    let _ = tokengate_tests::remove_redis_keys(&redis, &cluster.prefix).await;
    drop(targets);
    drop(db);
    if failures == 0 {
        drop(mounts);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // The audit files outlive their filesystems.
        for (i, instance) in cluster.instances.iter().enumerate() {
            let _ = std::fs::copy(&instance.audit, dir.join(format!("audit-{i}.jsonl")));
        }
        drop(mounts);
        eprintln!(
            "soak: {failures} assertion(s) failed in \"{}\"; files kept in {}",
            plan.label,
            dir.display()
        );
    }
    (failures, calm)
}

/// The tokens the load uses; a victim for each second of the run (at
/// most 600), issued four at a time.
fn issue_tokens(cluster: &Cluster, duration: Duration) -> Tokens {
    /// `extra`, and a quota no load reaches.
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [extra, &["--rate", "100000/s", "--burst", "100000"][..]].concat()
    }
    let victims = (duration.as_secs() as usize).clamp(10, 600);
    let victims: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                scope.spawn(move || {
                    (w..victims)
                        .step_by(4)
                        .map(|v| {
                            (
                                v,
                                cluster.issue(
                                    &format!("victim-{v}"),
                                    &with(&["--scope", "notes:read"]),
                                ),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, String)> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort();
        all.into_iter().map(|(_, t)| t).collect()
    });
    Tokens {
        read: cluster.issue(
            "reader",
            &with(&[
                "--scope",
                "notes:read",
                "--scope",
                "notes:write",
                "--scope",
                "notes:admin",
            ]),
        ),
        limited: cluster.issue(
            "limited",
            &["--scope", "notes:read", "--rate", "60/min", "--burst", "10"],
        ),
        uses: cluster.issue(
            "uses",
            &with(&["--scope", "notes:read", "--uses", &USES.to_string()]),
        ),
        admin: cluster.issue("admin", &with(&["--scope", "tokengate:admin"])),
        rotating: cluster.issue("rotating", &with(&["--scope", "notes:read"])),
        victims,
    }
}
