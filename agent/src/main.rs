//! `spacedock-agent`: the node daemon's entry point: flags over the config file, then the service.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::AgentConfig;

/// The spacedock node agent: joins the cluster over QUIC, reports inventory, runs Spaces with containerd.
#[derive(Debug, Parser)]
#[command(name = "spacedock-agent", version, about)]
struct Cli {
    /// TOML config file (see ops/config/agent.toml); flags override its values.
    #[arg(long, short, env = "SPACEDOCK_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the node identity, blobs and allocation state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Coordinator QUIC addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Join token file from `spacedock cluster join-token create`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Name this node reports.
    #[arg(long)]
    node_name: Option<String>,
    /// containerd socket.
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// Log filter when RUST_LOG is unset.
    #[arg(long)]
    log: Option<String>,
    /// Print the effective config as TOML after checking it, then exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-agent", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: AgentConfig = spacedock_cli_common::load_config(cli.config.as_deref())?;
    if let Some(v) = cli.data_dir {
        config.data_dir = v;
    }
    if !cli.join.is_empty() {
        config.join = cli.join;
    }
    if cli.token_file.is_some() {
        config.token_file = cli.token_file;
    }
    if cli.node_name.is_some() {
        config.node_name = cli.node_name;
    }
    if let Some(v) = cli.containerd_socket {
        config.containerd_socket = v;
    }
    if let Some(v) = cli.log {
        config.log = v;
    }
    let check = config.validate();
    if !spacedock_cli_common::start_daemon(
        "spacedock-agent",
        &config,
        check,
        cli.print_config,
        &config.log,
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "joining a cluster and running Spaces are not part of this build yet (tracked as issue #4); \
         use --print-config to check a config"
    )
}
