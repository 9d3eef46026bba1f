//! Running the allocations the leader assigns to this node. Each assignment gets a task that fetches the
//! image's missing layers from the cluster, unpacks them, makes the container's network, starts the
//! container and watches it: APP_STARTING until the app answers HTTP on its port, then RUNNING; an exit, a
//! check that keeps failing or no answer within the startup timeout is a failure with the reason and the
//! log's tail (secrets redacted). An assignment that goes away is stopped (SIGTERM, SIGKILL after 10 s) and
//! everything it made is removed. After an agent restart, containers that still run are adopted, and
//! containers no assignment names are removed.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use spacedock_shared::flavor::{Accelerator, Flavor};
use spacedock_shared::money::MicroUsd;
use spacedock_shared::wire::{AllocationPhase, AllocationStatus, Assignment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, mpsc, watch};

use crate::cdi;
use crate::containerd::{Containerd, LAYER_TAR};
use crate::fetch::Fetcher;
use crate::network::{self, Subnet};
use crate::spec;

/// How long a stopped container has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// After RUNNING, checks this often; this many failures in a row are a failure.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const CHECK_FAILURES: u32 = 3;
/// Bytes of the log's end quoted in a failure.
const TAIL_BYTES: u64 = 2048;
/// A run log past this size is rotated: copied to `run.log.1` (replacing the previous one) and emptied.
pub const LOG_ROTATE_BYTES: u64 = 1 << 20;

/// What the runner needs from the node.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub subnet: Subnet,
    /// NVML index of each GPU by UUID (CDI specs may name devices by either).
    pub gpu_indexes: HashMap<String, u32>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The allocations of this node.
#[derive(Debug)]
pub struct Runner {
    config: RunnerConfig,
    fetcher: Fetcher,
    containerd: OnceCell<Containerd>,
    reports: mpsc::UnboundedSender<AllocationStatus>,
    running: Mutex<HashMap<String, Running>>,
    slots: Mutex<BTreeSet<u32>>,
    /// The last report per allocation, re-sent after a reconnect.
    last: Mutex<HashMap<String, AllocationStatus>>,
    /// Where each started container's app listens.
    targets: Mutex<HashMap<String, (Ipv4Addr, u16)>>,
    cleaned: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runner {
    pub fn new(
        config: RunnerConfig,
        fetcher: Fetcher,
    ) -> (Arc<Runner>, mpsc::UnboundedReceiver<AllocationStatus>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let runner = Runner {
            config,
            fetcher,
            containerd: OnceCell::new(),
            reports,
            running: Mutex::new(HashMap::new()),
            slots: Mutex::new(BTreeSet::new()),
            last: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            cleaned: Mutex::new(false),
        };
        (Arc::new(runner), rx)
    }

    async fn containerd(&self) -> anyhow::Result<&Containerd> {
        self.containerd
            .get_or_try_init(|| {
                Containerd::connect(
                    &self.config.containerd_socket,
                    &self.config.containerd_namespace,
                )
            })
            .await
            .map_err(Into::into)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("allocs").join(id)
    }

    /// The app's address and port of a started allocation.
    pub fn target(&self, id: &str) -> Option<(Ipv4Addr, u16)> {
        lock(&self.targets).get(id).copied()
    }

    /// The run log of an allocation this agent has.
    pub fn log_path(&self, id: &str) -> Option<PathBuf> {
        let path = self.dir(id).join("run.log");
        (lock(&self.running).contains_key(id) && path.exists()).then_some(path)
    }

    /// The last report of each live allocation.
    pub fn statuses(&self) -> Vec<AllocationStatus> {
        lock(&self.last).values().cloned().collect()
    }

    fn report(&self, id: &str, phase: AllocationPhase, message: String) {
        let status = AllocationStatus {
            id: id.to_owned(),
            phase,
            message,
        };
        tracing::info!(allocation = id, phase = ?phase, message = status.message, "allocation");
        lock(&self.last).insert(id.to_owned(), status.clone());
        let _ = self.reports.send(status);
    }

    /// Brings what runs in line with the leader's assignments.
    pub async fn apply(self: &Arc<Self>, assignments: Vec<Assignment>) {
        let wanted: BTreeSet<String> = assignments.iter().map(|a| a.id.clone()).collect();
        if !std::mem::replace(&mut *lock(&self.cleaned), true) {
            self.remove_orphans(&wanted).await;
        }
        let mut running = lock(&self.running);
        running.retain(|id, r| {
            let keep = wanted.contains(id);
            if !keep {
                tracing::info!(allocation = id, "no longer assigned; stopping");
                let _ = r.stop.send(true);
                lock(&self.last).remove(id);
                if r.task.is_finished() {
                    // A failed allocation kept its files (the log) until now.
                    let _ = std::fs::remove_dir_all(self.dir(id));
                }
            }
            keep
        });
        for a in assignments {
            if running.contains_key(&a.id) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let runner = self.clone();
            let id = a.id.clone();
            let task = tokio::spawn(async move { runner.run(a, stopped).await });
            running.insert(id, Running { stop, task });
        }
    }

    /// After a restart: containers (and their networks) that no assignment names.
    async fn remove_orphans(&self, wanted: &BTreeSet<String>) {
        let Ok(containerd) = self.containerd().await else {
            return;
        };
        for id in containerd.containers().await.unwrap_or_default() {
            if !wanted.contains(&id) {
                tracing::info!(allocation = id, "removing a container no assignment names");
                stop_container(containerd, &id).await;
                network::remove(&network::names(&id));
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.config.data_dir.join("allocs")) {
            for dir in dirs.flatten() {
                let id = dir.file_name().to_string_lossy().into_owned();
                if !wanted.contains(&id) {
                    network::remove(&network::names(&id));
                    let _ = std::fs::remove_dir_all(dir.path());
                }
            }
        }
    }

    fn take_slot(&self, dir: &Path) -> anyhow::Result<u32> {
        let mut slots = lock(&self.slots);
        let slot = (0..self.config.subnet.slots())
            .find(|s| !slots.contains(s))
            .ok_or_else(|| anyhow!("container_subnet has no free /30 left"))?;
        slots.insert(slot);
        std::fs::write(dir.join("slot"), slot.to_string())?;
        Ok(slot)
    }

    /// The slot recorded for an adopted container.
    fn recorded_slot(&self, dir: &Path) -> Option<u32> {
        let slot: u32 = std::fs::read_to_string(dir.join("slot"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        lock(&self.slots).insert(slot);
        Some(slot)
    }

    async fn run(self: Arc<Self>, a: Assignment, mut stop: watch::Receiver<bool>) {
        let dir = self.dir(&a.id);
        let names = network::names(&a.id);
        let started = tokio::select! {
            r = self.start(&a, &dir) => r,
            _ = stop.changed() => Err(anyhow!("stopped while starting")),
        };
        let outcome = match started {
            Ok(address) => {
                lock(&self.targets).insert(a.id.clone(), (address, a.port));
                let outcome = self.watch(&a, address, &dir, &mut stop).await;
                lock(&self.targets).remove(&a.id);
                outcome
            }
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(message) = outcome
            && !*stop.borrow()
        {
            self.report(&a.id, AllocationPhase::Failed, redact(&message, &a));
        }
        if let Ok(containerd) = self.containerd().await {
            stop_container(containerd, &a.id).await;
        }
        network::remove(&names);
        if let Some(slot) = std::fs::read_to_string(dir.join("slot"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            lock(&self.slots).remove(&slot);
        }
        if *stop.borrow() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Starts the container (or adopts the one still running); returns its address.
    async fn start(&self, a: &Assignment, dir: &Path) -> anyhow::Result<Ipv4Addr> {
        let containerd = self.containerd().await?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = network::names(&a.id);
        if containerd.running(&a.id).await?
            && let Some(slot) = self.recorded_slot(dir)
        {
            tracing::info!(allocation = a.id, "adopting the running container");
            self.report(&a.id, AllocationPhase::Starting, String::new());
            return Ok(self.config.subnet.addresses(slot).1);
        }
        stop_container(containerd, &a.id).await;
        self.report(&a.id, AllocationPhase::Pulling, String::new());
        let mut descriptors = Vec::new();
        for layer in &a.layers {
            if !containerd.has_blob(&layer.digest).await? {
                let path = self.fetcher.fetch(&layer.digest, Some(layer.size)).await?;
                let bytes = tokio::fs::read(&path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                containerd
                    .write_blob(LAYER_TAR, &bytes, HashMap::new())
                    .await?;
                let _ = std::fs::remove_file(&path);
            }
            descriptors.push(containerd_client::types::Descriptor {
                media_type: LAYER_TAR.into(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                annotations: HashMap::new(),
            });
        }
        let chain = containerd.unpack(&descriptors).await?;
        let slot = self.take_slot(dir)?;
        let address = network::create(&names, &self.config.subnet, slot)?;
        let spec = spec::build(&spec_allocation(a, Some(network::netns_path(&names))))?;
        let mut spec = serde_json::to_value(&spec).context("encoding the runtime spec")?;
        if !a.gpus.is_empty() {
            let gpus: Vec<(String, u32)> = a
                .gpus
                .iter()
                .map(|uuid| {
                    let index = self
                        .config
                        .gpu_indexes
                        .get(uuid)
                        .copied()
                        .unwrap_or(u32::MAX);
                    (uuid.clone(), index)
                })
                .collect();
            let edits = cdi::load(&cdi::CDI_DIRS).and_then(|specs| cdi::edits_for(&specs, &gpus));
            edits
                .and_then(|edits| cdi::apply(&mut spec, &edits, cdi::device_number))
                .map_err(|e| anyhow!("GPUs {:?}: {e}", a.gpus))?;
        }
        // `/etc/hosts` as Docker gives it: `localhost` and the container's own name resolve (apps such as
        // Gradio call themselves by name once they listen).
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, hosts_file(&a.id, address))
            .with_context(|| format!("writing {}", hosts.display()))?;
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.push(serde_json::json!({
                "destination": "/etc/hosts",
                "type": "bind",
                "source": hosts,
                "options": ["rbind", "ro"],
            }));
        }
        let spec_json = serde_json::to_vec(&spec).context("encoding the runtime spec")?;
        containerd
            .start(&a.id, &chain, spec_json, &dir.join("run.log"))
            .await?;
        self.report(&a.id, AllocationPhase::Starting, String::new());
        Ok(address)
    }

    /// Watches a started container until it fails or is stopped.
    async fn watch(
        &self,
        a: &Assignment,
        address: Ipv4Addr,
        dir: &Path,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let containerd = self.containerd().await.map_err(|e| format!("{e:#}"))?;
        let exited = containerd.wait(&a.id);
        tokio::pin!(exited);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.startup_timeout_s);
        let mut answered = false;
        let mut failures = 0u32;
        loop {
            let pause = if answered { CHECK_EVERY } else { PROBE_EVERY };
            tokio::select! {
                code = &mut exited => {
                    let code = match code {
                        Ok(code) => format!("exited with code {code}"),
                        Err(e) => format!("lost track of the container: {e}"),
                    };
                    containerd.delete_task(&a.id).await;
                    return Err(with_tail(&code, &dir.join("run.log")));
                }
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            rotate_log(&dir.join("run.log"), LOG_ROTATE_BYTES);
            let ok = answers_http(address, a.port).await;
            match (answered, ok) {
                (false, true) => {
                    answered = true;
                    self.report(&a.id, AllocationPhase::Running, String::new());
                }
                (false, false) if tokio::time::Instant::now() > deadline => {
                    let message = format!(
                        "the app did not answer HTTP on port {} within its startup timeout of {} s",
                        a.port, a.startup_timeout_s
                    );
                    return Err(with_tail(&message, &dir.join("run.log")));
                }
                (true, false) => {
                    failures += 1;
                    if failures >= CHECK_FAILURES {
                        let message = format!(
                            "the app stopped answering HTTP on port {} ({failures} checks failed)",
                            a.port
                        );
                        return Err(with_tail(&message, &dir.join("run.log")));
                    }
                }
                (true, true) => failures = 0,
                (false, false) => {}
            }
        }
    }
}

/// Stops the task (SIGTERM, then SIGKILL after the grace time) and removes task, container and snapshot.
async fn stop_container(containerd: &Containerd, id: &str) {
    if containerd.running(id).await.unwrap_or(false) {
        let _ = containerd.kill(id, 15).await;
        if tokio::time::timeout(STOP_GRACE, containerd.wait(id))
            .await
            .is_err()
        {
            let _ = containerd.kill(id, 9).await;
            let _ = tokio::time::timeout(STOP_GRACE, containerd.wait(id)).await;
        }
    }
    containerd.remove(id).await;
}

/// Whether something answers HTTP at the address (within 2 s).
pub async fn answers_http(address: Ipv4Addr, port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((address, port)).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: spacedock-agent\r\n\r\n")
            .await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// Keeps a log bounded: past `max` bytes its content moves to `NAME.1` and it starts again empty. The writer
/// (containerd's shim) appends, so it carries on at the new end.
fn rotate_log(log: &Path, max: u64) {
    if std::fs::metadata(log).map_or(0, |m| m.len()) <= max {
        return;
    }
    let rotated = log.with_extension("log.1");
    if std::fs::copy(log, &rotated).is_ok()
        && let Ok(file) = std::fs::OpenOptions::new().write(true).open(log)
    {
        let _ = file.set_len(0);
    }
}

/// The message with the end of the log.
fn with_tail(message: &str, log: &Path) -> String {
    let tail = read_tail(log, TAIL_BYTES);
    if tail.trim().is_empty() {
        message.to_owned()
    } else {
        format!("{message}; log tail:\n{}", tail.trim_end())
    }
}

fn read_tail(path: &Path, bytes: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The text with every secret value of the Space replaced by `***`.
pub fn redact(text: &str, a: &Assignment) -> String {
    let mut out = text.to_owned();
    for secret in &a.secrets {
        if secret.value.len() >= 3 {
            out = out.replace(&secret.value, "***");
        }
    }
    out
}

/// The spec module's view of an assignment.
/// A container's `/etc/hosts`: the loopback names and its own (its hostname is the allocation id).
fn hosts_file(hostname: &str, address: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

fn spec_allocation(a: &Assignment, netns_path: Option<String>) -> spec::Allocation {
    let accelerator = (!a.gpus.is_empty()).then(|| Accelerator {
        vendor: "nvidia".into(),
        model: String::new(),
        count: a.gpus.len() as u32,
        vram_gb: 0,
    });
    let mut args = a.config.entrypoint.clone();
    args.extend(a.config.cmd.iter().cloned());
    let pairs = |vars: &[spacedock_shared::wire::EnvVar]| {
        vars.iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    };
    spec::Allocation {
        id: a.id.clone(),
        space_id: a.space_id.clone(),
        title: a.title.clone(),
        host: a.host.clone(),
        creator_user_id: a.creator_user_id.clone(),
        flavor: Flavor {
            name: a.flavor.clone(),
            pretty_name: a.flavor.clone(),
            vcpu: a.vcpu,
            memory_gib: a.memory_gib,
            disk_gib: 0,
            accelerator,
            price_per_hour: MicroUsd(0),
            gpu_leased_per_call: false,
        },
        args,
        cwd: if a.config.working_dir.is_empty() {
            "/".into()
        } else {
            a.config.working_dir.clone()
        },
        image_env: a.config.env.clone(),
        variables: pairs(&a.variables),
        secrets: pairs(&a.secrets),
        netns_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacedock_shared::wire::{EnvVar, ImageConfig};

    fn assignment() -> Assignment {
        Assignment {
            id: "a1".into(),
            space_id: "alice/demo".into(),
            title: "demo".into(),
            host: "alice-demo.localhost".into(),
            creator_user_id: "u1".into(),
            flavor: "cpu-basic".into(),
            vcpu: 2,
            memory_gib: 16,
            gpus: vec![],
            layers: vec![],
            config: ImageConfig {
                env: vec!["PATH=/bin".into()],
                entrypoint: vec!["/bin/sh".into()],
                cmd: vec!["-c".into(), "httpd".into()],
                working_dir: String::new(),
            },
            port: 8080,
            startup_timeout_s: 30,
            variables: vec![],
            secrets: vec![EnvVar {
                key: "API_KEY".into(),
                value: "s3cr3t-value".into(),
            }],
        }
    }

    #[test]
    fn secrets_are_redacted_from_messages() {
        let a = assignment();
        assert_eq!(
            redact("boom: API_KEY=s3cr3t-value", &a),
            "boom: API_KEY=***"
        );
    }

    #[test]
    fn the_command_is_entrypoint_then_cmd_in_the_root_by_default() {
        let s = spec_allocation(&assignment(), None);
        assert_eq!(s.args, vec!["/bin/sh", "-c", "httpd"]);
        assert_eq!(s.cwd, "/");
        assert_eq!(s.flavor.memory_gib, 16);
        assert!(spec::environment(&s).contains(&"API_KEY=s3cr3t-value".to_owned()));
    }

    #[test]
    fn logs_rotate_past_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, "small").unwrap();
        rotate_log(&log, 10);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "small");
        std::fs::write(&log, "x".repeat(11)).unwrap();
        rotate_log(&log, 10);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("run.log.1")).unwrap(),
            "x".repeat(11)
        );
    }

    #[test]
    fn a_log_tail_is_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, format!("{}END", "x".repeat(5000))).unwrap();
        let message = with_tail("exited with code 3", &log);
        assert!(message.starts_with("exited with code 3; log tail:"));
        assert!(
            message.ends_with("END") && message.len() < 2200,
            "{}",
            message.len()
        );
    }
}
