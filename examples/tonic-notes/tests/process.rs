//! tonic-notes as a process, called by a real gRPC client: codes, the
//! public health check, a CLI revocation from another process taking
//! effect within a second, and one audit record per call.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokengate_tests::process::{
    assert_no_fragment, audit_reasons, cli, cli_issue, cli_issue_with, start_example, temp_dir,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("notes.v1");
}

use pb::notes_client::NotesClient;
use pb::{CreateNoteRequest, ListNotesRequest};

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_codes_health_and_prompt_revocation() {
    let dir = temp_dir("tonic-notes-process");
    let bin = env!("CARGO_BIN_EXE_tonic-notes");
    let mut server = start_example(bin, &dir, "tonic-notes listening on ");
    let channel = connect(&server.addr).await;
    let mut client = NotesClient::new(channel.clone());
    let token = server.token.clone();
    let mut calls = 0;

    calls += 1;
    let listed = client
        .list_notes(with_token(ListNotesRequest {}, Some(&token)))
        .await
        .unwrap();
    assert_eq!(listed.into_inner().caller, "demo-user");
    calls += 1;
    let note = client
        .create_note(with_token(
            CreateNoteRequest { text: "hi".into() },
            Some(&token),
        ))
        .await
        .unwrap();
    assert_eq!(note.into_inner().text, "hi");
    calls += 1;
    let missing = client
        .list_notes(with_token(ListNotesRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let db = dir.join("tokengate.db");
    let reader = cli_issue(bin, &db, "r", "reader", "notes:read");
    calls += 1;
    let denied = client
        .create_note(with_token(
            CreateNoteRequest { text: "x".into() },
            Some(&reader),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    calls += 1;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        serving.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    cli(bin, &db, &["revoke", &server.token_id]);
    let since = Instant::now();
    loop {
        calls += 1;
        match client
            .list_notes(with_token(ListNotesRequest {}, Some(&token)))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break,
            other => {
                assert!(
                    since.elapsed() < Duration::from_secs(1),
                    "still {other:?} a second after revocation"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    assert!(server.interrupt(), "a clean shutdown");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().count(),
        calls,
        "one record per call:\n{audit}"
    );
    assert!(audit.contains("\"rpc.service\":\"notes.v1.Notes\""));
    assert!(audit.contains("\"rpc.grpc.status_code\":7"));
    assert_no_fragment(&audit, &token);
    assert_no_fragment(&audit, &reader);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_is_public_so_grpcurl_needs_no_proto_files() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = temp_dir("tonic-notes-reflection");
    let bin = env!("CARGO_BIN_EXE_tonic-notes");
    let mut server = start_example(bin, &dir, "tonic-notes listening on ");
    let channel = connect(&server.addr).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // No token: reflection describes the API, and the policy makes it public.
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"notes.v1.Notes"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    drop(answers);
    assert!(server.terminate(), "a clean shutdown on SIGTERM");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET path` on `addr` over plain HTTP/1.0: the status line and body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_readiness_and_counts_grpc_decisions() {
    let dir = temp_dir("tonic-notes-admin");
    let bin = env!("CARGO_BIN_EXE_tonic-notes");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free.local_addr().unwrap().to_string();
    drop(free);
    let mut server = tokengate_tests::process::start_example_with(
        bin,
        &dir,
        "tonic-notes listening on ",
        &["--admin-listen", &admin],
    );
    assert!(
        server.output.iter().any(|line| line.contains(&admin)),
        "the admin address is printed: {:?}",
        server.output
    );
    let mut client = NotesClient::new(connect(&server.addr).await);
    let token = server.token.clone();
    client
        .list_notes(with_token(ListNotesRequest {}, Some(&token)))
        .await
        .unwrap();
    let missing = client
        .list_notes(with_token(ListNotesRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let (status, body) = http_get(&admin, "/readyz").await;
    assert!(status.contains(" 200 "), "{status} {body}");
    assert_eq!(
        body,
        r#"{"components":{"audit":"ok","store":"ok"},"ready":true}"#
    );
    let (status, metrics) = http_get(&admin, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let line = |series: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(
        line(r#"tokengate_decisions_total{layer="gate",outcome="allow",reason="allowed"}"#)
            .as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        line(r#"tokengate_decisions_total{layer="authenticate",outcome="deny",reason="missing_token"}"#)
            .as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert!(server.interrupt(), "a clean shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_issued_dpop_bound_token_works_with_its_proof_in_metadata() {
    use tokengate::authenticate::dpop::DpopSigner;
    let dir = temp_dir("tonic-notes-dpop");
    let bin = env!("CARGO_BIN_EXE_tonic-notes");
    let mut server = start_example(bin, &dir, "tonic-notes listening on ");
    let mut client = NotesClient::new(connect(&server.addr).await);
    let key = DpopSigner::generate_es256();
    let jkt = key.jkt().to_base64url();
    let token = cli_issue_with(
        bin,
        &dir.join("tokengate.db"),
        "grpc-laptop",
        "alice",
        "notes:read",
        &["--dpop-jkt", &jkt],
    );
    let url = format!("http://{}/notes.v1.Notes/ListNotes", server.addr);
    let call = |scheme: &str, proof: Option<String>| {
        let mut request = Request::new(ListNotesRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {token}").parse().unwrap(),
        );
        if let Some(proof) = proof {
            request
                .metadata_mut()
                .insert("dpop", proof.parse().unwrap());
        }
        request
    };
    let listed = client
        .list_notes(call("DPoP", Some(key.proof("POST", &url, &token, None))))
        .await
        .unwrap();
    assert_eq!(listed.into_inner().caller, "alice");
    let bearer = client.list_notes(call("Bearer", None)).await.unwrap_err();
    assert_eq!(bearer.code(), Code::Unauthenticated);
    let thief = DpopSigner::generate_ed25519();
    let stolen = client
        .list_notes(call("DPoP", Some(thief.proof("POST", &url, &token, None))))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::Unauthenticated);
    assert!(server.interrupt());
    let _ = server.child.wait();
    let reasons = audit_reasons(&dir.join("audit.jsonl"), Some("/notes.v1.Notes/ListNotes"));
    assert_eq!(reasons, ["-", "dpop_bound_as_bearer", "dpop_key_mismatch"]);
    let _ = std::fs::remove_dir_all(&dir);
}
