//! Requests tokengate makes itself (secret-scanning key sets, webhook
//! deliveries): one HTTPS connector.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// An HTTP/1 connector for `http://` and `https://` URLs, trusting the
/// web PKI's roots, on ring (no cmake, no large C library).
pub(crate) fn connector() -> HttpsConnector<HttpConnector> {
    // ring's provider lacks post-quantum key exchange, which guards
    // secrets recorded now against decryption later; what is sent (public
    // key sets, signed event bodies naming token ids) is not worth it.
    #[allow(deprecated, reason = "what is sent needs no post-quantum secrecy")]
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|config| hyper_rustls::ConfigBuilderExt::with_webpki_roots(config).with_no_client_auth());
    match tls {
        Ok(tls) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build(),
        // ring offers the default protocol versions: this does not happen.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build(),
    }
}
