//! axum-notes: a small notes API behind the whole tokengate Gate.
//!
//! `GET /healthz` is public; `GET /notes` needs `notes:read`; `POST /notes`
//! (`{"text": ...}`) needs `notes:write`; `DELETE /notes/{id}` needs
//! `notes:admin`; `GET /whoami` needs any valid token. Tokens live in a
//! SQLite file (`--db`), every request leaves one record in a JSON-lines
//! audit file (`--audit-log`), and revocations made with the `tokengate`
//! CLI reach the running server within a quarter of a second.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a server that tells its operator what it does"
)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokengate::axum::Authenticated;
use tokengate::{
    AuditLayer, AuthenticateLayer, CacheConfig, CachedStore, ClientIpLayer, EnforceScopeLayer,
    Expiry, Gate, IpFilterLayer, IpRules, JsonLinesSink, Lifecycle, PublicPaths, RateQuota,
    Requirement, ScopePolicy, SqliteStore, TokenHasher, TokenSpec, UsageTracker, load_pepper,
};

/// A notes API protected by tokengate.
#[derive(Debug, Parser)]
#[command(name = "axum-notes", version, about)]
struct Args {
    /// The token database (shared with the `tokengate` CLI).
    #[arg(long, default_value = "./tokengate.db")]
    db: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The JSON-lines audit file.
    #[arg(long, default_value = "./audit.jsonl")]
    audit_log: PathBuf,
    /// This service's audience: tokens must list it.
    #[arg(long, default_value = "notes")]
    audience: String,
    /// A proxy whose X-Forwarded-For is trusted (CIDR, repeatable).
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Only these client networks may call (CIDR, repeatable).
    #[arg(long = "allow-ip")]
    allow_ips: Vec<String>,
    /// These client networks may not call (CIDR, repeatable; wins over --allow-ip).
    #[arg(long = "deny-ip")]
    deny_ips: Vec<String>,
    /// Requests per second allowed per client address before authentication
    /// (bursts of twice that).
    #[arg(long, default_value_t = 100)]
    pre_auth_rate: u32,
    /// Serve the same routes without tokengate: only for the end-to-end
    /// benchmark (`benches/e2e.sh`), which compares both.
    #[arg(long, hide = true)]
    no_gate: bool,
}

#[derive(Clone, Default)]
struct Notes(Arc<Mutex<(u64, Vec<Note>)>>);

#[derive(Clone, Serialize)]
struct Note {
    id: u64,
    text: String,
    author: String,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn list(State(notes): State<Notes>) -> Json<Vec<Note>> {
    Json(
        notes
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone(),
    )
}

async fn create(
    State(notes): State<Notes>,
    Authenticated(caller): Authenticated,
    Json(new): Json<NewNote>,
) -> (StatusCode, Json<Note>) {
    let mut guard = notes.0.lock().unwrap_or_else(PoisonError::into_inner);
    guard.0 += 1;
    let note = Note {
        id: guard.0,
        text: new.text,
        author: caller.subject().to_owned(),
    };
    guard.1.push(note.clone());
    (StatusCode::CREATED, Json(note))
}

async fn remove(State(notes): State<Notes>, Path(id): Path<u64>) -> StatusCode {
    let mut guard = notes.0.lock().unwrap_or_else(PoisonError::into_inner);
    let before = guard.1.len();
    guard.1.retain(|n| n.id != id);
    if guard.1.len() < before {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn whoami(Authenticated(caller): Authenticated) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "token_id": caller.token_id().as_str(),
        "subject": caller.subject(),
        "scopes": caller.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    }))
}

fn policy() -> Result<ScopePolicy, Box<dyn std::error::Error>> {
    use axum::http::Method;
    Ok(ScopePolicy::builder()
        .route([Method::GET], "/healthz", Requirement::Public)
        .route(
            [Method::GET, Method::HEAD],
            "/notes",
            Requirement::all(["notes:read"])?,
        )
        .route([Method::POST], "/notes", Requirement::all(["notes:write"])?)
        .route(
            [Method::DELETE],
            "/notes/{id}",
            Requirement::all(["notes:admin"])?,
        )
        .route([Method::GET], "/whoami", Requirement::Authenticated)
        .build()?)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("axum-notes: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::open(&args.db)?;
    let hasher = TokenHasher::new(load_pepper(&args.db)?);
    let cache = CachedStore::new(store.clone(), CacheConfig::default());
    let feed = store.follow(cache.clone(), Duration::from_millis(250));
    let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
    if lifecycle.list().await?.is_empty() {
        demo_token(&lifecycle, &args).await?;
    }

    let usage = UsageTracker::new(100_000);
    let flusher = usage.spawn_flusher(store.clone(), Duration::from_secs(5));
    let audit = JsonLinesSink::open(&args.audit_log)?;
    let ip_rules = if args.allow_ips.is_empty() {
        IpRules::deny_list(&args.deny_ips)?
    } else {
        IpRules::allow_list(&args.allow_ips, &args.deny_ips)?
    };
    let gate = Gate::new(
        AuthenticateLayer::new(cache, hasher, args.audience.parse()?)
            .public(PublicPaths::new().exact("/healthz"))
            .usage(usage.clone()),
        EnforceScopeLayer::new(policy()?),
    )
    .audit(AuditLayer::new(audit.clone()))
    .client_ip(
        ClientIpLayer::trusted_proxies(&args.trusted_proxies)?
            .peer_source(tokengate::axum::peer_addr),
    )
    .ip_filter(IpFilterLayer::new(ip_rules))
    .pre_auth_quota(per_second(args.pre_auth_rate)?);

    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/notes", get(list).post(create))
        .route("/notes/{id}", delete(remove))
        .route("/whoami", get(whoami))
        .with_state(Notes::default());
    let app = if args.no_gate {
        routes
    } else {
        routes.layer(gate)
    };

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("axum-notes listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;

    feed.abort();
    flusher.abort();
    usage.flush(&store).await;
    audit.shutdown();
    println!(
        "axum-notes stopped; audit log flushed to {}",
        args.audit_log.display()
    );
    Ok(())
}

fn per_second(rate: u32) -> Result<RateQuota, Box<dyn std::error::Error>> {
    let count = NonZeroU32::new(rate).ok_or("--pre-auth-rate must be at least 1")?;
    let burst = count.saturating_mul(NonZeroU32::MIN.saturating_add(1));
    Ok(RateQuota::new(count, Duration::from_secs(1), burst)?)
}

async fn demo_token(
    lifecycle: &Lifecycle<CachedStore<SqliteStore>>,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let issued = lifecycle
        .issue(
            TokenSpec::new("demo", "demo-user")
                .scopes(["notes:read".parse()?, "notes:write".parse()?])
                .audiences([args.audience.parse()?])
                .expiry(Expiry::After(Duration::from_secs(24 * 3600))),
        )
        .await?;
    let base = format!("http://{}", args.listen);
    let db = args.db.display();
    println!(
        "\nThe token store was empty, so here is a demo token (notes:read notes:write, \
         audience {}, valid 24 h). It is shown once:\n\n  export TOKEN={}\n\n\
         Try:\n  curl -i {base}/healthz\n  curl -i -H \"Authorization: Bearer $TOKEN\" {base}/notes\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"text\":\"hello\"}}' {base}/notes\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" {base}/whoami\n  curl -i -X DELETE -H \"Authorization: Bearer $TOKEN\" {base}/notes/1   # 403: needs notes:admin\n\n\
         More tokens: cargo run -p tokengate-cli -- --db {db} issue --name me --subject me --scope notes:read --audience {} --ttl 30d\n\
         Revoke:      cargo run -p tokengate-cli -- --db {db} revoke {}\n",
        args.audience,
        issued.token.expose_secret(),
        args.audience,
        issued.record.id,
    );
    Ok(())
}
