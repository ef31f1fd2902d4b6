//! `meshsplit`: the operator's command for meshsplit plugin configurations.
//!
//! It compiles configs with the filter's own code (`meshsplit::plan`), so what it accepts and
//! the errors it prints are exactly the filter's.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
mod check;
mod ecds;
mod extract;
mod fleet;
mod load;
mod output;
mod position;
mod preview;
mod render;
mod replace;
mod report;
mod route_patches;
mod schedule;
mod schema;
mod simulate;
mod source;
mod split_routes;
mod status;
mod watch;

#[cfg(test)]
#[path = "../../fuzz.rs"]
mod fuzz;
#[cfg(test)]
mod fuzz_tests;

/// Check, preview and apply meshsplit plugin configurations before Envoy or Istio gets them;
/// show the split in force from Envoy's stats; render the manifests that route it with Istio's or
/// Envoy Gateway's own APIs; print the configuration's JSON Schema.
#[derive(Debug, Parser)]
#[command(name = "meshsplit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(check::Args),
    Preview(preview::Args),
    Apply(apply::Args),
    Status(status::Args),
    Render(render::Args),
    Schema(schema::Args),
}

/// How a command ended; the process exit code. A run that meets several outcomes ends with the
/// highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Everything checked is valid.
    Ok = 0,
    /// A configuration is invalid (or, with `--strict`, drew a warning).
    Invalid = 1,
    /// Usage or input problem: unreadable file, not valid JSON or YAML (a syntax error, in a
    /// file or in a configuration embedded in one as a string), no configuration in it.
    Error = 2,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match &cli.command {
        Command::Check(args) => check::run(args),
        Command::Preview(args) => preview::run(args),
        Command::Apply(args) if args.watch => watch::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Status(args) => status::run(args),
        Command::Render(args) => render::run(args),
        Command::Schema(args) => schema::run(args),
    };
    ExitCode::from(status as u8)
}
