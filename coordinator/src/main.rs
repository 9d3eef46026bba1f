//! `spacedock-coordinator`: the control plane's entry point: flags over the config file, then the service.

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::CoordinatorConfig;

/// The spacedock control plane: Raft-replicated cluster state, the HTTP API and ingress, the scheduler.
#[derive(Debug, Parser)]
#[command(name = "spacedock-coordinator", version, about)]
struct Cli {
    /// TOML config file (see ops/config/coordinator.toml); flags override its values.
    #[arg(long, short, env = "SPACEDOCK_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
    /// This coordinator's Raft id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Directory for the Raft log, snapshots, CA and blobs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP API and ingress address.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// QUIC address for peers, agents and builders.
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// URL of the API as clients reach it.
    #[arg(long)]
    public_url: Option<String>,
    /// Domain under which Spaces are served.
    #[arg(long)]
    apps_domain: Option<String>,
    /// QUIC address of a running coordinator to join (repeat for several).
    #[arg(long)]
    join: Vec<String>,
    /// Log filter when RUST_LOG is unset (e.g. `info,spacedock=debug`).
    #[arg(long)]
    log: Option<String>,
    /// Print the effective config as TOML after checking it, then exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-coordinator", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: CoordinatorConfig = spacedock_cli_common::load_config(cli.config.as_deref())?;
    apply_flags(&mut config, &cli);
    let check = config.validate();
    let catalog = check.clone().ok();
    if !spacedock_cli_common::start_daemon(
        "spacedock-coordinator",
        &config,
        check.map(|_| ()),
        cli.print_config,
        &config.log,
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let n_flavors = catalog.map_or(0, |c| c.iter().count());
    tracing::info!(
        node_id = config.node_id,
        n_flavors,
        "flavor catalog in force"
    );
    anyhow::bail!(
        "the replicated control plane is not part of this build yet (tracked as issue #3); \
         use --print-config to check a config"
    )
}

/// Flags win over the config file.
fn apply_flags(config: &mut CoordinatorConfig, flags: &Cli) {
    if let Some(v) = flags.node_id {
        config.node_id = v;
    }
    if let Some(v) = flags.data_dir.clone() {
        config.data_dir = v;
    }
    if let Some(v) = flags.api_listen {
        config.api_listen = v;
    }
    if let Some(v) = flags.quic_listen {
        config.quic_listen = v;
    }
    if let Some(v) = flags.public_url.clone() {
        config.public_url = v;
    }
    if let Some(v) = flags.apps_domain.clone() {
        config.apps_domain = v;
    }
    if !flags.join.is_empty() {
        config.join = flags.join.clone();
    }
    if let Some(v) = flags.log.clone() {
        config.log = v;
    }
}
