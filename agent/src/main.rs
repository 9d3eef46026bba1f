//! `spacedock-agent`: the node daemon's entry point: flags over the config file, then the service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spacedock_agent::config::AgentConfig;
use spacedock_agent::{allocs, cdi, fetch, inventory, network, session};
use spacedock_cli_common::{DaemonFlags, JoinFlags};
use spacedock_shared::wire::Role;

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
    /// containerd namespace for everything the agent creates.
    #[arg(long)]
    containerd_namespace: Option<String>,
    /// Network cut into one /30 per container (e.g. 10.89.0.0/16).
    #[arg(long)]
    container_subnet: Option<String>,
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
    if let Some(v) = cli.containerd_namespace {
        config.containerd_namespace = v;
    }
    if let Some(v) = cli.container_subnet {
        config.container_subnet = v;
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
    let name = config
        .node_name
        .clone()
        .unwrap_or_else(inventory::host_name);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let identity = spacedock_net::identity::load_or_join(
            &config.data_dir,
            &config.join,
            Role::Agent,
            &name,
            (cli.join.token.as_deref(), config.token_file.as_deref()),
        )
        .await?;
        let fetcher = fetch::Fetcher::new(&identity, config.join.clone(), Role::Agent, &name, &config.data_dir)?;
        let subnet = network::Subnet::parse(&config.container_subnet)
            .map_err(|e| anyhow::anyhow!("container_subnet: {e}"))?;
        let xids = std::sync::Arc::new(inventory::XidCounts::default());
        inventory::watch_xid(xids.clone());
        let gpus = inventory::collect(&name, &config.labels, &config.data_dir, &xids).gpus;
        if !gpus.is_empty() && cdi::load(&cdi::CDI_DIRS).is_ok_and(|s| s.is_empty()) {
            tracing::warn!(
                "this node has GPUs but no NVIDIA CDI spec in /etc/cdi or /var/run/cdi; GPU Spaces will fail \
                 until `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` makes one"
            );
        }
        let (runner, reports) = allocs::Runner::new(
            allocs::RunnerConfig {
                data_dir: config.data_dir.clone(),
                containerd_socket: config.containerd_socket.clone(),
                containerd_namespace: config.containerd_namespace.clone(),
                subnet,
                gpu_indexes: gpus.iter().map(|g| (g.uuid.clone(), g.index)).collect(),
            },
            fetcher,
        );
        tokio::select! {
            result = session::run(&config, &name, &identity, runner, reports, xids) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
