//! The soak driver (`benches/soak.sh`): three axum-notes instances on one
//! PostgreSQL database and one Redis, under mixed load from a client of
//! its own for `DURATION`, with faults injected on a schedule; then what
//! held and what did not, as a table. Exits 1 when an assertion fails.
//!
//! Traffic goes to 127.0.0.1 only; every loop is bounded by the run's
//! deadline. Needs the release binaries of axum-notes and tokengate
//! beside this one (the script builds them), PostgreSQL and Redis as the
//! tests find them (`TOKENGATE_POSTGRES_URL`, `TOKENGATE_REDIS_URL`), and
//! the commands that stop and start them (`SOAK_PG_START`,
//! `SOAK_REDIS_START`, with the machine's defaults).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod cluster;
mod report;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate_postgres::testing::TestDatabase;

use cluster::{Cluster, Instance, free_port, redis_cli, sh, wait_for};
use report::{CLIENTS, Kind, Report, Sample, Seen, USES, Window};

/// The tokens the load uses.
struct Tokens {
    read: String,
    limited: String,
    uses: String,
    admin: String,
    victims: Vec<String>,
}

fn main() {
    let duration = std::env::var("DURATION")
        .ok()
        .and_then(|d| humantime::parse_duration(&d).ok())
        .unwrap_or(Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(run(duration));
    std::process::exit(code);
}

async fn run(duration: Duration) -> i32 {
    let here = std::env::current_exe().unwrap();
    let release = here.parent().unwrap().parent().unwrap().to_path_buf();
    let db = TestDatabase::create().await.expect("PostgreSQL answers");
    let dir = std::env::temp_dir().join(format!("tokengate-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let redis =
        std::env::var("TOKENGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut cluster = Cluster {
        bin: release.join("axum-notes"),
        cli: release.join("tokengate"),
        db_url: db.url().to_owned(),
        pepper: dir.join("pepper").display().to_string(),
        redis: redis.clone(),
        prefix: format!("tg-soak-{}", std::process::id()),
        instances: (0..3)
            .map(|i| Instance {
                child: None,
                port: free_port(),
                admin: free_port(),
                audit: dir.join(format!("audit-{i}.jsonl")),
                killed: false,
            })
            .collect(),
        dir: dir.clone(),
    };
    cluster.cli(&["init"]);
    for i in 0..3 {
        cluster.start(i);
    }
    let tokens = Arc::new(Tokens {
        read: cluster.issue(
            "reader",
            &[
                "--scope",
                "notes:read",
                "--scope",
                "notes:write",
                "--rate",
                "100000/s",
                "--burst",
                "100000",
            ],
        ),
        limited: cluster.issue(
            "limited",
            &["--scope", "notes:read", "--rate", "60/min", "--burst", "10"],
        ),
        uses: cluster.issue(
            "uses",
            &[
                "--scope",
                "notes:read",
                "--uses",
                &USES.to_string(),
                "--rate",
                "100000/s",
                "--burst",
                "100000",
            ],
        ),
        admin: cluster.issue(
            "admin",
            &[
                "--scope",
                "tokengate:admin",
                "--rate",
                "100000/s",
                "--burst",
                "100000",
            ],
        ),
        victims: (0..40)
            .map(|v| {
                cluster.issue(
                    &format!("victim-{v}"),
                    &[
                        "--scope",
                        "notes:read",
                        "--rate",
                        "100000/s",
                        "--burst",
                        "100000",
                    ],
                )
            })
            .collect(),
    });
    let ports: Vec<u16> = cluster.instances.iter().map(|i| i.port).collect();
    let revoked: Arc<Mutex<HashMap<usize, Duration>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let probes: Arc<[AtomicUsize; 3]> = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    // The load.
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (tokens, seen, stop, ports) = (
            Arc::clone(&tokens),
            Arc::clone(&seen),
            Arc::clone(&stop),
            ports.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                n += CLIENTS;
                let instance = n % 3;
                let kind = match (n / 3) % 16 {
                    0..=5 => Kind::Read,
                    6 => Kind::Write,
                    7 => Kind::Unknown,
                    8 => Kind::Malformed,
                    9 => Kind::Limited,
                    10 => Kind::Uses,
                    11 => Kind::Admin,
                    _ => Kind::Victim,
                };
                let victim = (kind == Kind::Victim).then_some((n / 48) % tokens.victims.len());
                let (method, path, bearer): (&str, &str, Vec<&str>) = match kind {
                    Kind::Read => ("GET", "/notes", vec![&tokens.read]),
                    Kind::Write => ("POST", "/notes", vec![&tokens.read]),
                    Kind::Unknown => (
                        "GET",
                        "/notes",
                        vec!["tg_000000000000000000000000000000001YrmTe"],
                    ),
                    Kind::Malformed => ("GET", "/notes", vec![&tokens.read, &tokens.read]),
                    Kind::Limited => ("GET", "/notes", vec![&tokens.limited]),
                    Kind::Uses => ("GET", "/notes", vec![&tokens.uses]),
                    Kind::Admin => ("GET", "/admin/tokens?limit=5", vec![&tokens.admin]),
                    Kind::Victim => ("GET", "/notes", vec![&tokens.victims[victim.unwrap_or(0)]]),
                };
                let mut request = http::Request::builder()
                    .method(method)
                    .uri(format!("http://127.0.0.1:{}{path}", ports[instance]));
                for token in bearer {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let body = if kind == Kind::Write {
                    request = request.header("content-type", "application/json");
                    Bytes::from_static(b"{\"text\":\"soak\"}")
                } else {
                    Bytes::new()
                };
                let sent = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request(request.body(Full::new(body)).unwrap()),
                )
                .await;
                let Ok(Ok(response)) = answer else {
                    // No answer (an instance stopping): no record expected.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                let seen_at = start.elapsed();
                seen.lock().unwrap().push(Seen {
                    at: seen_at,
                    instance,
                    kind,
                    status,
                    latency: sent.elapsed(),
                    victim,
                });
            }
        }));
    }

    // Readiness, sampled on every instance four times a second.
    let sampler = {
        let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
        let admins: Vec<u16> = cluster.instances.iter().map(|i| i.admin).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, admin) in admins.iter().enumerate() {
                    let status = http_status(*admin, "/readyz", None);
                    samples.lock().unwrap().push((start.elapsed(), i, status));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    // Revocations during the run: one victim every second, then how long
    // until every instance refuses it.
    let lifecycle = {
        let (revoked, stop, tokens) =
            (Arc::clone(&revoked), Arc::clone(&stop), Arc::clone(&tokens));
        let (refusals, ports, probes) = (Arc::clone(&refusals), ports.clone(), Arc::clone(&probes));
        let cli = (
            cluster.cli.clone(),
            cluster.db_url.clone(),
            cluster.pepper.clone(),
        );
        std::thread::spawn(move || {
            for v in 0..tokens.victims.len() {
                std::thread::sleep(Duration::from_secs(1));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = Command::new(&cli.0)
                    .args([
                        "--db",
                        &cli.1,
                        "--pepper-file",
                        &cli.2,
                        "inspect",
                        &tokens.victims[v],
                    ])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .find_map(|l| l.strip_prefix("id:").map(|s| s.trim().to_owned()))
                    })
                    .ok()
                    .flatten();
                let Some(id) = id else { continue };
                let done = Command::new(&cli.0)
                    .args(["--db", &cli.1, "--pepper-file", &cli.2, "revoke", &id])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if done {
                    let at = start.elapsed();
                    revoked.lock().unwrap().insert(v, at);
                    let delay = refused_everywhere(
                        &ports,
                        &tokens.victims[v],
                        Duration::from_secs(5),
                        &probes[..],
                    );
                    refusals.lock().unwrap().push((at, delay));
                }
            }
        })
    };

    // The faults, on a schedule spread over the run.
    let mut windows = Vec::new();
    let pg_start = std::env::var("SOAK_PG_START").unwrap_or_else(|_| {
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start".into()
    });
    let redis_start = std::env::var("SOAK_REDIS_START").unwrap_or_else(|_| "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log".into());
    let at = |fraction: f64| duration.mul_f64(fraction);
    let sleep_until = |t: Duration| async move {
        let now = start.elapsed();
        if t > now {
            tokio::time::sleep(t - now).await;
        }
    };

    sleep_until(at(0.10)).await;
    let rss_warm: Vec<u64> = (0..3).map(|i| cluster.rss_kib(i)).collect();
    let s = start.elapsed();
    redis_cli("CLIENT PAUSE 500 ALL");
    tokio::time::sleep(Duration::from_millis(500)).await;
    windows.push(Window {
        name: "Redis paused 500 ms",
        start: s,
        end: start.elapsed(),
    });

    sleep_until(at(0.20)).await;
    let s = start.elapsed();
    let name = db.name().to_owned();
    sh(&format!(
        "psql -h 127.0.0.1 -U postgres -d postgres -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'\""
    ));
    windows.push(Window {
        name: "PostgreSQL connections killed",
        start: s,
        end: start.elapsed() + Duration::from_secs(1),
    });

    sleep_until(at(0.32)).await;
    let s = start.elapsed();
    redis_cli("SHUTDOWN NOSAVE");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sh(&redis_start);
    wait_for(6379);
    windows.push(Window {
        name: "Redis restarted",
        start: s,
        end: start.elapsed(),
    });

    sleep_until(at(0.45)).await;
    let s = start.elapsed();
    sh("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop -m fast");
    sh(&pg_start);
    wait_for(5432);
    windows.push(Window {
        name: "PostgreSQL restarted",
        start: s,
        end: start.elapsed() + Duration::from_secs(1),
    });

    sleep_until(at(0.60)).await;
    let s = start.elapsed();
    cluster.signal(1, "-TERM");
    cluster.start(1);
    windows.push(Window {
        name: "instance 1 SIGTERM, restarted",
        start: s,
        end: start.elapsed(),
    });

    sleep_until(at(0.75)).await;
    let s = start.elapsed();
    cluster.signal(2, "-KILL");
    cluster.instances[2].killed = true;
    cluster.start(2);
    windows.push(Window {
        name: "instance 2 SIGKILL, restarted",
        start: s,
        end: start.elapsed(),
    });

    sleep_until(duration).await;
    let rss_end: Vec<u64> = (0..3).map(|i| cluster.rss_kib(i)).collect();
    let fds: Vec<usize> = (0..3).map(|i| cluster.fds(i)).collect();
    let readiness: Vec<bool> = (0..3).map(|i| ready(cluster.instances[i].admin)).collect();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let _ = lifecycle.join();
    let _ = sampler.join();
    let elapsed = start.elapsed();
    for i in 0..3 {
        cluster.signal(i, "-TERM");
    }

    let report = Report {
        seen: std::mem::take(&mut *seen.lock().unwrap()),
        windows,
        revoked: revoked.lock().unwrap().clone(),
        elapsed,
        rss_warm,
        rss_end,
        fds,
        readiness,
        refusals: std::mem::take(&mut *refusals.lock().unwrap()),
        probes: probes.iter().map(|p| p.load(Ordering::Relaxed)).collect(),
        samples: std::mem::take(&mut *samples.lock().unwrap()),
    };
    let failures = report.print(&cluster);
    let _ = redis_keys_removed(&redis, &cluster.prefix).await;
    drop(db);
    if failures == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        0
    } else {
        eprintln!(
            "soak: {failures} assertion(s) failed; files kept in {}",
            dir.display()
        );
        1
    }
}

/// The status of `GET path` on 127.0.0.1:`port` (with `token`), over a
/// connection of its own; `None` when nothing answers.
fn http_status(port: u16, path: &str, token: Option<&str>) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// How long until every instance that answers refuses `token` (401), at
/// most `limit`.
/// Every answer is counted in `answered` (by instance): it has an audit
/// record too.
fn refused_everywhere(
    ports: &[u16],
    token: &str,
    limit: Duration,
    answered: &[AtomicUsize],
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut admitted = false;
        for (i, port) in ports.iter().enumerate() {
            let status = http_status(*port, "/notes", Some(token));
            if status.is_some() {
                answered[i].fetch_add(1, Ordering::Relaxed);
            }
            admitted |= status == Some(200);
        }
        if !admitted {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    limit
}

fn ready(admin: u16) -> bool {
    Command::new("curl")
        .args([
            "-fs",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{admin}/readyz"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

async fn redis_keys_removed(url: &str, prefix: &str) -> Vec<String> {
    tokengate_tests::remove_redis_keys(url, prefix).await
}
