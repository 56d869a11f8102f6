//! The gRPC test service (the tonic-notes example's `notes.proto`) and a server for it.

use tokengate::tonic::PrincipalExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
pub mod pb {
    tonic::include_proto!("notes.v1");
}

use pb::notes_server::{Notes, NotesServer};
use pb::{CreateNoteRequest, ListNotesRequest, ListNotesResponse, Note};

/// Lists nothing but names its caller; creates the note it is given.
pub struct NotesService;

#[tonic::async_trait]
impl Notes for NotesService {
    async fn list_notes(
        &self,
        request: Request<ListNotesRequest>,
    ) -> Result<Response<ListNotesResponse>, Status> {
        let caller = request.principal()?.subject().to_owned();
        Ok(Response::new(ListNotesResponse {
            notes: vec![],
            caller,
        }))
    }

    async fn create_note(
        &self,
        request: Request<CreateNoteRequest>,
    ) -> Result<Response<Note>, Status> {
        Ok(Response::new(Note {
            id: 1,
            text: request.into_inner().text,
        }))
    }
}

/// Serves [`NotesService`] behind `stack` on 127.0.0.1 and connects to
/// it; the channel and the server's address.
pub async fn serve<L>(stack: L) -> (Channel, std::net::SocketAddr)
where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<
                tokengate::check::CheckBody<tokengate::check::CheckBody<tonic::body::Body>>,
            >,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let (listener, addr) = super::listener().await;
    tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(NotesServer::new(NotesService))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, addr)
}
