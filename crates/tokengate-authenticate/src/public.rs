//! Routes that need no credential.

use std::fmt;

use http::{Method, Uri};

/// Decides which requests are public: they pass without a credential and
/// without a [`Principal`](tokengate_core::Principal). Everything else
/// needs a valid token.
///
/// Implemented for closures `Fn(&Method, &Uri) -> bool` and for
/// [`PublicPaths`].
pub trait IsPublic: Send + Sync + 'static {
    /// Whether a request for `method` and `uri` is public.
    fn is_public(&self, method: &Method, uri: &Uri) -> bool;
}

impl<F> IsPublic for F
where
    F: Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
{
    fn is_public(&self, method: &Method, uri: &Uri) -> bool {
        self(method, uri)
    }
}

/// Public paths, matched exactly (no normalisation: `/healthz/` is not
/// `/healthz`) or by prefix.
///
/// ```
/// use http::{Method, Uri};
/// use tokengate_authenticate::{IsPublic, PublicPaths};
///
/// let public = PublicPaths::new().exact("/healthz").grpc_health().grpc_reflection();
/// let get = |path: &str| public.is_public(&Method::GET, &path.parse::<Uri>().unwrap());
/// assert!(get("/healthz"));
/// assert!(get("/grpc.health.v1.Health/Check"));
/// assert!(!get("/healthz/extra"));
/// assert!(!get("/notes"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PublicPaths {
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl PublicPaths {
    /// No public path.
    pub fn new() -> Self {
        Self::default()
    }

    /// `path` exactly is public.
    pub fn exact(mut self, path: &str) -> Self {
        self.exact.push(path.into());
        self
    }

    /// Every path starting with `prefix` is public.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// The gRPC health service (`/grpc.health.v1.Health/Check` and `Watch`).
    pub fn grpc_health(self) -> Self {
        self.prefix("/grpc.health.v1.Health/")
    }

    /// The gRPC reflection services (v1 and v1alpha).
    pub fn grpc_reflection(self) -> Self {
        self.prefix("/grpc.reflection.v1.ServerReflection/")
            .prefix("/grpc.reflection.v1alpha.ServerReflection/")
    }
}

impl IsPublic for PublicPaths {
    fn is_public(&self, _: &Method, uri: &Uri) -> bool {
        let path = uri.path();
        self.exact.iter().any(|p| **p == *path)
            || self.prefixes.iter().any(|p| path.starts_with(&**p))
    }
}

impl fmt::Debug for PublicPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicPaths")
            .field("exact", &self.exact)
            .field("prefixes", &self.prefixes)
            .finish()
    }
}
