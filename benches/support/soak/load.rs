//! What the soak sends: the clients' mixed load, the token changes made
//! during the run (each followed until every instance obeys it), and the
//! `/readyz` sampler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate_core::{TokenFormat, TokenPrefix};

use crate::cluster::Cli;
use crate::report::{CLIENTS, Kind, Sample, Seen};

/// The tokens the load uses.
pub(crate) struct Tokens {
    pub(crate) read: String,
    pub(crate) limited: String,
    pub(crate) uses: String,
    pub(crate) admin: String,
    /// Revoked, disabled or stripped of `notes:read` during the run, one
    /// a second.
    pub(crate) victims: Vec<String>,
    /// Rotated every few seconds.
    pub(crate) rotating: String,
}

/// What the run shares between its threads and tasks.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) samples: Mutex<Vec<Sample>>,
    /// Victim → when its change was committed.
    pub(crate) changed: Mutex<HashMap<usize, Duration>>,
    /// Each change: when, and how long until every instance obeyed it.
    pub(crate) obeyed: Mutex<Vec<(Duration, Duration)>>,
    /// Each rotation: when, and how long until every instance admitted
    /// the new token and still the old one.
    pub(crate) rotations: Mutex<Vec<(Duration, Duration)>>,
    /// The prober's answers, by instance (each audited too).
    pub(crate) probes: [AtomicUsize; 3],
}

/// The change made to victim `v`.
pub(crate) fn change_of(v: usize) -> &'static str {
    ["revoked", "disabled", "updated"][v % 3]
}

/// `CLIENTS` clients sending until `shared.stop`, round robin over the
/// instances, in a fixed mix of kinds.
pub(crate) fn spawn_clients(
    tokens: &Arc<Tokens>,
    shared: &Arc<Shared>,
    ports: &[u16],
    start: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let format = TokenFormat::new(TokenPrefix::new("tg").unwrap());
    (0..CLIENTS)
        .map(|c| {
            let (tokens, shared, ports, format) = (
                Arc::clone(tokens),
                Arc::clone(shared),
                ports.to_vec(),
                format.clone(),
            );
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut n = c;
                // The note this client last created on each instance: its
                // next write deletes it, so the notes (and GET /notes) stay
                // small however long the run.
                let mut created: [Option<u64>; 3] = [None; 3];
                while !shared.stop.load(Ordering::Relaxed) {
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
                    // A well-formed token no store has: a miss every time.
                    let unknown = format.generate();
                    let delete = (kind == Kind::Write)
                        .then(|| created[instance].take())
                        .flatten()
                        .map(|id| format!("/notes/{id}"));
                    let (method, path, bearer): (&str, &str, Vec<&str>) = match kind {
                        Kind::Read => ("GET", "/notes", vec![&tokens.read]),
                        Kind::Write => match &delete {
                            Some(path) => ("DELETE", path.as_str(), vec![&tokens.read]),
                            None => ("POST", "/notes", vec![&tokens.read]),
                        },
                        Kind::Unknown => ("GET", "/notes", vec![unknown.expose_secret()]),
                        Kind::Malformed => ("GET", "/notes", vec![&tokens.read, &tokens.read]),
                        Kind::Limited => ("GET", "/notes", vec![&tokens.limited]),
                        Kind::Uses => ("GET", "/notes", vec![&tokens.uses]),
                        Kind::Admin => ("GET", "/admin/tokens?limit=5", vec![&tokens.admin]),
                        Kind::Victim => {
                            ("GET", "/notes", vec![&tokens.victims[victim.unwrap_or(0)]])
                        }
                    };
                    let mut request = http::Request::builder()
                        .method(method)
                        .uri(format!("http://127.0.0.1:{}{path}", ports[instance]));
                    for token in bearer {
                        request = request.header("authorization", format!("Bearer {token}"));
                    }
                    let body = if method == "POST" {
                        request = request.header("content-type", "application/json");
                        Bytes::from_static(b"{\"text\":\"soak\"}")
                    } else {
                        Bytes::new()
                    };
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(15),
                        client.request(request.body(Full::new(body)).unwrap()),
                    )
                    .await;
                    let Ok(Ok(response)) = answer else {
                        // No answer (an instance stopping): no record expected.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await;
                    if method == "POST"
                        && status == 201
                        && let Ok(body) = body
                    {
                        created[instance] =
                            serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                                .ok()
                                .and_then(|note| note["id"].as_u64());
                    }
                    shared.seen.lock().unwrap().push(Seen {
                        at: start.elapsed(),
                        instance,
                        kind,
                        status,
                        latency: sent.elapsed(),
                        victim,
                    });
                }
            })
        })
        .collect()
}

/// `/readyz` on every instance four times a second, each instance from
/// a thread of its own (a check can take its 2 s bound).
pub(crate) fn spawn_samplers(
    shared: &Arc<Shared>,
    admins: Vec<u16>,
    start: Instant,
) -> Vec<std::thread::JoinHandle<()>> {
    admins
        .into_iter()
        .enumerate()
        .map(|(i, admin)| {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    let status = http_status(admin, "/readyz", None);
                    shared
                        .samples
                        .lock()
                        .unwrap()
                        .push((start.elapsed(), i, status));
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        })
        .collect()
}

/// One victim a second revoked, disabled or stripped of `notes:read` in
/// turn, then probed until no instance admits it; every fifth second the
/// rotating token rotated (an hour's grace), then probed until every
/// instance admits both the new token and the old.
pub(crate) fn spawn_changes(
    tokens: &Arc<Tokens>,
    shared: &Arc<Shared>,
    cli: Cli,
    ports: Vec<u16>,
    start: Instant,
) -> std::thread::JoinHandle<()> {
    let (tokens, shared) = (Arc::clone(tokens), Arc::clone(shared));
    std::thread::spawn(move || {
        let mut current = tokens.rotating.clone();
        for v in 0..tokens.victims.len() {
            std::thread::sleep(Duration::from_secs(1));
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if v % 5 == 4
                && let Some(id) = cli.id_of(&current)
                && let Ok(new) = cli.run(&["rotate", &id])
            {
                let at = start.elapsed();
                let delay = until_every_instance(
                    &ports,
                    &shared,
                    Duration::from_secs(5),
                    &[&new, &current],
                    |status| status == Some(200),
                );
                shared.rotations.lock().unwrap().push((at, delay));
                current = new;
            }
            let Some(id) = cli.id_of(&tokens.victims[v]) else {
                continue;
            };
            let done = match change_of(v) {
                "revoked" => cli.run(&["revoke", &id]),
                "disabled" => cli.run(&["disable", &id]),
                _ => cli.run(&["update", &id, "--scope", "notes:write"]),
            };
            if done.is_ok() {
                let at = start.elapsed();
                shared.changed.lock().unwrap().insert(v, at);
                let delay = until_every_instance(
                    &ports,
                    &shared,
                    Duration::from_secs(5),
                    &[&tokens.victims[v]],
                    |status| status != Some(200),
                );
                shared.obeyed.lock().unwrap().push((at, delay));
            }
        }
    })
}

/// How long until every instance answers `GET /notes` with each of
/// `tokens` as `wanted` says (at once), at most `limit`. Each answer is
/// counted per instance: it has an audit record.
fn until_every_instance(
    ports: &[u16],
    shared: &Shared,
    limit: Duration,
    tokens: &[&str],
    wanted: impl Fn(Option<u16>) -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut all = true;
        for (i, port) in ports.iter().enumerate() {
            for token in tokens {
                let status = http_status(*port, "/notes", Some(token));
                if status.is_some() {
                    shared.probes[i].fetch_add(1, Ordering::Relaxed);
                }
                all &= wanted(status);
            }
        }
        if all {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    limit
}

/// The status of `GET path` on 127.0.0.1:`port` (with `token`), over a
/// connection of its own; `None` when nothing answers.
pub(crate) fn http_status(port: u16, path: &str, token: Option<&str>) -> Option<u16> {
    http_exchange(port, path, token, false).map(|(status, _)| status)
}

/// The body of `GET path` on 127.0.0.1:`port`.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    http_exchange(port, path, None, true).map(|(_, body)| body)
}

fn http_exchange(port: u16, path: &str, token: Option<&str>, body: bool) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = Vec::new();
    if body {
        stream.read_to_end(&mut text).ok()?;
    } else {
        text.resize(12, 0);
        stream.read_exact(&mut text).ok()?;
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
