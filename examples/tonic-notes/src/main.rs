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
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Parser;
use tokengate::audit::AuditLayer;
use tokengate::deployment::SetupError;
use tokengate::ipfilter::IpFilterLayer;
use tokengate::store::IssuedToken;
use tokengate::tonic::PrincipalExt;
use tokengate::{EnforceScopeLayer, Gate, Requirement, ScopePolicy};
use tokengate_server::{Instance, ServerArgs};
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
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    server: ServerArgs,
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

fn policy() -> Result<ScopePolicy, tokengate::deployment::SetupError> {
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
    tokengate_server::init_logging(args.server.ops.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tonic-notes: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), SetupError> {
    // Every flag is checked before anything is opened, bound or written.
    let policy = policy()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let server = Instance::start("tonic-notes", &args.server, args.listen, &policy).await?;
    if let Some(demo) = &server.demo {
        print_demo(demo, &args, server.addr);
    }
    // Public methods are declared once, in the policy, and the Gate finds
    // the connection's address itself: only proxies to trust are told.
    let deployment = &server.deployment;
    let gate = Gate::new(
        args.server
            .dpop
            .apply(deployment.authenticate(server.audience.clone()))?,
        EnforceScopeLayer::new(policy),
    )
    .audit(AuditLayer::new(deployment.audit_sink()))
    .client_ip(server.client_ip.clone())
    .ip_filter(IpFilterLayer::new(server.ip_rules.clone()));
    // One server type whether or not the rate state is shared.
    let gate = match &server.redis {
        None => Either::Left(gate),
        Some(shared) => {
            // Usage-limited tokens lease their uses there too.
            let gate = gate
                .shared_uses(std::sync::Arc::new(shared.uses()))
                .shared_replay(std::sync::Arc::new(shared.replay()));
            Either::Right(gate.rate_state(shared.clone()))
        }
    };

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<NotesServer<NotesService>>()
        .await;

    let shown = server.addr.to_string();
    let (listener, stopping) = server.announce(&shown)?;
    Server::builder()
        .layer(gate)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(NotesServer::new(NotesService::default()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), tokengate::shutdown_signal())
        .await?;
    stopping.stop().await;
    Ok(())
}

fn print_demo(issued: &IssuedToken, args: &Args, addr: SocketAddr) {
    println!(
        "\nThe token store was empty, so here is a demo token (notes:read notes:write, \
         audience {}, valid 24 h). It is shown once:\n\n  export TOKEN={}\n\n\
         With grpcurl (plaintext; the server answers reflection, so no proto files are needed):\n  \
         grpcurl -plaintext {addr} list\n  \
         grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {addr} notes.v1.Notes/ListNotes\n\n\
         Revoke: cargo run -p tokengate-cli -- --db {} revoke {}\n",
        args.server.audience,
        issued.token.expose_secret(),
        args.server.db,
        issued.record.id,
    );
}
