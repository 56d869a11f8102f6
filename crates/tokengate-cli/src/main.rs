//! `tokengate`: manage API tokens in the embedded SQLite store.
//!
//! ```text
//! tokengate [--db ./tokengate.db] issue --name ci --subject team-a --scope notes:read --audience notes --ttl 30d
//! tokengate list | show ID | revoke ID | rotate ID --grace 1h | inspect TOKEN
//! tokengate audit verify ./audit.jsonl
//! ```
//!
//! The token is printed exactly once, at `issue` and `rotate`; the store
//! keeps only its keyed hash. Bad input gets a one-line error naming it and
//! a non-zero exit, and nothing is written.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks on stdout and stderr"
)]

mod args;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}
