//! `push-dispatch`: the command line. Wiring only: parse arguments, load the
//! config, and hand over to the crates. Exit codes: 0 ok, 2 usage or config
//! error (the message names the key and the fix), 1 runtime failure.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => commands::run(&cli.config).await,
            Command::Provision { dry_run } => commands::provision(&cli.config, dry_run).await,
            Command::Send(args) => commands::send(&cli.config, args).await,
            Command::CheckConfig { online } => commands::check_config(&cli.config, online).await,
            Command::Sandbox(args) => commands::sandbox(args).await,
            Command::Dlq(cmd) => commands::dlq(&cli.config, cmd).await,
            Command::Snapshot(cmd) => commands::snapshot(&cli.config, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
