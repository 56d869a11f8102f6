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
    AuditLayer, Database, Embedded, EnforceScopeLayer, Expiry, Gate, IpFilterLayer, IpRules,
    IssuedToken, RedisRateState, Requirement, ResolveClientIpLayer, ScopePolicy, TokenSpec,
};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower::util::Either;

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("notes.v1");

    /// The notes service's descriptors, for gRPC reflection.
    pub(crate) const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/notes_descriptor.bin"));
}

use pb::notes_server::{Notes, NotesServer};
use pb::{CreateNoteRequest, ListNotesRequest, ListNotesResponse, Note};

/// A gRPC notes service protected by tokengate.
#[derive(Debug, Parser)]
#[command(name = "tonic-notes", version, about)]
struct Args {
    /// The token database, shared with the `tokengate` CLI: a SQLite file,
    /// or a `postgres://` URL shared by every instance.
    #[arg(long, default_value = "./tokengate.db")]
    db: Database,
    /// The pepper file, for PostgreSQL (else TOKENGATE_PEPPER); created,
    /// private, on a first start. A SQLite database keeps its own beside it.
    #[arg(long)]
    pepper_file: Option<PathBuf>,
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
    /// Share rate limits with every instance using this Redis
    /// (`redis://host:port`); without it each instance limits on its own.
    #[arg(long)]
    redis: Option<String>,
    /// The Redis key prefix of this deployment's rate limits.
    #[arg(long, default_value = "tokengate")]
    redis_prefix: String,
    /// How long a Redis call may take (milliseconds) before the instance
    /// decides with its own limits instead.
    #[arg(long, default_value_t = 50)]
    redis_timeout_ms: u64,
    #[command(flatten)]
    ops: example_ops::OpsArgs,
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

fn policy() -> Result<ScopePolicy, tokengate::SetupError> {
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
        // Reflection describes the API (no data): public, so grpcurl needs no proto files.
        .grpc_service("grpc.reflection.v1.ServerReflection", Requirement::Public)
        .grpc_service(
            "grpc.reflection.v1alpha.ServerReflection",
            Requirement::Public,
        )
        .build()?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    example_ops::init_logging(args.ops.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tonic-notes: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), tokengate::SetupError> {
    // Every flag is checked before anything is opened, bound or written.
    let audience: tokengate::Audience = args.audience.parse()?;
    let policy = policy()?;
    let client_ip = ResolveClientIpLayer::trusted_proxies(&args.trusted_proxies)?;
    let ip_rules = IpRules::from_lists(&args.allow_ips, &args.deny_ips)?;
    let demo = demo_spec(&audience)?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Then the port: a second server on it fails here, before it writes anything.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // The metrics recorder goes in before any layer registers its counters.
    let admin = example_ops::Admin::bind(&args.ops).await?;

    let embedded = Embedded::open(&args.db, args.pepper_file.as_deref(), &args.audit_log).await?;
    // `tokengate issue` then refuses a scope this server would never accept.
    embedded.register_scopes(&policy).await?;
    // A demo token on a first start of the embedded store only: a shared
    // database is set up with the CLI, and no instance prints a token.
    let first_start = match args.db {
        Database::Sqlite(_) => embedded.issue_if_empty(demo).await?,
        _ => None,
    };
    if let Some(demo) = first_start {
        print_demo(&demo, &args, addr);
    }
    // Public methods are declared once, in the policy, and the Gate finds
    // the connection's address itself: only proxies to trust are told.
    let gate = Gate::new(
        embedded.authenticate(audience),
        EnforceScopeLayer::new(policy),
    )
    .audit(AuditLayer::new(embedded.audit.clone()))
    .client_ip(client_ip)
    .ip_filter(IpFilterLayer::new(ip_rules));
    // One server type whether or not the rate state is shared.
    let mut readiness = embedded.readiness();
    let gate = match &args.redis {
        None => Either::Left(gate),
        Some(url) => {
            let shared = RedisRateState::new(url)?
                .prefix(&args.redis_prefix)?
                .timeout(Duration::from_millis(args.redis_timeout_ms));
            readiness = readiness.redis(shared.clone());
            // Usage-limited tokens lease their uses there too.
            let gate = gate.shared_uses(std::sync::Arc::new(shared.uses()));
            Either::Right(gate.rate_state(shared))
        }
    };

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<NotesServer<NotesService>>()
        .await;

    // The admin line first: whoever waits for the listening line has it.
    if let Some(admin) = admin {
        println!(
            "tonic-notes admin (/healthz, /readyz, /metrics) on http://{}",
            admin.local_addr()?
        );
        admin.serve(readiness);
    }
    println!("tonic-notes listening on {addr}");

    Server::builder()
        .layer(gate)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(NotesServer::new(NotesService::default()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), tokengate::shutdown_signal())
        .await?;

    embedded.shutdown().await;
    println!(
        "tonic-notes stopped; audit log flushed to {}",
        args.audit_log.display()
    );
    Ok(())
}

/// The demo token of a first start: notes:read notes:write for this
/// audience, valid 24 h.
fn demo_spec(audience: &tokengate::Audience) -> Result<TokenSpec, tokengate::SetupError> {
    Ok(TokenSpec::new("demo", "demo-user")
        .scopes(["notes:read".parse()?, "notes:write".parse()?])
        .audiences([audience.clone()])
        .expiry(Expiry::After(Duration::from_secs(24 * 3600))))
}

fn print_demo(issued: &IssuedToken, args: &Args, addr: SocketAddr) {
    println!(
        "\nThe token store was empty, so here is a demo token (notes:read notes:write, \
         audience {}, valid 24 h). It is shown once:\n\n  export TOKEN={}\n\n\
         With grpcurl (plaintext; the server answers reflection, so no proto files are needed):\n  \
         grpcurl -plaintext {addr} list\n  \
         grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {addr} notes.v1.Notes/ListNotes\n\n\
         Revoke: cargo run -p tokengate-cli -- --db {} revoke {}\n",
        args.audience,
        issued.token.expose_secret(),
        args.db,
        issued.record.id,
    );
}
