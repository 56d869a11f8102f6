//! Request ids: the client's `x-request-id` when it sent a sane one,
//! otherwise a process-unique one.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderName;

use crate::limits::clean_into;

/// A constant name: looking a header up by `&str` parses the name first.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `x-request-id` (kept in the head's text), or a
/// process-unique number to print.
pub(crate) enum RequestId {
    Given,
    Generated(u64),
}

impl RequestId {
    /// A fresh id: a random per-process prefix and a sequence number, so
    /// ids are unique across restarts without a random draw per request.
    pub(crate) fn generate() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self::Generated(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as the record shows it, into `out` (cleared first); `given`
    /// is the client's id when it gave one.
    pub(crate) fn render_into(
        &self,
        given: &str,
        out: &mut String,
        max: usize,
        truncated: &mut Vec<&'static str>,
    ) {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        match self {
            Self::Given => clean_into(out, given, max, "http.request.id", truncated),
            Self::Generated(seq) => {
                out.clear();
                let prefix = *PREFIX.get_or_init(rand::random::<u32>);
                let _ = write!(out, "{prefix:08x}-{seq}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_read_as_formatted() {
        let mut out = String::from("stale");
        RequestId::Generated(42).render_into("", &mut out, 128, &mut Vec::new());
        let prefix = *PREFIX_FOR_TESTS.get_or_init(|| {
            // The same per-process prefix the id was written with.
            let (hex, _) = out.split_once('-').unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        });
        assert_eq!(out, format!("{prefix:08x}-42"));
    }

    static PREFIX_FOR_TESTS: OnceLock<u32> = OnceLock::new();
}
