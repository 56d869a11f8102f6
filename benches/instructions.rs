//! A fixed number of requests through one stack, for instruction counts
//! under callgrind (stable to well under 1 % on this noisy machine, unlike
//! wall time). `benches/instructions.sh` runs it for each stack at two
//! request counts and prints instructions per request (the difference
//! divided by the extra requests, so setup cancels out).
//!
//! Usage: `instructions STACK REQUESTS`, STACK one of those
//! `benches/support/stacks.rs` builds (`bare`, `hmac`, `client-ip`,
//! `audit`, `rate-ip`, `authenticate`, `rate-token`, `scope`,
//! `gate-discard`, `gate-own-check`, `gate-own-check-inlined`, `gate`,
//! `gate-usage`, `gate-prometheus`; its docs say what each holds).
//! Callgrind counts only inside functions named `*drive*`: the two
//! methods below.
//!
//! With `COLD` set in the environment, the driver writes over a buffer
//! twice the size of this machine's L2 before each request (in
//! `CacheEvictor::evict`, which the script leaves out of the count): with callgrind's cache model
//! (`COLD=1 benches/instructions.sh`), the cache lines a request misses.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::hint::black_box;

use http::{Request, Response};
use tokengate::audit::AuditLayer;
use tokengate::core::KeyId;
use tokengate::{
    AuthenticateLayer, CacheConfig, CachedStore, EnforceScopeLayer, Gate, MemoryStore, Pepper,
    ScopePolicy, TokenHasher,
};
use tokengate_tests::CacheEvictor;
use tower::{Layer, Service};

#[path = "support/stacks.rs"]
mod stacks;
use stacks::{Discard, Through, admitted, handler, request};

/// Sends the requests with nothing around them but the cache evictor
/// when `COLD` is set.
struct Callgrind;

impl Through for Callgrind {
    #[inline(never)]
    fn drive<S, B>(&mut self, mut service: S, bearer: &str, requests: u64) -> u64
    where
        S: Service<Request<()>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
    {
        let mut ok = 0;
        let mut cold = std::env::var_os("COLD").map(|_| CacheEvictor::default());
        for _ in 0..requests {
            if let Some(evictor) = cold.as_mut() {
                evictor.evict();
            }
            if admitted(&mut service, request(bearer)) {
                ok += 1;
            }
        }
        ok
    }

    /// The token's keyed hash, `requests` times: the one part of a request
    /// whose cost under callgrind (software SHA-256) differs most from the
    /// hardware it runs on (SHA-NI).
    #[inline(never)]
    fn drive_hmac(&mut self, hasher: &TokenHasher, token: &str, requests: u64) -> u64 {
        let mut ok = 0;
        for _ in 0..requests {
            let hash = hasher.hash_str(black_box(token));
            if black_box(hash).key_id() == KeyId::new(1) {
                ok += 1;
            }
        }
        ok
    }
}

/// Bounds on what every admitted request moves around, with room for
/// compiler layout changes: refusals and the audit record are boxed, so
/// the forwarding path carries pointers rather than whole responses.
const MAX_FUTURE: usize = 384;
const MAX_RESPONSE: usize = 256;

/// The sizes of `service`'s response future and response.
fn sizes<S: Service<Request<()>>>(_: &S) -> (usize, usize) {
    (
        std::mem::size_of::<S::Future>(),
        std::mem::size_of::<S::Response>(),
    )
}

/// Prints the full Gate's response future and response sizes; exits 1
/// when either passes its bound.
fn footprint() {
    let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [7u8; 32]).unwrap());
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
    let auth = AuthenticateLayer::new(cache, hasher, "notes".parse().unwrap());
    let policy = ScopePolicy::builder()
        .read_write("/notes", "notes")
        .build()
        .unwrap();
    let gate = Gate::new(auth, EnforceScopeLayer::new(policy)).audit(AuditLayer::new(Discard));
    let (future, response) = sizes(&gate.layer(handler()));
    println!(
        "footprint: gate future {future} bytes (at most {MAX_FUTURE}), response {response} bytes (at most {MAX_RESPONSE})"
    );
    if future > MAX_FUTURE || response > MAX_RESPONSE {
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("footprint") {
        footprint();
        return;
    }
    let (Some(stack), Some(requests)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok()))
    else {
        // Run without arguments (as `cargo bench` does): a smoke run.
        println!("usage: instructions STACK REQUESTS (see benches/support/stacks.rs for stacks)");
        return;
    };
    let Some(ok) = stacks::run(stack, requests, &mut Callgrind) else {
        eprintln!(
            "instructions: no stack {stack:?}; one of {:?}",
            stacks::STACKS
        );
        std::process::exit(2);
    };
    println!("{stack}: {ok} of {requests} requests answered 200");
}
