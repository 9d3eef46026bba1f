//! `spacedock-agent`: the node daemon's entry point: flags over the config file, then the service.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::AgentConfig;
use spacedock_cli_common::{DaemonFlags, JoinFlags};

/// The spacedock node agent: joins the cluster over QUIC, reports inventory, runs Spaces with containerd.
#[derive(Debug, Parser)]
#[command(name = "spacedock-agent", version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    #[command(flatten)]
    join: JoinFlags,
    /// Name this node reports.
    #[arg(long)]
    node_name: Option<String>,
    /// containerd socket.
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-agent", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: AgentConfig = cli
        .daemon
        .load(|c: &mut AgentConfig| &mut c.data_dir, |c| &mut c.log)?;
    cli.join.apply(&mut config.join, &mut config.token_file);
    if cli.node_name.is_some() {
        config.node_name = cli.node_name;
    }
    if let Some(v) = cli.containerd_socket {
        config.containerd_socket = v;
    }
    let check = config.validate();
    if !spacedock_cli_common::start_daemon(
        "spacedock-agent",
        &config,
        check,
        cli.daemon.print_config,
        &config.log,
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "joining a cluster and running Spaces are not part of this build yet (tracked as issue #4); \
         use --print-config to check a config"
    )
}
