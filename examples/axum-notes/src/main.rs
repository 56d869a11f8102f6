//! axum-notes: a small notes API behind the whole tokengate Gate.
//!
//! `GET /healthz` is public; `GET /notes` needs `notes:read`; `POST /notes`
//! (`{"text": ...}`) needs `notes:write`; `DELETE /notes/{id}` needs
//! `notes:admin`; `GET /whoami` needs any valid token; with
//! `--secret-scanning`, `POST /leaks/github` (and GitLab's) take signed
//! leak reports. Tokens live in a
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
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokengate::audit::AuditLayer;
use tokengate::axum::Authenticated;
use tokengate::core::RateQuota;
use tokengate::deployment::{AnyStore, SetupError};
use tokengate::ipfilter::IpFilterLayer;
use tokengate::rate::{MissingKey, RateLimitLayer, RateState};
use tokengate::store::IssuedToken;
use tokengate::{Deployment, EnforceScopeLayer, Gate, Requirement, ScopePolicy};
use tokengate_server::{Instance, LeaksArgs, ServerArgs};

/// A notes API protected by tokengate.
#[derive(Debug, Parser)]
#[command(name = "axum-notes", version, about)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Requests per second allowed per client address before authentication
    /// (bursts of twice that).
    #[arg(long, default_value_t = 100)]
    pre_auth_rate: u32,
    /// Serve the same routes without tokengate: only for the end-to-end
    /// benchmark (`benches/e2e.sh`), which compares both.
    #[arg(long, hide = true)]
    no_gate: bool,
    /// Drop each audit record where it is handed over instead of writing
    /// it: only for the end-to-end benchmark, to measure the gate without
    /// the audit file.
    #[arg(long, hide = true)]
    discard_audit: bool,
    /// Send no `token-expires` header on admitted responses (clients then
    /// learn a token's expiry from `tokengate show`, not from traffic).
    /// By default it is sent in a token's last 7 days.
    #[arg(long, conflicts_with = "token_expires_always")]
    no_token_expires: bool,
    /// Send `token-expires` on every admitted response of an expiring
    /// token, not only in its last 7 days.
    #[arg(long)]
    token_expires_always: bool,
    /// Send no `RateLimit` / `RateLimit-Policy` headers on admitted
    /// responses (refusals keep theirs, and `Retry-After`).
    #[arg(long)]
    no_rate_headers: bool,
    /// Serve the admin API under /admin (tokens with `tokengate:admin`
    /// only; every call audited): issue, list, show, update, disable,
    /// enable, revoke, rotate, and /admin/openapi.json.
    #[arg(long)]
    admin: bool,
    /// Secret-scanning receivers under /leaks: leaked tokens revoke themselves.
    #[command(flatten)]
    leaks: LeaksArgs,
    #[command(flatten)]
    server: ServerArgs,
}

/// The sink of `--discard-audit`: drops each record.
struct DiscardAudit;

impl tokengate::audit::AuditSink for DiscardAudit {
    fn record(&self, record: tokengate::audit::AuditRecord) {
        drop(record);
    }
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

/// Every note as JSON lines: a costly route (10 of the token's quota and
/// uses, declared in the policy).
async fn export(
    State(notes): State<Notes>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let guard = notes.0.lock().unwrap_or_else(PoisonError::into_inner);
    let mut lines = String::new();
    for note in &guard.1 {
        lines.push_str(&serde_json::to_string(note).unwrap_or_default());
        lines.push('\n');
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        lines,
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

/// What `GET /notes/export` costs.
const EXPORT_COST: u32 = 10;

fn policy(args: &Args) -> Result<ScopePolicy, tokengate::deployment::SetupError> {
    use axum::http::Method;
    let mut builder = ScopePolicy::builder();
    if args.admin {
        builder = tokengate::admin::policy_rules(builder);
    }
    // Public: a provider's signature is its authentication.
    builder = args.leaks.policy_rules(builder);
    Ok(builder
        .route([Method::GET], "/healthz", Requirement::Public)
        .route(
            [Method::GET, Method::HEAD],
            "/notes",
            Requirement::all(["notes:read"])?,
        )
        .route([Method::POST], "/notes", Requirement::all(["notes:write"])?)
        // An export costs ten requests' worth of the token's quota and uses.
        .route(
            [Method::GET, Method::HEAD],
            "/notes/export",
            Requirement::all(["notes:read"])?,
        )
        .cost([Method::GET, Method::HEAD], "/notes/export", EXPORT_COST)
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
    let args = Args::parse();
    tokengate_server::init_logging(args.server.ops.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("axum-notes: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), SetupError> {
    // Every flag is checked before anything is opened, bound or written.
    let policy = policy(&args)?;
    let pre_auth = per_second(args.pre_auth_rate)?;
    args.leaks.check()?;
    let server = Instance::start("axum-notes", &args.server, args.listen, &policy).await?;
    if let Some(demo) = &server.demo {
        print_demo(demo, &args, server.addr);
    }
    // Public routes are declared once, in the policy, and the Gate finds
    // the connection's address itself: only proxies to trust are told.
    let deployment = &server.deployment;
    let mut authenticate = args
        .server
        .dpop
        .apply(deployment.authenticate(server.audience.clone()))?;
    if args.no_token_expires {
        authenticate = authenticate.expires_header(None);
    }
    if args.token_expires_always {
        authenticate = authenticate.expires_header_within(None);
    }
    let mut gate = Gate::new(authenticate, EnforceScopeLayer::new(policy))
        .client_ip(server.client_ip.clone())
        .ip_filter(IpFilterLayer::new(server.ip_rules.clone()))
        .pre_auth_quota(pre_auth);
    if args.no_rate_headers {
        // The Gate's default per-token limit, silent on success.
        let per_token = RateQuota::new(
            NonZeroU32::new(50).ok_or("a non-zero rate")?,
            Duration::from_secs(1),
            NonZeroU32::new(100).ok_or("a non-zero burst")?,
        )?;
        gate = gate.token_rate(
            RateLimitLayer::per_token(per_token)
                .missing_key(MissingKey::Skip)
                .success_headers(false),
        );
    }

    let mut routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/notes", get(list).post(create))
        .route("/notes/export", get(export))
        .route("/notes/{id}", delete(remove))
        .route("/whoami", get(whoami))
        .with_state(Notes::default());
    if args.admin {
        // Behind the same Gate: the policy gives /admin to tokengate:admin.
        routes = routes.merge(tokengate::admin::router(deployment.lifecycle.clone()));
    }
    if let Some(receivers) = args
        .leaks
        .router(deployment.lifecycle.clone(), deployment.audit.clone())?
    {
        // Behind the Gate too: the per-address limit, the IP filter and
        // each report's own request record.
        routes = routes.merge(receivers);
    }
    let app = match &server.redis {
        None => guard(routes, gate, &args, deployment),
        Some(shared) => {
            // Usage-limited tokens lease their uses there too.
            let gate = gate
                .shared_uses(Arc::new(shared.uses()))
                .shared_replay(Arc::new(shared.replay()));
            guard(routes, gate.rate_state(shared.clone()), &args, deployment)
        }
    };

    let shown = format!("http://{}", server.addr);
    let (listener, stopping) = server.announce(&shown)?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(tokengate::shutdown_signal())
    .await?;
    stopping.stop().await;
    Ok(())
}

/// `routes` behind `gate`, as the flags say.
fn guard<R: RateState + Clone>(
    routes: Router,
    gate: Gate<AnyStore, ScopePolicy, tokengate::audit::TracingSink, R>,
    args: &Args,
    deployment: &Deployment,
) -> Router {
    if args.no_gate {
        routes
    } else if args.discard_audit {
        routes.layer(gate.audit(AuditLayer::new(DiscardAudit)))
    } else {
        routes.layer(gate.audit(AuditLayer::new(deployment.audit_sink())))
    }
}

fn per_second(rate: u32) -> Result<RateQuota, SetupError> {
    let count = NonZeroU32::new(rate).ok_or("--pre-auth-rate must be at least 1")?;
    let burst = count.saturating_mul(NonZeroU32::MIN.saturating_add(1));
    Ok(RateQuota::new(count, Duration::from_secs(1), burst)?)
}

fn print_demo(issued: &IssuedToken, args: &Args, addr: SocketAddr) {
    let base = format!("http://{addr}");
    let db = &args.server.db;
    println!(
        "\nThe token store was empty, so here is a demo token (notes:read notes:write, \
         audience {}, valid 24 h). It is shown once:\n\n  export TOKEN={}\n\n\
         Try:\n  curl -i {base}/healthz\n  curl -i -H \"Authorization: Bearer $TOKEN\" {base}/notes\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"text\":\"hello\"}}' {base}/notes\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" {base}/whoami\n  curl -i -H \"Authorization: Bearer $TOKEN\" {base}/notes/export   # costs 10: see RateLimit\n  curl -i -X DELETE -H \"Authorization: Bearer $TOKEN\" {base}/notes/1   # 403: needs notes:admin\n\n\
         More tokens: cargo run -p tokengate-cli -- --db {db} issue --name me --subject me --scope notes:read --audience {} --ttl 30d\n\
         Revoke:      cargo run -p tokengate-cli -- --db {db} revoke {}\n",
        args.server.audience,
        issued.token.expose_secret(),
        args.server.audience,
        issued.record.id,
    );
}
