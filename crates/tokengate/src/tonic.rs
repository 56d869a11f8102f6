//! tonic glue: the verified principal from a `tonic::Request`.
//!
//! ```
//! use tokengate::tonic::PrincipalExt;
//!
//! // The body of a generated service method.
//! async fn list_notes(request: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
//!     let principal = request.principal()?;
//!     Ok(tonic::Response::new(format!("notes of {}", principal.subject())))
//! }
//! # let status = tokio::runtime::Builder::new_current_thread().build().unwrap()
//! #     .block_on(list_notes(tonic::Request::new(()))).unwrap_err();
//! # assert_eq!(status.code(), tonic::Code::Unauthenticated);
//! ```

use tokengate_core::Principal;

/// The peer address tonic's server records for TCP connections: pass it
/// to `ResolveClientIpLayer::peer_source`.
pub fn peer_addr(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// Reads the [`Principal`] that the authenticate layer (in
/// `Server::builder().layer(...)`) inserted; tonic carries the HTTP
/// request's extensions into `tonic::Request`.
pub trait PrincipalExt {
    /// The principal, or `UNAUTHENTICATED` when there is none (a public
    /// method, or the layer is missing).
    fn principal(&self) -> Result<&Principal, tonic::Status>;
}

impl<T> PrincipalExt for tonic::Request<T> {
    fn principal(&self) -> Result<&Principal, tonic::Status> {
        self.extensions()
            .get::<Principal>()
            .ok_or_else(|| tonic::Status::unauthenticated("A bearer token is required."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_principal_is_unauthenticated() {
        let request = tonic::Request::new(());
        assert_eq!(
            request.principal().unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
