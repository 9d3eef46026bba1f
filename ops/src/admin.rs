//! Operator commands: cluster status, join tokens, members, users, organizations and tokens.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term and applied indexes.
    Status {
        /// Print `{"leader": ID, "term": N, "members": [{"id", "api_url", "role", "applied_index"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Join tokens for new coordinators, agents and builders.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
    /// Remove a coordinator from the Raft group.
    RemoveMember {
        /// The coordinator's Raft id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a token; it is printed once and cannot be shown again.
    Create {
        /// What the joining node becomes: coordinator, agent or builder.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Lifetime, like `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Make a node ineligible for new work and move its workloads off.
    Drain { node: String },
    /// Make a drained node eligible again.
    Ready { node: String },
}

pub fn node_command(client: &Client, command: NodesCommand) -> anyhow::Result<ExitCode> {
    let (node, action) = match &command {
        NodesCommand::Drain { node } => (node, "drain"),
        NodesCommand::Ready { node } => (node, "ready"),
    };
    let result = client.post(&format!("/api/nodes/{node}/{action}"), &json!({}))?;
    eprintln!("node {node} is {}", result["state"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// `spacedock nodes`: every worker node with its state and inventory.
pub fn nodes(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let nodes = client.get("/api/nodes")?;
    if json {
        return print(&nodes);
    }
    println!(
        "{:<20} {:<9} {:>5} {:>9} {:>10} {:>6}  GPUS",
        "NAME", "STATE", "CPUS", "MEM_GIB", "DISK_GIB", "ALLOCS"
    );
    for n in nodes.as_array().cloned().unwrap_or_default() {
        let gib = |v: &Value| v.as_u64().unwrap_or(0) / (1 << 30);
        let gpus: Vec<String> = n["gpus"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|g| g["name"].as_str().unwrap_or("?").to_owned())
            .collect();
        let gpus = if gpus.is_empty() {
            n["gpuNote"].as_str().unwrap_or("-").to_owned()
        } else {
            gpus.join(", ")
        };
        println!(
            "{:<20} {:<9} {:>5} {:>9} {:>10} {:>6}  {gpus}",
            n["name"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["cpuCores"].to_string(),
            gib(&n["memoryBytes"]),
            gib(&n["diskFreeBytes"]),
            n["allocations"].as_array().map_or(0, Vec::len),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        name: String,
        #[arg(long)]
        fullname: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Make the user a cluster operator.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization; you become its admin.
    Create {
        name: String,
        #[arg(long)]
        fullname: Option<String>,
    },
    /// Add a member or change their role (read, write, admin).
    SetMember {
        org: String,
        user: String,
        role: String,
    },
    /// Remove a member.
    RemoveMember { org: String, user: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once and cannot be shown again.
    Create {
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "write")]
        role: String,
        /// Owner (cluster admins only; default: you).
        #[arg(long)]
        owner: Option<String>,
        /// Lifetime, like `30d`; none by default.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

fn seconds(ttl: &str) -> anyhow::Result<u64> {
    Ok(spacedock_shared::duration::parse(ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?
        .as_secs())
}

fn print(value: &Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

pub fn cluster(client: &Client, command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Status { json } => {
            let status = client.get("/api/cluster/status")?;
            let members: Vec<Value> = status["members"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| json!({ "id": m["id"], "api_url": m["api_url"], "role": m["role"], "applied_index": m["applied_index"] }))
                .collect();
            if json {
                return print(
                    &json!({ "leader": status["leader"], "term": status["term"], "members": members }),
                );
            }
            println!(
                "leader {}  term {}  commit {}",
                status["leader"], status["term"], status["commit_index"]
            );
            println!("{:<6} {:<12} {:<10} API", "ID", "ROLE", "APPLIED");
            for m in &members {
                let role = m["role"].as_str().unwrap_or("-");
                let api = m["api_url"].as_str().unwrap_or("-");
                println!(
                    "{:<6} {:<12} {:<10} {api}",
                    m["id"].to_string(),
                    role,
                    m["applied_index"].to_string()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::JoinToken(JoinTokenCommand::Create { role, ttl }) => {
            let created = client.post(
                "/api/cluster/join-tokens",
                &json!({ "role": role, "ttlSeconds": seconds(&ttl)? }),
            )?;
            eprintln!(
                "join token {} for a {} node, expires {}",
                created["id"], created["role"], created["expiresAt"]
            );
            println!("{}", created["token"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::JoinToken(JoinTokenCommand::Revoke { id }) => {
            client.delete(&format!("/api/cluster/join-tokens/{id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::RemoveMember { id } => {
            client.delete(&format!("/api/cluster/members/{id}"))?;
            eprintln!("coordinator {id} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn user(client: &Client, command: UserCommand) -> anyhow::Result<ExitCode> {
    let UserCommand::Create {
        name,
        fullname,
        email,
        admin,
    } = command;
    print(&client.post(
        "/api/cluster/users",
        &json!({ "name": name, "fullname": fullname, "email": email, "admin": admin }),
    )?)
}

pub fn org(client: &Client, command: OrgCommand) -> anyhow::Result<ExitCode> {
    match command {
        OrgCommand::Create { name, fullname } => print(&client.post(
            "/api/cluster/orgs",
            &json!({ "name": name, "fullname": fullname }),
        )?),
        OrgCommand::SetMember { org, user, role } => {
            client.put(
                &format!("/api/cluster/orgs/{org}/members"),
                &json!({ "user": user, "role": role }),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        OrgCommand::RemoveMember { org, user } => {
            client.put(
                &format!("/api/cluster/orgs/{org}/members"),
                &json!({ "user": user, "role": null }),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn token(client: &Client, command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            name,
            role,
            owner,
            ttl,
        } => {
            let expires = ttl.as_deref().map(seconds).transpose()?;
            let body =
                json!({ "name": name, "role": role, "owner": owner, "expiresInSeconds": expires });
            let created = client.post("/api/cluster/tokens", &body)?;
            eprintln!(
                "token {} for {} ({})",
                created["id"], created["owner"], created["role"]
            );
            println!("{}", created["token"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id } => {
            client.delete(&format!("/api/cluster/tokens/{id}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `spacedock usage`.
pub fn usage(
    client: &Client,
    namespace: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let query: Vec<String> = [("namespace", namespace), ("from", from), ("to", to)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    let report = client.get(&format!("/api/usage?{}", query.join("&")))?;
    if json {
        return print(&report);
    }
    println!(
        "{:<40} {:<16} {:>8} {:>12}",
        "SPACE", "FLAVOR", "MINUTES", "COST_USD"
    );
    for s in report["spaces"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<40} {:<16} {:>8} {:>12}",
            s["id"].as_str().unwrap_or("?"),
            s["flavor"].as_str().unwrap_or("?"),
            s["minutes"],
            s["costUsd"].as_str().unwrap_or("?"),
        );
    }
    println!(
        "{:<40} {:<16} {:>8} {:>12}",
        "total",
        "",
        report["totalMinutes"],
        report["totalCostUsd"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
