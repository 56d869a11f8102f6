//! tonic-notes: a gRPC notes service behind the whole tokengate Gate.
//!
//! `notes.v1.Notes/ListNotes` needs `notes:read`, `CreateNote` needs
//! `notes:write`; `grpc.health.v1.Health/Check` answers SERVING without a
//! token. Tokens live in the same SQLite file the `tokengate` CLI manages;
//! every call leaves one audit record. Refusals are gRPC statuses (16, 7, 8,
//! 14), never HTTP errors.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a server that tells its operator what it does"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;
use tokengate::tonic::PrincipalExt;
use tokengate::{
    AuditLayer, AuthenticateLayer, CacheConfig, CachedStore, ClientIpLayer, EnforceScopeLayer,
    Expiry, Gate, IpFilterLayer, IpRules, JsonLinesSink, Lifecycle, PublicPaths, Requirement,
    ScopePolicy, SqliteStore, TokenHasher, TokenSpec, UsageTracker, load_pepper,
};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("notes.v1");
}

use pb::notes_server::{Notes, NotesServer};
use pb::{CreateNoteRequest, ListNotesRequest, ListNotesResponse, Note};

/// A gRPC notes service protected by tokengate.
#[derive(Debug, Parser)]
#[command(name = "tonic-notes", version, about)]
struct Args {
    /// The token database (shared with the `tokengate` CLI).
    #[arg(long, default_value = "./tokengate.db")]
    db: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:50051")]
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
}

#[derive(Default)]
struct NotesService {
    notes: Arc<Mutex<Vec<Note>>>,
}

#[tonic::async_trait]
impl Notes for NotesService {
    async fn list_notes(
        &self,
        request: Request<ListNotesRequest>,
    ) -> Result<Response<ListNotesResponse>, Status> {
        let caller = request.principal()?.subject().to_owned();
        let notes = self
            .notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Response::new(ListNotesResponse { notes, caller }))
    }

    async fn create_note(
        &self,
        request: Request<CreateNoteRequest>,
    ) -> Result<Response<Note>, Status> {
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        let note = Note {
            id: u64::try_from(notes.len())
                .unwrap_or(u64::MAX)
                .saturating_add(1),
            text: request.into_inner().text,
        };
        notes.push(note.clone());
        Ok(Response::new(note))
    }
}

fn policy() -> Result<ScopePolicy, Box<dyn std::error::Error>> {
    Ok(ScopePolicy::builder()
        .grpc_method(
            "/notes.v1.Notes/ListNotes",
            Requirement::all(["notes:read"])?,
        )
        .grpc_method(
            "/notes.v1.Notes/CreateNote",
            Requirement::all(["notes:write"])?,
        )
        .grpc_service("grpc.health.v1.Health", Requirement::Public)
        .build()?)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tonic-notes: {error}");
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
            .public(PublicPaths::new().grpc_health())
            .usage(usage.clone()),
        EnforceScopeLayer::new(policy()?),
    )
    .audit(AuditLayer::new(audit.clone()))
    .client_ip(
        ClientIpLayer::trusted_proxies(&args.trusted_proxies)?
            .peer_source(tokengate::tonic::peer_addr),
    )
    .ip_filter(IpFilterLayer::new(ip_rules));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<NotesServer<NotesService>>()
        .await;

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("tonic-notes listening on {}", listener.local_addr()?);
    Server::builder()
        .layer(gate)
        .add_service(health)
        .add_service(NotesServer::new(NotesService::default()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    feed.abort();
    flusher.abort();
    usage.flush(&store).await;
    audit.shutdown();
    println!(
        "tonic-notes stopped; audit log flushed to {}",
        args.audit_log.display()
    );
    Ok(())
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
    println!(
        "\nThe token store was empty, so here is a demo token (notes:read notes:write, \
         audience {}, valid 24 h). It is shown once:\n\n  export TOKEN={}\n\n\
         With grpcurl (plaintext, from proto/notes.proto):\n  \
         grpcurl -plaintext -import-path proto -proto notes.proto -H \"authorization: Bearer $TOKEN\" {} notes.v1.Notes/ListNotes\n\n\
         Revoke: cargo run -p tokengate-cli -- --db {} revoke {}\n",
        args.audience,
        issued.token.expose_secret(),
        args.listen,
        args.db.display(),
        issued.record.id,
    );
    Ok(())
}
