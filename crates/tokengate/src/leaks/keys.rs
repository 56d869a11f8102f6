//! A provider's signing keys: fetched from its key-set URL, cached, and
//! fetched again when a report names a key the cache lacks (at most once
//! per refresh interval, so unknown key ids cannot make us hammer the
//! provider).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;

/// The most a key set may weigh.
const KEY_SET_LIMIT: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a report's key could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// The provider's key set does not list this id.
    Unknown,
    /// No key set could be fetched yet: the report may be fine, so the
    /// provider is told to retry.
    Unavailable,
}

/// The key set of one provider.
pub(crate) struct KeySet {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    refresh: Duration,
    keys: RwLock<Arc<HashMap<String, VerifyingKey>>>,
    /// Held through a fetch, so concurrent reports wait for one fetch.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeySetDocument {
    public_keys: Vec<PublicKey>,
}

#[derive(Deserialize)]
struct PublicKey {
    key_identifier: String,
    key: String,
}

impl KeySet {
    pub(crate) fn new(url: Uri, refresh: Duration) -> Self {
        let connector = crate::outbound::connector();
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            refresh,
            keys: RwLock::new(Arc::default()),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }

    fn cached(&self, id: &str) -> Option<VerifyingKey> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(id).copied()
    }

    fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// The key `id`: from the cache, or from a fresh fetch when the last
    /// one is older than the refresh interval.
    pub(crate) async fn key(&self, id: &str) -> Result<VerifyingKey, KeyError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let mut last = self.last_fetch.lock().await;
        // Fetched while this report waited.
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let due = last.is_none_or(|at| at.elapsed() >= self.refresh);
        if due {
            *last = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(url = %self.url, keys = keys.len(), "secret-scanning keys fetched");
                    *self
                        .keys
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                }
                Err(error) => {
                    tracing::warn!(url = %self.url, %error, "secret-scanning keys could not be fetched");
                }
            }
        }
        match self.cached(id) {
            Some(key) => Ok(key),
            None if self.is_empty() => Err(KeyError::Unavailable),
            None => Err(KeyError::Unknown),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, String> {
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "tokengate-secret-scanning")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), KEY_SET_LIMIT).collect(),
        )
        .await
        .map_err(|_| format!("body not read within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?
        .to_bytes();
        parse_key_set(&body)
    }
}

/// The keys of a key-set document (`{"public_keys": [{"key_identifier",
/// "key": PEM, "is_current"}]}`), every listed key, current or not. A key
/// that does not parse is skipped (and logged); none at all is an error.
pub(crate) fn parse_key_set(body: &[u8]) -> Result<HashMap<String, VerifyingKey>, String> {
    let document: KeySetDocument =
        serde_json::from_slice(body).map_err(|e| format!("not a key set: {e}"))?;
    let mut keys = HashMap::new();
    for entry in document.public_keys {
        match VerifyingKey::from_public_key_pem(entry.key.trim()) {
            Ok(key) => {
                keys.insert(entry.key_identifier, key);
            }
            Err(error) => tracing::warn!(
                key = %crate::core::Echo::new(&entry.key_identifier, 80),
                %error,
                "a secret-scanning key is not a P-256 public key; skipped"
            ),
        }
    }
    if keys.is_empty() {
        return Err("the key set lists no P-256 key".to_owned());
    }
    Ok(keys)
}

/// Whether `signature` (base64 of an ASN.1 DER ECDSA signature) is
/// `key`'s over `body` (SHA-256).
pub(crate) fn verify(key: &VerifyingKey, body: &[u8], signature: &[u8]) -> bool {
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim_ascii()) else {
        return false;
    };
    let Ok(signature) = Signature::from_der(&der) else {
        return false;
    };
    key.verify(body, &signature).is_ok()
}
