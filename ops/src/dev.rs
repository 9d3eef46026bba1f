//! `spacedock dev`: a cluster on this machine as real processes, for trying spacedock out and for tests.
//!
//! Coordinator 1 bootstraps the cluster; the others join it with a coordinator join token. Ports are chosen free
//! on the first run and kept in `DIR/cluster.json`, so running again with the same `--data-dir` restarts the same
//! cluster. The command stays in the foreground; Ctrl-C (or SIGTERM) stops every child cleanly.
//!
//! `DIR/cluster.json` is `{"api_url": URL, "admin_token_file": PATH, "coordinators": [{"id", "api_url", "pid",
//! "quic_addr"}, ...], "agents": [{"id": NODE_NAME, "pid"}, ...]}`; a later version adds `builders`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::Client;

/// How long a coordinator gets to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `--examples` waits for the built examples.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Coordinators to run (1, 3 or 5 make sense: a majority must stay up).
    #[arg(long, default_value_t = 1)]
    coordinators: u64,
    /// Where the cluster keeps its state and logs; reused on the next run.
    #[arg(long, default_value = "spacedock-dev")]
    data_dir: PathBuf,
    /// Agents to run, each with its own data dir, joined with an agent join token.
    #[arg(long, default_value_t = 0)]
    agents: u64,
    /// A directory of example Spaces (one per subdirectory with a README.md) to create as `admin/NAME`.
    #[arg(long)]
    examples: Option<PathBuf>,
    /// The containerd socket the agents use [default: a containerd started by spacedock dev under
    /// DIR/containerd].
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// With --examples: make the Python base `spacedock/python:VERSION` first (debootstrap, as root) when the
    /// cluster has none, so the Gradio and Streamlit examples build.
    #[arg(long, value_name = "VERSION")]
    python_base: Option<String>,
}

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    pub api_url: String,
    pub admin_token_file: PathBuf,
    pub coordinators: Vec<ProcessEntry>,
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub builders: Vec<AgentEntry>,
}

/// One agent or builder in `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The agent's node name, or the builder's name.
    pub id: String,
    pub pid: u32,
}

fn node_name(r: &Running) -> String {
    match r.kind {
        "builder" => builder_name(r.entry.id),
        _ => agent_name(r.entry.id),
    }
}

/// The `cluster.json` entries of the running processes of one kind.
fn node_entries(running: &[Running], kind: &str) -> Vec<AgentEntry> {
    running
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| AgentEntry {
            id: node_name(r),
            pid: r.entry.pid,
        })
        .collect()
}

/// One process in `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub id: u64,
    pub api_url: String,
    pub pid: u32,
    pub quic_addr: String,
}

struct Running {
    /// `coordinator`, `agent`, `builder` or `containerd`, for messages.
    kind: &'static str,
    entry: ProcessEntry,
    child: Child,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if !(1..=7).contains(&args.coordinators) {
        bail!(
            "--coordinators must be between 1 and 7, not {}",
            args.coordinators
        );
    }
    let dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = sibling("spacedock-coordinator")?;
    let previous = read_cluster_file(&dir.join("cluster.json"));
    let fresh = !dir.join("coordinator-1").exists();
    let plan: Vec<ProcessEntry> = (1..=args.coordinators)
        .map(|id| {
            previous
                .as_ref()
                .and_then(|p| p.coordinators.iter().find(|c| c.id == id).cloned())
                .map_or_else(|| fresh_entry(id), Ok)
        })
        .collect::<anyhow::Result<_>>()?;
    let admin_token_file = dir.join("coordinator-1").join("admin-token");

    let runtime = tokio::runtime::Runtime::new()?;
    let mut running: Vec<Running> = Vec::new();
    let started = (|| -> anyhow::Result<()> {
        if fresh {
            // One at a time: the first bootstraps, each next one joins through it.
            let mut join_token = None;
            for entry in &plan {
                running.push(spawn(
                    &binary,
                    &dir,
                    entry,
                    join_token.as_deref().map(|t| (&plan[0].quic_addr, t)),
                )?);
                wait_ready(entry, &admin_token_file, &mut running)?;
                if join_token.is_none() && plan.len() > 1 {
                    let admin = Client::new(&entry.api_url, Some(read_token(&admin_token_file)?));
                    let created = admin.post(
                        "/api/cluster/join-tokens",
                        &json!({ "role": "coordinator", "ttlSeconds": 600 }),
                    )?;
                    join_token = Some(
                        created["token"]
                            .as_str()
                            .ok_or_else(|| anyhow!("no join token in the answer"))?
                            .to_owned(),
                    );
                }
            }
        } else {
            // Restarting: all must be up before a quorum answers.
            for entry in &plan {
                running.push(spawn(&binary, &dir, entry, None)?);
            }
            for entry in &plan {
                wait_ready(entry, &admin_token_file, &mut running)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = started {
        stop(&mut running);
        return Err(e);
    }

    let mut agents: Vec<Running> = Vec::new();
    let socket = match (&args.containerd_socket, args.agents) {
        (Some(socket), _) => Some(socket.clone()),
        (None, 0) => None,
        (None, _) => match start_containerd(&dir) {
            Ok((socket, process)) => {
                println!(
                    "  containerd (pid {}, log {})",
                    process.entry.pid,
                    dir.join("containerd/containerd.log").display()
                );
                running.push(process);
                Some(socket)
            }
            Err(e) => {
                stop(&mut running);
                return Err(e);
            }
        },
    };
    let agent_flags = AgentFlags {
        dir: &dir,
        plan: &plan,
        admin_token_file: &admin_token_file,
        containerd_socket: socket.as_deref(),
    };
    let started = start_agents(args.agents, &agent_flags, &mut agents).and_then(|()| {
        // Builds run their steps in containerd: a builder comes with the agents.
        if args.agents > 0 {
            agents.push(start_builder(&agent_flags)?);
        }
        Ok(())
    });
    if let Err(e) = started {
        stop(&mut agents);
        stop(&mut running);
        return Err(e);
    }
    let cluster = ClusterFile {
        api_url: plan[0].api_url.clone(),
        admin_token_file: admin_token_file.clone(),
        coordinators: running
            .iter()
            .filter(|r| r.kind == "coordinator")
            .map(|r| r.entry.clone())
            .collect(),
        agents: node_entries(&agents, "agent"),
        builders: node_entries(&agents, "builder"),
    };
    for a in &agents {
        let name = node_name(a);
        println!(
            "  {} {name} (pid {}, log {})",
            a.kind,
            a.entry.pid,
            dir.join(format!("{name}.log")).display()
        );
    }
    write_cluster_file(&dir.join("cluster.json"), &cluster)?;
    println!(
        "spacedock dev: {} coordinator(s) running",
        cluster.coordinators.len()
    );
    for r in running.iter().filter(|r| r.kind == "coordinator") {
        println!(
            "  coordinator {}: {} (pid {}, log {})",
            r.entry.id,
            r.entry.api_url,
            r.entry.pid,
            log_path(&dir, r.entry.id).display()
        );
    }
    println!("API:         {}", cluster.api_url);
    println!("admin token: {}", admin_token_file.display());
    println!("cluster:     {}", dir.join("cluster.json").display());
    println!(
        "Try: HF_ENDPOINT={} HF_TOKEN=$(cat {}) spacedock cluster status",
        cluster.api_url,
        admin_token_file.display()
    );
    if let Some(examples) = &args.examples {
        let admin = Client::new(&cluster.api_url, Some(read_token(&admin_token_file)?));
        if !agents.is_empty()
            && let Err(e) = import_busybox_base(&admin, &dir)
        {
            println!("The base image busybox:latest could not be imported: {e:#}");
        }
        if let Some(version) = &args.python_base {
            let name = crate::bootstrap::python_base_name(version);
            let have = admin.get("/api/images").ok().is_some_and(|images| {
                images
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i["name"] == name.as_str()))
            });
            if !have {
                println!("making the Python base {name} from Debian packages (a minute or two)...");
                if let Err(e) =
                    crate::bootstrap::python(&admin, version, crate::bootstrap::DEFAULT_MIRROR)
                {
                    println!("The Python base could not be made: {e:#}");
                }
            }
        }
        let examples_list = example_spaces(examples)?;
        for (name, sdk) in &examples_list {
            let body = json!({ "name": name, "type": "space", "sdk": sdk });
            match admin.post("/api/repos/create", &body) {
                Ok(_) => println!("Space admin/{name} ({sdk}) created"),
                Err(e) if e.to_string().contains("HTTP 409") => {
                    println!("Space admin/{name} ({sdk}) exists")
                }
                Err(e) => {
                    stop(&mut running);
                    return Err(e);
                }
            }
            let token = read_token(&admin_token_file)?;
            match push_example(&cluster.api_url, &token, name, &examples.join(name), &dir) {
                Ok(()) => {
                    let info = admin.get(&format!("/api/spaces/admin/{name}"))?;
                    let stage = info["runtime"]["stage"].as_str().unwrap_or("?").to_owned();
                    match (stage.as_str(), info["host"].as_str()) {
                        ("RUNNING", Some(host)) => {
                            println!("  pushed; {stage}: open {host}/")
                        }
                        _ => println!("  pushed; {stage}"),
                    }
                }
                Err(e) => println!("  could not push it: {e:#}"),
            }
        }
        if !agents.is_empty() {
            let built: Vec<&str> = examples_list
                .iter()
                .filter(|(_, sdk)| sdk != "static")
                .map(|(name, _)| name.as_str())
                .collect();
            wait_built(&admin, &built);
            match demo_space(&admin, &dir) {
                Ok(host) => println!(
                    "Open {host}/ : admin/hello, a prebuilt-image Space running in a container"
                ),
                Err(e) => println!("The demo Space admin/hello did not start: {e:#}"),
            }
        }
    }
    println!(
        "Ctrl-C stops the cluster; its state stays in {}.",
        dir.display()
    );

    running.append(&mut agents);
    let outcome = runtime.block_on(watch(&mut running));
    stop(&mut running);
    outcome?;
    println!("spacedock dev: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `busybox:latest` in the cluster's image store, from this machine's busybox-static: the Docker example's
/// base, so it builds without a registry.
fn import_busybox_base(admin: &Client, dir: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    let archive =
        spacedock_shared::image::busybox_archive("busybox:latest", &busybox, &["sh"], &[])?;
    let path = dir.join("busybox-base.tar");
    std::fs::write(&path, archive).with_context(|| format!("writing {}", path.display()))?;
    crate::image::import(admin, &path, None)
}

/// Waits for the built examples to run (or fail), printing each one's URL or reason.
fn wait_built(admin: &Client, names: &[&str]) {
    let started = Instant::now();
    let mut waiting: Vec<&str> = names.to_vec();
    while !waiting.is_empty() && started.elapsed() < BUILD_TIMEOUT {
        waiting.retain(|name| {
            let Ok(info) = admin.get(&format!("/api/spaces/admin/{name}")) else {
                return true;
            };
            let stage = info["runtime"]["stage"].as_str().unwrap_or_default();
            match stage {
                "RUNNING" => {
                    let host = info["host"].as_str().unwrap_or_default();
                    println!("Space admin/{name} built; RUNNING: open {host}/");
                    false
                }
                "BUILD_ERROR" | "RUNTIME_ERROR" | "CONFIG_ERROR" | "NO_APP_FILE" => {
                    let message = info["runtime"]["errorMessage"].as_str().unwrap_or_default();
                    let first = message.lines().next().unwrap_or_default();
                    println!("Space admin/{name}: {stage}: {first}");
                    false
                }
                _ => true,
            }
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    for name in waiting {
        println!(
            "Space admin/{name} is still building; its log: GET /api/spaces/admin/{name}/logs/build \
             (HfApi().fetch_space_logs(\"admin/{name}\", build=True))"
        );
    }
}

/// `admin/hello`, a prebuilt-image Space made from this machine's busybox-static (busybox `httpd` serving one
/// page): a container running end to end, from the blob store through an agent to the ingress, before any
/// builder is there. Returns its URL once it runs.
fn demo_space(admin: &Client, dir: &Path) -> anyhow::Result<String> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    let page = b"<!doctype html><html><head><meta charset=\"utf-8\"><title>Hello</title></head><body>\
<h1>Hello from spacedock</h1><p>This Space runs a prebuilt image in a container on one of this cluster's agents, \
reached through the coordinator's ingress.</p></body></html>\n";
    let archive = spacedock_shared::image::busybox_archive(
        "spacedock/hello:1",
        &busybox,
        &["busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
        &[("www/index.html", page.as_slice(), 0o644)],
    )?;
    let path = dir.join("hello-image.tar");
    std::fs::write(&path, archive).with_context(|| format!("writing {}", path.display()))?;
    crate::image::import(admin, &path, None)?;
    let body = json!({ "name": "hello", "type": "space", "sdk": "docker" });
    match admin.post("/api/repos/create", &body) {
        Err(e) if !e.to_string().contains("HTTP 409") => return Err(e),
        _ => {}
    }
    admin.put(
        "/api/spaces/admin/hello/image",
        &json!({ "image": "spacedock/hello:1", "port": 8080, "startupTimeout": 120 }),
    )?;
    let started = Instant::now();
    loop {
        let info = admin.get("/api/spaces/admin/hello")?;
        let stage = info["runtime"]["stage"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if stage == "RUNNING" {
            return Ok(info["host"].as_str().unwrap_or_default().to_owned());
        }
        if stage == "RUNTIME_ERROR" || started.elapsed() > READY_TIMEOUT {
            bail!(
                "it is {stage}: {}",
                info["runtime"]["errorMessage"]
                    .as_str()
                    .unwrap_or("no message")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pushes an example Space's files as the main branch of `admin/NAME` with git, the admin token going in an
/// `Authorization` header set through git's environment (never in a URL or on a command line). The commit is
/// made with a fixed author and date, so a rerun pushes the same commit and changes nothing.
fn push_example(
    api_url: &str,
    token: &str,
    name: &str,
    files: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let git_dir = dir.join("examples").join(format!("{name}.git"));
    let _ = std::fs::remove_dir_all(&git_dir);
    std::fs::create_dir_all(&git_dir)?;
    let header = format!("Authorization: Bearer {token}");
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&git_dir)
            .arg("--work-tree")
            .arg(files)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", &header)
            .env("GIT_AUTHOR_NAME", "spacedock dev")
            .env("GIT_AUTHOR_EMAIL", "dev@spacedock.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_NAME", "spacedock dev")
            .env("GIT_COMMITTER_EMAIL", "dev@spacedock.invalid")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .context("running git (is it installed?)")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    git(&["init", "-q", "-b", "main"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", &format!("The {name} example")])?;
    git(&[
        "push",
        "-q",
        &format!("{api_url}/spaces/admin/{name}"),
        "main",
    ])
}

/// `(name, sdk)` of each valid example Space under `dir`.
fn example_spaces(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut spaces = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Ok(bytes) = std::fs::read(path.join("README.md")) else {
            continue;
        };
        let catalog = spacedock_shared::flavor::Catalog::huggingface();
        let report = spacedock_shared::space_config::validate_readme(&bytes, &catalog);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match report.config {
            Some(config) => spaces.push((name, config.sdk.as_str().to_owned())),
            None => bail!(
                "example {} is invalid; run `spacedock space validate {}`",
                name,
                path.display()
            ),
        }
    }
    spaces.sort();
    Ok(spaces)
}

fn builder_name(i: u64) -> String {
    format!("builder-{i}")
}

fn agent_name(i: u64) -> String {
    format!("node-{i}")
}

/// Where agents find the cluster and containerd.
struct AgentFlags<'a> {
    dir: &'a Path,
    plan: &'a [ProcessEntry],
    admin_token_file: &'a Path,
    containerd_socket: Option<&'a Path>,
}

/// Starts a containerd of the cluster's own, with its root, state, socket and config under `DIR/containerd`;
/// returns its socket once it answers.
fn start_containerd(dir: &Path) -> anyhow::Result<(PathBuf, Running)> {
    let base = dir.join("containerd");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let socket = base.join("containerd.sock");
    let _ = std::fs::remove_file(&socket);
    let config = base.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = base.display(),
            sock = socket.display()
        ),
    )?;
    let log = std::fs::File::create(base.join("containerd.log"))?;
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            anyhow!(
                "cannot start containerd ({e}): install it with `apt-get install containerd runc` \
                 (ops/up.sh does), or pass --containerd-socket"
            )
        })?;
    let mut process = Running {
        kind: "containerd",
        entry: ProcessEntry {
            id: 0,
            api_url: String::new(),
            pid: child.id(),
            quic_addr: String::new(),
        },
        child,
    };
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if started.elapsed() > READY_TIMEOUT || matches!(process.child.try_wait(), Ok(Some(_))) {
            stop(std::slice::from_mut(&mut process));
            bail!(
                "containerd did not start; see {}",
                base.join("containerd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((socket, process))
}

/// Starts `n` agents joined to the coordinators and waits until each is a ready node.
/// Starts a node process (`spacedock-agent` or `spacedock-builder`) named `name` with `args`, logging to
/// `DIR/NAME.log`; on its first start (no identity in `data_dir` yet) it joins with a join token for `role`,
/// made once and kept in `token`.
fn spawn_node(
    kind: &'static str,
    (id, name): (u64, &str),
    data_dir: &Path,
    args: &[String],
    flags: &AgentFlags<'_>,
    token: &mut Option<String>,
) -> anyhow::Result<Running> {
    let binary = sibling(&format!("spacedock-{kind}"))?;
    let join: Vec<String> = flags.plan.iter().map(|p| p.quic_addr.clone()).collect();
    let mut command = Command::new(&binary);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--join", &join.join(",")])
        .args(args);
    if let Some(socket) = flags.containerd_socket {
        command.arg("--containerd-socket").arg(socket);
    }
    if !data_dir.join("identity").exists() {
        if token.is_none() {
            let admin = Client::new(
                &flags.plan[0].api_url,
                Some(read_token(flags.admin_token_file)?),
            );
            let created = admin.post(
                "/api/cluster/join-tokens",
                &json!({ "role": kind, "ttlSeconds": 600 }),
            )?;
            *token = Some(
                created["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no join token in the answer"))?
                    .to_owned(),
            );
        }
        command.env("SPACEDOCK_JOIN_TOKEN", token.clone().unwrap_or_default());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(flags.dir.join(format!("{name}.log")))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let entry = ProcessEntry {
        id,
        api_url: String::new(),
        pid: child.id(),
        quic_addr: String::new(),
    };
    Ok(Running { kind, entry, child })
}

/// The builder `builder-1`, running its build steps in the agents' containerd.
fn start_builder(flags: &AgentFlags<'_>) -> anyhow::Result<Running> {
    let name = builder_name(1);
    let mut args = vec![
        "--name".to_owned(),
        name.clone(),
        "--containerd-namespace".to_owned(),
        "spacedock-builder".to_owned(),
    ];
    // Build steps trust what this machine trusts (a TLS-intercepting proxy's CA among them).
    let host_bundle = "/etc/ssl/certs/ca-certificates.crt";
    if Path::new(host_bundle).exists() {
        args.extend(["--extra-ca-cert".to_owned(), host_bundle.to_owned()]);
    }
    spawn_node(
        "builder",
        (1, &name),
        &flags.dir.join(&name),
        &args,
        flags,
        &mut None,
    )
}

fn start_agents(n: u64, flags: &AgentFlags<'_>, agents: &mut Vec<Running>) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let admin = Client::new(
        &flags.plan[0].api_url,
        Some(read_token(flags.admin_token_file)?),
    );
    let mut token = None;
    for i in 1..=n {
        let name = agent_name(i);
        // Agents on one machine share its containerd: each gets its own namespace and its own slice of
        // container addresses.
        let k = i - 1;
        let subnet = format!("10.{}.{}.0/20", 89 + k / 16, (k % 16) * 16);
        let args = [
            "--node-name".to_owned(),
            name.clone(),
            "--containerd-namespace".to_owned(),
            format!("spacedock-{name}"),
            "--container-subnet".to_owned(),
            subnet,
        ];
        let data_dir = flags.dir.join(&name);
        agents.push(spawn_node(
            "agent",
            (i, &name),
            &data_dir,
            &args,
            flags,
            &mut token,
        )?);
        let started = Instant::now();
        loop {
            let nodes = admin.get("/api/nodes").unwrap_or_default();
            let ready = nodes
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["name"] == name && n["state"] == "ready"));
            if ready {
                break;
            }
            if let Some(a) = agents.last_mut()
                && let Ok(Some(status)) = a.child.try_wait()
            {
                bail!(
                    "agent {name} exited ({status}) while joining; see {}",
                    flags.dir.join(format!("{name}.log")).display()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("agent {name} did not register within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn fresh_entry(id: u64) -> anyhow::Result<ProcessEntry> {
    let api_port = free_port()?;
    let quic_port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(ProcessEntry {
        id,
        api_url: format!("http://127.0.0.1:{api_port}"),
        pid: 0,
        quic_addr: format!("127.0.0.1:{quic_port}"),
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// A binary installed next to this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the spacedock binary")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing; build it with `cargo build --bins` (it must sit next to spacedock)",
            path.display()
        );
    }
    Ok(path)
}

fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("coordinator-{id}.log"))
}

fn spawn(
    binary: &Path,
    dir: &Path,
    entry: &ProcessEntry,
    join: Option<(&String, &str)>,
) -> anyhow::Result<Running> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, entry.id))
        .with_context(|| format!("opening {}", log_path(dir, entry.id).display()))?;
    let data_dir = dir.join(format!("coordinator-{}", entry.id));
    let mut command = Command::new(binary);
    command
        .args(["--node-id", &entry.id.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--api-listen", entry.api_url.trim_start_matches("http://")])
        .args(["--quic-listen", &entry.quic_addr])
        .args(["--public-url", &entry.api_url])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some((addr, token)) = join {
        command
            .args(["--join", addr])
            .env("SPACEDOCK_JOIN_TOKEN", token);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let entry = ProcessEntry {
        pid: child.id(),
        ..entry.clone()
    };
    Ok(Running {
        kind: "coordinator",
        entry,
        child,
    })
}

/// Waits until the coordinator answers a cluster status request, or fails with its log's tail.
fn wait_ready(
    entry: &ProcessEntry,
    admin_token_file: &Path,
    running: &mut [Running],
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(r) = running.iter_mut().find(|r| r.entry.id == entry.id)
            && let Ok(Some(status)) = r.child.try_wait()
        {
            bail!(
                "coordinator {} exited ({status}) while starting; see its log",
                entry.id
            );
        }
        if let Ok(token) = read_token(admin_token_file)
            && Client::new(&entry.api_url, Some(token))
                .get("/api/cluster/status")
                .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "coordinator {} did not answer within {READY_TIMEOUT:?}",
                entry.id
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

fn read_cluster_file(path: &Path) -> Option<ClusterFile> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_cluster_file(path: &Path, cluster: &ClusterFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(cluster)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Returns on Ctrl-C or SIGTERM (Ok), or when a child exits on its own (Err).
async fn watch(running: &mut [Running]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for r in running.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                bail!(
                    "{} {} exited on its own ({status}); stopping the cluster",
                    r.kind,
                    r.entry.id
                );
            }
        }
    }
}

/// SIGTERM to every child, then SIGKILL to those still running after 10 s.
fn stop(running: &mut [Running]) {
    for r in running.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &r.entry.pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in running.iter_mut() {
        while Instant::now() < deadline {
            if matches!(r.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}
