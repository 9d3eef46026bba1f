//! `spacedock-builder`: the image builder's entry point: flags over the config file, then the service.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::BuilderConfig;
use spacedock_cli_common::{DaemonFlags, JoinFlags};

/// The spacedock builder: turns pushed Space commits into content-addressed OCI images.
#[derive(Debug, Parser)]
#[command(name = "spacedock-builder", version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    #[command(flatten)]
    join: JoinFlags,
    /// Builds run at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Extra CA certificate (PEM) for build steps; repeat for several.
    #[arg(long)]
    extra_ca_cert: Vec<PathBuf>,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-builder", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: BuilderConfig = cli
        .daemon
        .load(|c: &mut BuilderConfig| &mut c.data_dir, |c| &mut c.log)?;
    cli.join.apply(&mut config.join, &mut config.token_file);
    if let Some(v) = cli.concurrency {
        config.concurrency = v;
    }
    if !cli.extra_ca_cert.is_empty() {
        config.extra_ca_certs = cli.extra_ca_cert;
    }
    let check = config.validate();
    if !spacedock_cli_common::start_daemon(
        "spacedock-builder",
        &config,
        check,
        cli.daemon.print_config,
        &config.log,
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "taking build jobs is not part of this build yet (tracked as issue #6); \
         use --print-config to check a config"
    )
}
