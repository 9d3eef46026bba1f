//! `spacedock`: the CLI for Space authors and operators, a client of the coordinator's HTTP API, and
//! `spacedock dev`, which runs a one-machine cluster.

mod admin;
mod bootstrap;
mod client;
mod config;
mod dev;
mod image;
mod space;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client::Client;
use config::CliConfig;
use spacedock_shared::flavor::Catalog;

/// spacedock: self-hosted Spaces on your own GPU fleet.
#[derive(Debug, Parser)]
#[command(name = "spacedock", version, about)]
struct Cli {
    /// TOML config file (see ops/config/cli.toml); default ~/.config/spacedock/config.toml.
    #[arg(long, short, global = true, env = "SPACEDOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator API URL [default: SPACEDOCK_ENDPOINT, then HF_ENDPOINT, then the config's `endpoint`].
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// API token [default: SPACEDOCK_TOKEN, then HF_TOKEN, then the config's `token_file`].
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with one Space.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Operate the cluster: status, join tokens, members.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Images in the cluster's store: import a docker-archive or OCI layout, list.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Running minutes and cost per Space and flavor, from the usage ledger.
    Usage {
        /// A user or organization [default: yours; every namespace for cluster admins].
        #[arg(long)]
        namespace: Option<String>,
        /// Start of the window, ISO 8601 (2026-11-01 or 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End of the window [default: now].
        #[arg(long)]
        to: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Worker nodes: state (ready, down, draining), inventory and GPUs.
    Nodes {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<admin::NodesCommand>,
    },
    /// Manage users (cluster admins).
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage organizations and their members.
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Run a cluster on this machine until Ctrl-C: coordinators as child processes, state in --data-dir.
    Dev(dev::DevArgs),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Load a `docker save` archive or an OCI image layout tar; blobs the cluster has are skipped.
    Import {
        file: PathBuf,
        /// The image's name in the cluster [default: the archive's tag].
        #[arg(long)]
        name: Option<String>,
    },
    /// The stored images.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a base image from Debian packages with debootstrap (as root) and import it.
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
}

#[derive(Debug, Subcommand)]
enum BootstrapCommand {
    /// `spacedock/python:VERSION`, the base of Gradio and Streamlit Spaces: Debian's python3 with a venv at
    /// /opt/venv and the user `user` (uid 1000).
    Python {
        /// The Python version (3.9, 3.11 or 3.13: the ones Debian releases ship).
        #[arg(long)]
        version: String,
        /// The Debian mirror.
        #[arg(long, default_value = bootstrap::DEFAULT_MIRROR)]
        mirror: String,
    },
}

#[derive(Debug, Subcommand)]
enum SpaceCommand {
    /// Check a Space's README.md front matter; exit 0 when valid, 1 when invalid, 2 when unreadable.
    /// Each problem is printed as `PATH:LINE: KEY: message`.
    Validate {
        /// A README.md, or a directory holding one.
        path: PathBuf,
    },
    /// Run a stored image as the Space (a prebuilt-image Space): the app must answer HTTP on --port.
    SetImage {
        /// `namespace/name`.
        space: String,
        image: String,
        #[arg(long)]
        port: u16,
        /// Seconds the app has to answer after it starts [default: 1800].
        #[arg(long)]
        startup_timeout: Option<u64>,
    },
}

fn main() -> ExitCode {
    spacedock_cli_common::main_with("spacedock", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone().or_else(config::default_path);
    let config: CliConfig = spacedock_cli_common::load_config(path.as_deref())?;
    spacedock_cli_common::init_tracing(&config.log)?;
    let client = || -> anyhow::Result<Client> {
        let endpoint = cli
            .endpoint
            .clone()
            .or_else(|| env("SPACEDOCK_ENDPOINT"))
            .or_else(|| env("HF_ENDPOINT"))
            .unwrap_or_else(|| config.endpoint.clone());
        let token = match cli
            .token
            .clone()
            .or_else(|| env("SPACEDOCK_TOKEN"))
            .or_else(|| env("HF_TOKEN"))
        {
            Some(token) => Some(token),
            None => match &config.token_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading the token file {}", file.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            },
        };
        Ok(Client::new(&endpoint, token))
    };
    match cli.command {
        Command::Space(SpaceCommand::Validate { path }) => {
            Ok(space::validate(&path, &Catalog::huggingface()))
        }
        Command::Space(SpaceCommand::SetImage {
            space,
            image,
            port,
            startup_timeout,
        }) => {
            let mut body = serde_json::json!({ "image": image, "port": port });
            if let Some(seconds) = startup_timeout {
                body["startupTimeout"] = seconds.into();
            }
            let runtime = client()?.put(&format!("/api/spaces/{space}/image"), &body)?;
            println!(
                "{space} runs {image}: {}",
                runtime["stage"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Import { file, name }) => {
            image::import(&client()?, &file, name).map(|()| ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::List { json }) => {
            image::list(&client()?, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Bootstrap(BootstrapCommand::Python { version, mirror })) => {
            let client = client()?;
            bootstrap::release_for(&version)?;
            bootstrap::python(&client, &version, &mirror).map(|_| ExitCode::SUCCESS)
        }
        Command::Usage {
            namespace,
            from,
            to,
            json,
        } => admin::usage(&client()?, namespace, from, to, json),
        Command::Cluster(command) => admin::cluster(&client()?, command),
        Command::Nodes {
            json,
            command: None,
        } => admin::nodes(&client()?, json),
        Command::Nodes {
            command: Some(command),
            ..
        } => admin::node_command(&client()?, command),
        Command::User(command) => admin::user(&client()?, command),
        Command::Org(command) => admin::org(&client()?, command),
        Command::Token(command) => admin::token(&client()?, command),
        Command::Dev(args) => dev::run(args),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
