//! axum glue: the verified principal as an extractor.

use std::ops::Deref;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use tokengate_check::{Renderer, is_grpc};
use tokengate_core::{Denial, Principal};

/// The peer address axum knows when served with
/// `into_make_service_with_connect_info::<SocketAddr>()`: pass it to
/// `ResolveClientIpLayer::peer_source`.
pub fn peer_addr(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// axum's copy of the request URI (`OriginalUri`, kept by the router for
/// handlers and logging layers): pass it to
/// `AuthenticateLayer::redact_uri_copy` so that a token accepted from the
/// query string is redacted there too. The `Gate` does it by itself.
pub fn original_uri(extensions: &mut http::Extensions) -> Option<&mut http::Uri> {
    extensions
        .get_mut::<axum::extract::OriginalUri>()
        .map(|original| &mut original.0)
}

/// Serves `app` on `addr` as the Gate needs and a deployment ends: with
/// connect info (the Gate reads the peer address from it; without it
/// every request is refused with 500), until SIGTERM or SIGINT
/// ([`shutdown_signal`](crate::shutdown_signal)); then it lets requests in
/// flight finish and shuts `deployment` down (pending usage written, the
/// audit file flushed).
#[cfg(all(feature = "sqlite", feature = "gate"))]
pub async fn serve(
    addr: impl tokio::net::ToSocketAddrs,
    app: axum::Router,
    deployment: crate::Deployment,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    deployment.shutdown().await;
    Ok(())
}

/// Extracts the [`Principal`] the authenticate layer inserted.
///
/// Absent (a public route, or the layer is missing): 401, rendered like the
/// layer's own rejections. Use `Option<Authenticated>` on routes that work
/// with and without a token.
///
/// ```
/// use tokengate::axum::Authenticated;
///
/// async fn whoami(Authenticated(principal): Authenticated) -> String {
///     principal.subject().to_owned()
/// }
///
/// async fn greet(caller: Option<Authenticated>) -> String {
///     caller.map_or("hello, stranger".into(), |c| format!("hello, {}", c.subject()))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl Deref for Authenticated {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

/// The rejection of [`Authenticated`] when no principal is present: 401.
#[derive(Debug, Clone, Copy)]
pub struct MissingPrincipal {
    grpc: bool,
}

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        Renderer::default()
            .render::<axum::body::Body>(Denial::MissingToken, self.grpc)
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = MissingPrincipal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Self)
            .ok_or(MissingPrincipal {
                grpc: is_grpc(&parts.headers),
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned().map(Self))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn principal() -> Principal {
        Principal::from_record(&tokengate_store::testing::record("alice", "notes:read"))
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/me",
                get(|Authenticated(p): Authenticated| async move { p.subject().to_owned() }),
            )
            .route(
                "/maybe",
                get(|p: Option<Authenticated>| async move {
                    p.map_or("nobody".to_owned(), |p| p.subject().to_owned())
                }),
            )
    }

    async fn call(path: &str, with_principal: bool) -> (StatusCode, String) {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        if with_principal {
            request.extensions_mut().insert(principal());
        }
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn extractor_yields_the_principal_or_401() {
        assert_eq!(call("/me", true).await, (StatusCode::OK, "alice".into()));
        let (status, body) = call("/me", false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("missing-token"), "{body}");
    }

    #[tokio::test]
    async fn optional_extractor_never_rejects() {
        assert_eq!(call("/maybe", true).await, (StatusCode::OK, "alice".into()));
        assert_eq!(
            call("/maybe", false).await,
            (StatusCode::OK, "nobody".into())
        );
    }
}
