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

use clap::{CommandFactory as _, FromArgMatches as _};

fn main() -> ExitCode {
    if let Err(refused) = refuse_control_characters(std::env::args_os()) {
        eprintln!("error: {refused}");
        return ExitCode::from(2);
    }
    let matches = args::Cli::command().get_matches();
    let mut cli = match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    cli.db_given = db_given(&matches);
    // A server uses every core; a command, one thread.
    let mut builder = if matches!(cli.command, args::Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // An error may quote stored or typed text: each line escaped.
            let lines: Vec<_> = error
                .lines()
                .map(tokengate::core::escape_for_display)
                .collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::from(1)
        }
    }
}

/// Whether `--db` was given (before or after the command) or defaulted.
fn db_given(matches: &clap::ArgMatches) -> bool {
    let given =
        |m: &clap::ArgMatches| m.value_source("db") == Some(clap::parser::ValueSource::CommandLine);
    given(matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub))
}

/// Refuses an argument holding a control character (C0 such as CR, form
/// feed or ESC, DEL, or C1 such as CSI) before the argument parser sees
/// it: the parser's errors quote what they refuse, raw, to the operator's
/// terminal. The refusal names the argument escaped (and withholds it if
/// it may be a token). No tokengate value
/// (name, subject, scope, metadata, path) may hold one.
fn refuse_control_characters(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    for (position, arg) in args.enumerate().skip(1) {
        let text = arg.to_string_lossy();
        if text.chars().any(char::is_control) {
            return Err(format!(
                "argument {position} {} holds a control character; none is allowed",
                tokengate::core::Echo::new(&tokengate::core::escape_for_display(&text), 200)
            ));
        }
    }
    Ok(())
}
