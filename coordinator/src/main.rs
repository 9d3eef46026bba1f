//! `spacedock-coordinator`: the control plane's entry point: flags over the config file, then the service.

use spacedock_coordinator::config;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use config::CoordinatorConfig;
use spacedock_cli_common::DaemonFlags;

// The coordinator allocates many small, short-lived buffers per request; mimalloc handles that load better
// than glibc's allocator on this path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Seconds without a heartbeat after which a node is marked down.
    #[arg(long)]
    node_ttl_seconds: Option<u64>,
    /// QUIC addresses of running coordinators to join, comma-separated (first start only).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Join token from `spacedock cluster join-token create --role coordinator` (with `--join`).
    #[arg(long, env = "SPACEDOCK_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock-coordinator", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config: CoordinatorConfig = cli
        .daemon
        .load(|c: &mut CoordinatorConfig| &mut c.data_dir, |c| &mut c.log)?;
    let print_config = cli.daemon.print_config;
    let join_token = cli.token.clone();
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
    let catalog = catalog.ok_or_else(|| anyhow::anyhow!("the flavor catalog is invalid"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(spacedock_coordinator::service::run(
        config,
        catalog,
        join_token,
        shutdown_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this coordinator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Flags win over the config file.
fn apply_flags(config: &mut CoordinatorConfig, flags: Cli) {
    if let Some(v) = flags.node_id {
        config.node_id = v;
    }
    if let Some(v) = flags.node_ttl_seconds {
        config.node_ttl_seconds = v;
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
