//! How much of what a request controls a record keeps.

use http::HeaderName;

/// A constant name: looking a header up by `&str` parses the name first.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long each request-controlled field may be, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// `url.path` (default 2,048).
    pub path: usize,
    /// `url.query` (default 2,048).
    pub query: usize,
    /// `user_agent.original` (default 256).
    pub user_agent: usize,
    /// `http.request.id` (default 128).
    pub request_id: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        Self {
            path: 2_048,
            query: 2_048,
            user_agent: 256,
            request_id: 128,
        }
    }
}
