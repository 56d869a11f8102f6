//! Heap allocations per request, for each stack of
//! `benches/support/stacks.rs` (the stacks the instruction counts use):
//! counted in-process by a counting global allocator
//! (`allocation-counter`, which counts the calling thread's allocations
//! only), so it needs no valgrind and is exact: the same build answers the
//! same counts. Each stack first answers `WARM_UP` requests (caches,
//! thread-locals and lazily built tables allocate once), then `REQUESTS`
//! are counted; the request's own building (its header map, extensions,
//! the response) is in every stack's count, so what a layer adds is its
//! count less `bare`'s.
//!
//! Only the request's thread is counted: the audit file's writer thread
//! (stacks `gate`, `gate-usage`) is not.
//!
//! - `cargo bench --bench allocations`: prints each stack's allocations
//!   and bytes per request, and what each adds over `bare` (the
//!   `-headed` stacks over `bare-headed`).
//! - `cargo bench --bench allocations -- guard`: the regression guard
//!   (`.ci/run`): fails when the full Gate (`gate`: JSON-lines audit file)
//!   adds more allocations per request over `bare` than
//!   `benches/allocations-baseline.txt` records, and says to record a drop.
//! - `cargo bench --bench allocations -- record`: records the current
//!   figure.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use http::{Request, Response};
use tokengate::TokenHasher;
use tower::Service;

#[path = "support/stacks.rs"]
mod stacks;
use stacks::{Through, admitted, request};

const WARM_UP: u64 = 1_000;
const REQUESTS: u64 = 10_000;
const BASELINE: &str = "benches/allocations-baseline.txt";

/// The stack whose count the guard keeps, and its baseline.
const GUARDED: &str = "gate";
const BASE: &str = "bare";

/// Sends the warm-up requests, then counts the rest.
#[derive(Default)]
struct Counter {
    counted: allocation_counter::AllocationInfo,
}

impl Through for Counter {
    fn drive<S, B>(&mut self, mut service: S, bearer: &str, requests: u64) -> u64
    where
        S: Service<Request<()>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..WARM_UP {
            assert!(
                admitted(&mut service, request(bearer)),
                "a warm-up request was refused"
            );
        }
        let mut ok = 0;
        self.counted = allocation_counter::measure(|| {
            for _ in 0..requests {
                if admitted(&mut service, request(bearer)) {
                    ok += 1;
                }
            }
        });
        ok
    }

    fn drive_hmac(&mut self, hasher: &TokenHasher, token: &str, requests: u64) -> u64 {
        let mut ok = 0;
        self.counted = allocation_counter::measure(|| {
            for _ in 0..requests {
                if std::hint::black_box(hasher.hash_str(std::hint::black_box(token))).key_id()
                    == tokengate::core::KeyId::new(1)
                {
                    ok += 1;
                }
            }
        });
        ok
    }
}

/// Allocations and bytes per request of one stack.
#[derive(Debug, Clone, Copy)]
struct PerRequest {
    allocations: f64,
    bytes: f64,
}

#[allow(clippy::cast_precision_loss)]
fn measure(stack: &str) -> PerRequest {
    let mut counter = Counter::default();
    let Some(ok) = stacks::run(stack, REQUESTS, &mut counter) else {
        fail(&format!("no stack {stack:?}"));
    };
    assert_eq!(ok, REQUESTS, "{stack}: every counted request is admitted");
    PerRequest {
        allocations: counter.counted.count_total as f64 / REQUESTS as f64,
        bytes: counter.counted.bytes_total as f64 / REQUESTS as f64,
    }
}

/// Says why the run cannot go on, and exits 2.
fn fail(why: &str) -> ! {
    eprintln!("allocations: {why}");
    std::process::exit(2);
}

/// What `baseline` records for `name`.
fn recorded(baseline: &str, name: &str) -> Option<f64> {
    baseline.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == name).then(|| words.next()?.parse().ok())?
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("table", String::as_str);
    let bare = measure(BASE);
    match mode {
        "table" => {
            println!(
                "allocations per request ({REQUESTS} requests after {WARM_UP}; the request thread only)"
            );
            println!(
                "{:<24} {:>12} {:>12} {:>12}",
                "stack", "allocations", "over bare", "bytes"
            );
            // The Prometheus recorder is the process's: that stack is last.
            // The `-headed` stacks over `bare-headed`, the rest over `bare`.
            let headed = measure("bare-headed");
            for stack in stacks::STACKS {
                let base = if stack.ends_with("-headed") {
                    headed
                } else {
                    bare
                };
                let m = match stack {
                    BASE => bare,
                    "bare-headed" => headed,
                    _ => measure(stack),
                };
                println!(
                    "{stack:<24} {:>12.2} {:>12.2} {:>12.0}",
                    m.allocations,
                    m.allocations - base.allocations,
                    m.bytes
                );
            }
        }
        "guard" | "record" => {
            let gate = measure(GUARDED);
            let added = gate.allocations - bare.allocations;
            println!(
                "allocations-guard: {GUARDED} {:.2} allocations per request ({:.0} bytes), {BASE} {:.2}: the Gate adds {added:.2}",
                gate.allocations, gate.bytes, bare.allocations
            );
            if mode == "record" {
                std::fs::write(
                    BASELINE,
                    format!(
                        "# allocations per request the full Gate adds over bare (cargo bench --bench allocations -- guard)\nadded {added:.2}\n{GUARDED} {:.2}\n{BASE} {:.2}\n",
                        gate.allocations, bare.allocations
                    ),
                )
                .unwrap();
                println!("allocations-guard: recorded {added:.2} in {BASELINE}");
                return;
            }
            let baseline = std::fs::read_to_string(BASELINE)
                .unwrap_or_else(|e| fail(&format!("cannot read {BASELINE}: {e}")));
            let limit = recorded(&baseline, "added")
                .unwrap_or_else(|| fail(&format!("{BASELINE} records no `added` figure")));
            // Exact for one build; the half allocation is room for
            // amortised growth (a table doubling once in the count).
            println!(
                "allocations-guard: recorded {limit:.2}, limit {:.2}",
                limit + 0.5
            );
            if added > limit + 0.5 {
                eprintln!(
                    "allocations-guard: FAILED: the Gate adds {added:.2} allocations per request, more than the {limit:.2} recorded.\n  Find them (cargo bench --bench allocations prints each stack), or, if they are wanted,\n  record them with `cargo bench --bench allocations -- record` and say why in the commit."
                );
                std::process::exit(1);
            }
            if added < limit - 0.5 {
                println!(
                    "allocations-guard: the Gate allocates less ({added:.2} < {limit:.2}): record it (-- record) so the guard keeps the gain."
                );
            }
        }
        other => {
            eprintln!(
                "allocations: unknown mode {other:?} (guard, record, or nothing for the table)"
            );
            std::process::exit(2);
        }
    }
}
