//! `spacedock-builder`: the image builder's entry point: flags over the config file, then the service.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::BuilderConfig;

/// The spacedock builder: turns pushed Space commits into content-addressed OCI images.
#[derive(Debug, Parser)]
#[command(name = "spacedock-builder", version, about)]
struct Cli {
    /// TOML config file (see ops/config/builder.toml); flags override its values.
    #[arg(long, short, env = "SPACEDOCK_BUILDER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the build cache and work trees.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Coordinator QUIC addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Join token file from `spacedock cluster join-token create`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Builds run at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Extra CA certificate (PEM) for build steps; repeat for several.
    #[arg(long)]
    extra_ca_cert: Vec<PathBuf>,
    /// Log filter when RUST_LOG is unset.
    #[arg(long)]
    log: Option<String>,
    /// Print the effective config as TOML after checking it, then exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-builder", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: BuilderConfig = spacedock_cli_common::load_config(cli.config.as_deref())?;
    if let Some(v) = cli.data_dir {
        config.data_dir = v;
    }
    if !cli.join.is_empty() {
        config.join = cli.join;
    }
    if cli.token_file.is_some() {
        config.token_file = cli.token_file;
    }
    if let Some(v) = cli.concurrency {
        config.concurrency = v;
    }
    if !cli.extra_ca_cert.is_empty() {
        config.extra_ca_certs = cli.extra_ca_cert;
    }
    if let Some(v) = cli.log {
        config.log = v;
    }
    let check = config.validate();
    if !spacedock_cli_common::start_daemon(
        "spacedock-builder",
        &config,
        check,
        cli.print_config,
        &config.log,
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "taking build jobs is not part of this build yet (tracked as issue #6); \
         use --print-config to check a config"
    )
}
