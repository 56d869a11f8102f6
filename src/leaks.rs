//! A secret-scanning provider for the leak receivers' tests: P-256 keys
//! that sign report bodies as GitHub and GitLab do, and a key-set server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;

/// A provider's signing key.
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    /// Its key id, as the report's `*-Public-Key-Identifier` names it.
    pub id: String,
}

impl Signer {
    /// The key `id`, made from `seed` (deterministic: a test's keys are
    /// the same on every run).
    ///
    /// # Panics
    ///
    /// Never for a seed of 1 to 255.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn new(id: &str, seed: u8) -> Self {
        let mut bytes = [seed; 32];
        bytes[0] = 0x01;
        Self {
            key: SigningKey::from_slice(&bytes).expect("a valid scalar"),
            id: id.to_owned(),
        }
    }

    /// The public key as PEM (SubjectPublicKeyInfo), as key sets list it.
    ///
    /// # Panics
    ///
    /// Never: a P-256 key always encodes.
    #[allow(clippy::expect_used, reason = "test support")]
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("a P-256 key encodes")
    }

    /// The signature of `body`: base64 of ASN.1 DER ECDSA over SHA-256.
    pub fn sign(&self, body: &[u8]) -> String {
        let signature: DerSignature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
    }
}

#[derive(Debug, Default)]
struct Served {
    keys: Mutex<Vec<(String, String, bool)>>,
    hits: AtomicUsize,
    down: AtomicBool,
}

/// A key-set server on 127.0.0.1: `GET /keys` answers
/// `{"public_keys": [{"key_identifier", "key", "is_current"}]}`, or 503
/// while it is [down](KeyServer::set_down).
#[derive(Debug, Clone)]
pub struct KeyServer {
    /// The key set's URL.
    pub url: String,
    served: Arc<Served>,
}

impl KeyServer {
    /// Serves `keys` (each with whether it is current).
    ///
    /// # Panics
    ///
    /// If it cannot bind a port.
    #[allow(clippy::expect_used, reason = "test support")]
    pub async fn start(keys: &[(&Signer, bool)]) -> Self {
        let served = Arc::new(Served::default());
        let server = Self {
            url: String::new(),
            served: Arc::clone(&served),
        };
        for (signer, current) in keys {
            server.add(signer, *current);
        }
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let served = Arc::clone(&served);
                async move {
                    served.hits.fetch_add(1, Ordering::SeqCst);
                    if served.down.load(Ordering::SeqCst) {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                    }
                    let keys = served.keys.lock().unwrap_or_else(PoisonError::into_inner);
                    let listed: Vec<_> = keys
                        .iter()
                        .map(|(id, pem, current)| {
                            serde_json::json!({"key_identifier": id, "key": pem, "is_current": current})
                        })
                        .collect();
                    (
                        axum::http::StatusCode::OK,
                        serde_json::json!({ "public_keys": listed }).to_string(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr: SocketAddr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/keys"),
            ..server
        }
    }

    /// Lists `signer`'s key too.
    pub fn add(&self, signer: &Signer, current: bool) {
        self.served
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((signer.id.clone(), signer.public_pem(), current));
    }

    /// How many times the key set was asked for.
    pub fn hits(&self) -> usize {
        self.served.hits.load(Ordering::SeqCst)
    }

    /// Answers 503 (down) or the key set (up).
    pub fn set_down(&self, down: bool) {
        self.served.down.store(down, Ordering::SeqCst);
    }
}
