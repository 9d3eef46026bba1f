//! `spacedock-builder`: the image builder's entry point: flags over the config file, then the service.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::BuilderConfig;
use spacedock_agent::fetch::Fetcher;
use spacedock_builder::build::Builder;
use spacedock_builder::cache::Cache;
use spacedock_builder::run::Runner;
use spacedock_builder::service;
use spacedock_cli_common::{DaemonFlags, JoinFlags};
use spacedock_shared::wire::Role;

/// The spacedock builder: turns pushed Space commits into content-addressed OCI images.
#[derive(Debug, Parser)]
#[command(name = "spacedock-builder", version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    #[command(flatten)]
    join: JoinFlags,
    /// The builder's name in the cluster (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Builds run at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Socket of the containerd that runs build steps.
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace of the build steps.
    #[arg(long)]
    containerd_namespace: Option<String>,
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
    if cli.name.is_some() {
        config.name = cli.name;
    }
    if let Some(v) = cli.concurrency {
        config.concurrency = v;
    }
    if let Some(v) = cli.containerd_socket {
        config.containerd_socket = v;
    }
    if let Some(v) = cli.containerd_namespace {
        config.containerd_namespace = v;
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
    let name = config
        .name
        .clone()
        .unwrap_or_else(spacedock_agent::inventory::host_name);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let identity = spacedock_net::identity::load_or_join(
            &config.data_dir,
            &config.join,
            Role::Builder,
            &name,
            (cli.join.token.as_deref(), config.token_file.as_deref()),
        )
        .await?;
        let cluster = Fetcher::new(
            &identity,
            config.join.clone(),
            Role::Builder,
            &name,
            &config.data_dir,
        )?;
        let cache = Cache::open(&config.data_dir, config.cache_budget_gib << 30)?;
        let runner = Runner {
            socket: config.containerd_socket.clone(),
            namespace: config.containerd_namespace.clone(),
            work: config.data_dir.join("steps"),
            ca_bundle: spacedock_builder::run::write_ca_bundle(
                &config.extra_ca_certs,
                &config.data_dir.join("ca-certificates.crt"),
            )?,
        };
        runner.remove_leftovers().await;
        let _ = std::fs::remove_dir_all(config.data_dir.join("downloads"));
        let builder = Builder::new(
            config.data_dir.clone(),
            cluster,
            cache,
            runner,
            (config.hub_endpoint.clone(), config.registries.clone()),
        );
        tokio::select! {
            result = service::run(config.join.clone(), &name, &identity, config.concurrency, builder) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
