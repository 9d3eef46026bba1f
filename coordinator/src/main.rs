//! `spacedock-coordinator`: the control plane's entry point: flags over the config file, then the service.

use spacedock_coordinator::config;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use config::CoordinatorConfig;
use spacedock_cli_common::DaemonFlags;

/// The spacedock control plane: Raft-replicated cluster state, the HTTP API and ingress, the scheduler.
#[derive(Debug, Parser)]
#[command(name = "spacedock-coordinator", version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// This coordinator's Raft id.
    #[arg(long)]
    node_id: Option<u64>,
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
    /// QUIC addresses of running coordinators to join, comma-separated.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-coordinator", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: CoordinatorConfig = cli
        .daemon
        .load(|c: &mut CoordinatorConfig| &mut c.data_dir, |c| &mut c.log)?;
    let print_config = cli.daemon.print_config;
    apply_flags(&mut config, cli);
    let check = config.validate();
    let catalog = check.clone().ok();
    if !spacedock_cli_common::start_daemon(
        "spacedock-coordinator",
        &config,
        check.map(|_| ()),
        print_config,
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
fn apply_flags(config: &mut CoordinatorConfig, flags: Cli) {
    if let Some(v) = flags.node_id {
        config.node_id = v;
    }
    if let Some(v) = flags.api_listen {
        config.api_listen = v;
    }
    if let Some(v) = flags.quic_listen {
        config.quic_listen = v;
    }
    if let Some(v) = flags.public_url {
        config.public_url = v;
    }
    if let Some(v) = flags.apps_domain {
        config.apps_domain = v;
    }
    if !flags.join.is_empty() {
        config.join = flags.join;
    }
}
