//! Test support for tokengate's cross-crate integration tests and benches.
//!
//! This package is not published. Its `tests/` and `benches/` directories hold
//! the tests that span several crates and the criterion benches; this library
//! holds the few helpers they share.
