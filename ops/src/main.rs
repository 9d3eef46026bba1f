//! `spacedock`: the CLI for Space authors and operators, a client of the coordinator's HTTP API.

mod config;
mod space;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use config::CliConfig;
use spacedock_shared::flavor::Catalog;

/// spacedock: self-hosted Spaces on your own GPU fleet.
#[derive(Debug, Parser)]
#[command(name = "spacedock", version, about)]
struct Cli {
    /// TOML config file (see ops/config/cli.toml); default ~/.config/spacedock/config.toml.
    #[arg(long, short, global = true, env = "SPACEDOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator API URL; overrides the config's `endpoint`.
    #[arg(long, global = true, env = "SPACEDOCK_ENDPOINT")]
    endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with one Space.
    #[command(subcommand)]
    Space(SpaceCommand),
}

#[derive(Debug, Subcommand)]
enum SpaceCommand {
    /// Check a Space's README.md front matter; exit 0 when valid, 1 when invalid, 2 when unreadable.
    /// Each problem is printed as `PATH:LINE: KEY: message`.
    Validate {
        /// A README.md, or a directory holding one.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone().or_else(config::default_path);
    let mut config: CliConfig = spacedock_cli_common::load_config(path.as_deref())?;
    if let Some(endpoint) = cli.endpoint {
        config.endpoint = endpoint;
    }
    spacedock_cli_common::init_tracing(&config.log)?;
    match cli.command {
        Command::Space(SpaceCommand::Validate { path }) => {
            Ok(space::validate(&path, &Catalog::huggingface()))
        }
    }
}
