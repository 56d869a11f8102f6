//! `EnforceScopeLayer` and `RequireScope`: least privilege, deny by default.
//!
//! After the authenticate layer has put a
//! [`Principal`](tokengate_core::Principal) into the request, this layer
//! checks its scopes against what the route needs:
//!
//! - **per route**, with [`RequireScope::all`] / [`RequireScope::any`] /
//!   [`RequireScope::authenticated`] as an axum `route_layer`;
//! - **by table**, with a [`ScopePolicy`] mapping (methods, path pattern)
//!   and gRPC full method names (`/pkg.Service/Method`) to requirements,
//!   including a [read/write helper](ScopePolicyBuilder::read_write) where
//!   safe methods need `<resource>:read` and the rest `<resource>:write`.
//!
//! Whatever no rule covers is denied (403); a request without a principal
//! is refused with 401 (never allowed, never a panic); missing scopes get
//! 403 `insufficient_scope` with `scope="…"` naming them, or gRPC status 7.
//! Matching is exact unless [`ScopeRules`](tokengate_core::ScopeRules) with
//! implications are configured.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Method, Request, Response, StatusCode};
//! use tokengate_core::{Principal, TokenRecord};
//! use tokengate_scope::{EnforceScopeLayer, ScopePolicy};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let policy = ScopePolicy::builder().read_write("/notes", "notes").build()?;
//! let service = ServiceBuilder::new()
//!     .layer(EnforceScopeLayer::new(policy))
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//!
//! # let principal = tokengate_doc::read_only_principal();
//! // `principal` holds only `notes:read`, as the authenticate layer would insert it.
//! let request = |method: Method| {
//!     let mut request = Request::builder().method(method).uri("/notes").body(()).unwrap();
//!     request.extensions_mut().insert(principal.clone());
//!     request
//! };
//! let read = service.clone().oneshot(request(Method::GET)).await?;
//! assert_eq!(read.status(), StatusCode::OK);
//! let write = service.oneshot(request(Method::POST)).await?;
//! assert_eq!(write.status(), StatusCode::FORBIDDEN);
//! assert_eq!(
//!     write.headers()["www-authenticate"],
//!     r#"Bearer realm="tokengate", error="insufficient_scope", scope="notes:write""#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # mod tokengate_doc {
//! #     use std::time::SystemTime;
//! #     use tokengate_core::*;
//! #     pub fn read_only_principal() -> Principal {
//! #         Principal::from_record(&TokenRecord {
//! #             id: TokenId::generate(), hash: TokenHash::from_parts(KeyId::new(1), [0; 32]),
//! #             name: "doc".into(), subject: "alice".into(), scopes: "notes:read".parse().unwrap(),
//! #             audiences: vec![], created_at: SystemTime::now(), expires_at: None, revoked_at: None, disabled_at: None, uses: None, version: 0,
//! #             last_used_at: None, allowed_networks: vec![], rate_quotas: vec![], binding: None, rotated_from: None,
//! #             metadata: Default::default(),
//! #         })
//! #     }
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Dependencies
//!
//! `tokengate-core` (principals, scopes, denials), `tower` and `http` (the
//! middleware contract), `matchit` (the path router axum uses, so patterns
//! and their precedence read the same as the routes they guard) and
//! `thiserror` (policy errors).

mod check;
mod layer;
mod policy;
mod requirement;

pub use layer::{EnforceScope, EnforceScopeLayer, RequireScope};
pub use policy::{PolicyError, ScopeLookup, ScopePolicy, ScopePolicyBuilder};
pub use requirement::{Requirement, RequirementError};

#[cfg(test)]
mod tests;
