//! Tokens a thief cannot use, through real servers and real clients:
//! DPoP-bound tokens on an axum Gate over a SQLite file (audit records
//! read from the file), a proof replayed at a second instance sharing
//! Redis, certificate-bound tokens behind a trusted proxy, gRPC, and an
//! issuing endpoint that binds a token to the key of its request's proof.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use support::{HttpClient, Reply, serve_axum};
use tokengate::authenticate::dpop::DpopSigner;
use tokengate::core::{Binding, Thumbprint};
use tokengate::deployment::Database;
use tokengate::ipfilter::ResolveClientIpLayer;
use tokengate::{Deployment, ScopePolicy, TokenSpec};

struct Setup {
    deployment: Deployment,
    dir: std::path::PathBuf,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let dir = tokengate_tests::process::temp_dir(name);
        let deployment = Deployment::builder(Database::Sqlite(dir.join("tokens.db")))
            .audit_log(dir.join("audit.jsonl"))
            .open()
            .await
            .unwrap();
        Self { deployment, dir }
    }

    fn policy() -> ScopePolicy {
        ScopePolicy::builder()
            .read_write("/notes", "notes")
            .build()
            .unwrap()
    }

    /// An axum server behind this deployment's Gate, trusting `proxies`.
    async fn serve(
        &self,
        proxies: &[&str],
        redis: Option<&tokengate::redis::RedisRateState>,
    ) -> SocketAddr {
        let mut gate = self
            .deployment
            .gate("notes", Self::policy())
            .await
            .unwrap()
            .client_ip(ResolveClientIpLayer::trusted_proxies(proxies).unwrap());
        if let Some(shared) = redis {
            gate = gate.shared_replay(Arc::new(shared.replay()));
        }
        let app = axum::Router::new()
            .route("/notes", axum::routing::get(|| async { "notes" }))
            .layer(gate);
        serve_axum(app).await
    }

    async fn issue(&self, binding: Option<Binding>) -> String {
        let mut spec = TokenSpec::new("client", "team-a")
            .scopes(["notes:read".parse().unwrap()])
            .audiences(["notes".parse().unwrap()]);
        if let Some(binding) = binding {
            spec = spec.binding(binding);
        }
        let issued = self.deployment.lifecycle.issue(spec).await.unwrap();
        issued.token.expose_secret().to_owned()
    }

    fn audit_reasons(&self) -> Vec<Option<String>> {
        self.deployment.audit.flush();
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .map(|record| record["tokengate.reason"].as_str().map(ToOwned::to_owned))
            .collect()
    }

    async fn finish(self) {
        self.deployment.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn dpop_get(client: &HttpClient, token: &str, proof: &str) -> Reply {
    let auth = format!("DPoP {token}");
    client
        .send(
            "GET",
            "/notes",
            &[("authorization", &auth), ("dpop", proof)],
            "",
        )
        .await
}

#[tokio::test]
async fn a_dpop_bound_token_works_only_with_its_proof_through_a_real_server() {
    let setup = Setup::new("dpop-axum").await;
    let addr = setup.serve(&[], None).await;
    let client = HttpClient::new(addr);
    let url = format!("http://{addr}/notes");
    for key in [DpopSigner::generate_es256(), DpopSigner::generate_ed25519()] {
        let token = setup.issue(Some(Binding::Dpop(key.jkt()))).await;
        let ok = dpop_get(&client, &token, &key.proof("GET", &url, &token, None)).await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.body, "notes");
        // Stolen: the token alone, as a bearer token.
        let stolen = client
            .send(
                "GET",
                "/notes",
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await;
        assert_eq!(stolen.status, 401);
        let challenges: Vec<&str> = stolen
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            challenges,
            [
                r#"Bearer realm="tokengate", error="invalid_token""#,
                r#"DPoP error="invalid_token", algs="ES256 EdDSA""#
            ]
        );
        // Stolen with a key of the thief's own.
        let thief = DpopSigner::generate_es256();
        let forged = dpop_get(&client, &token, &thief.proof("GET", &url, &token, None)).await;
        assert_eq!(forged.status, 401);
        assert_eq!(forged.body, stolen.body, "one body for every failure");
    }
    let reasons = setup.audit_reasons();
    assert_eq!(
        reasons,
        [
            None,
            Some("dpop_bound_as_bearer".into()),
            Some("dpop_key_mismatch".into()),
            None,
            Some("dpop_bound_as_bearer".into()),
            Some("dpop_key_mismatch".into()),
        ]
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_proof_replayed_at_a_second_instance_sharing_redis_is_refused() {
    let Some(url) = tokengate_tests::redis_url() else {
        return;
    };
    let prefix = format!("tg-dpop-{}", rand_suffix());
    let state = || {
        tokengate::redis::RedisRateState::new(&url)
            .unwrap()
            .prefix(&prefix)
            .unwrap()
            .timeout(std::time::Duration::from_secs(2))
    };
    let setup = Setup::new("dpop-redis").await;
    let (a, b) = (
        setup.serve(&[], Some(&state())).await,
        setup.serve(&[], Some(&state())).await,
    );
    let key = DpopSigner::generate_ed25519();
    let token = setup.issue(Some(Binding::Dpop(key.jkt()))).await;
    // The proof names instance b's URL; a thief replays it there after
    // the client used it there once: refused although b's own memory
    // never saw it (it went through a first).
    let proof_for_b = key.proof("GET", &format!("http://{b}/notes"), &token, None);
    // Instance a sees it with a's address in the Host header, b's in htu.
    let at_a = HttpClient::new(a)
        .send(
            "GET",
            "/notes",
            &[
                ("authorization", &format!("DPoP {token}")),
                ("dpop", &proof_for_b),
                ("host", &b.to_string()),
            ],
            "",
        )
        .await;
    assert_eq!(at_a.status, 200, "{at_a:?}");
    let at_b = dpop_get(&HttpClient::new(b), &token, &proof_for_b).await;
    assert_eq!(at_b.status, 401);
    assert_eq!(
        setup.audit_reasons().last().cloned().flatten().as_deref(),
        Some("dpop_replay")
    );
    let keys = tokengate_tests::remove_redis_keys(&url, &prefix).await;
    assert!(keys.iter().any(|k| k.contains(":dpop:")), "{keys:?}");
    setup.finish().await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

#[tokio::test]
async fn client_cert_is_honoured_only_from_a_trusted_proxy() {
    let setup = Setup::new("dpop-cert").await;
    let der = b"the client's certificate, DER".as_slice();
    let sha: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        der,
    ))
    .into();
    let token = setup
        .issue(Some(Binding::Certificate(Thumbprint::new(sha))))
        .await;
    let header = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let auth = format!("Bearer {token}");
    let trusting = HttpClient::new(setup.serve(&["127.0.0.1/32"], None).await);
    let ok = trusting
        .send(
            "GET",
            "/notes",
            &[("authorization", &auth), ("client-cert", &header)],
            "",
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let other = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(b"another certificate")
    );
    let wrong = trusting
        .send(
            "GET",
            "/notes",
            &[("authorization", &auth), ("client-cert", &other)],
            "",
        )
        .await;
    assert_eq!(wrong.status, 401);
    let missing = trusting
        .send("GET", "/notes", &[("authorization", &auth)], "")
        .await;
    assert_eq!(missing.status, 401);
    // The same header from a peer that is no trusted proxy is ignored.
    let untrusting = HttpClient::new(setup.serve(&[], None).await);
    let ignored = untrusting
        .send(
            "GET",
            "/notes",
            &[("authorization", &auth), ("client-cert", &header)],
            "",
        )
        .await;
    assert_eq!(ignored.status, 401);
    assert_eq!(
        setup.audit_reasons(),
        [
            None,
            Some("cert_mismatch".into()),
            Some("cert_missing".into()),
            Some("cert_untrusted_header".into()),
        ]
    );
    setup.finish().await;
}

mod grpc {
    use tokengate::authenticate::dpop::DpopSigner;
    use tokengate::core::Binding;
    use tonic::Code;

    use super::support::World;
    use super::support::grpc::pb::ListNotesRequest;
    use super::support::grpc::pb::notes_client::NotesClient;

    #[tokio::test]
    async fn grpc_carries_the_proof_in_metadata_and_htu_is_the_method_path() {
        let world = World::new();
        world.clock.set(std::time::SystemTime::now());
        let key = DpopSigner::generate_es256();
        let (token, _) = world
            .issue_spec(world.spec("notes:read").binding(Binding::Dpop(key.jkt())))
            .await;
        let secret = token.expose_secret();
        let policy = tokengate::ScopePolicy::builder()
            .grpc_method(
                "/notes.v1.Notes/ListNotes",
                tokengate::Requirement::all(["notes:read"]).unwrap(),
            )
            .build()
            .unwrap();
        let stack = tower::ServiceBuilder::new()
            .layer(world.auth.clone())
            .layer(tokengate::EnforceScopeLayer::new(policy))
            .into_inner();
        let (channel, authority) = super::support::grpc::serve(stack).await;
        let mut client = NotesClient::new(channel);
        let request = |scheme: &str, proof: String| {
            let mut request = tonic::Request::new(ListNotesRequest {});
            request.metadata_mut().insert(
                "authorization",
                format!("{scheme} {secret}").parse().unwrap(),
            );
            if !proof.is_empty() {
                request
                    .metadata_mut()
                    .insert("dpop", proof.parse().unwrap());
            }
            request
        };
        let url = format!("http://{authority}/notes.v1.Notes/ListNotes");
        let ok = client
            .list_notes(request("DPoP", key.proof("POST", &url, secret, None)))
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        let bearer = client.list_notes(request("Bearer", String::new())).await;
        assert_eq!(bearer.unwrap_err().code(), Code::Unauthenticated);
        let wrong_path = format!("http://{authority}/notes.v1.Notes/CreateNote");
        let elsewhere = client
            .list_notes(request(
                "DPoP",
                key.proof("POST", &wrong_path, secret, None),
            ))
            .await;
        assert_eq!(elsewhere.unwrap_err().code(), Code::Unauthenticated);
        let missing = client.list_notes(request("DPoP", String::new())).await;
        assert_eq!(missing.unwrap_err().code(), Code::Unauthenticated);
    }
}
