//! Helpers for tests that run the real spacedock binaries: finding them, running them, starting coordinators on
//! free ports in temp dirs, and the Python client the API is tested with.
//!
//! The binaries come from `cargo build --workspace --bins` and the Python environment from `ensure_test_venv`
//! (ops/test.sh does both first). Anything missing fails the test with that instruction; nothing is skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test harness: panics are how tests fail

pub mod browser;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The four binaries.
pub const BINARIES: &[&str] = &[
    "spacedock",
    "spacedock-coordinator",
    "spacedock-agent",
    "spacedock-builder",
];

/// Path of a workspace binary built next to this executable (`target/<profile>/NAME`; tests run from
/// `target/<profile>/deps`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.join(name),
        dir.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    let found = candidates.iter().find(|p| p.exists());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{} is missing: run `cargo build --workspace --bins` first (ops/test.sh does)",
            candidates[1].display()
        )
    })
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The Python with `huggingface_hub` installed (`SPACEDOCK_TEST_PYTHON`, else `target/test-venv`).
pub fn python() -> PathBuf {
    let path = std::env::var_os("SPACEDOCK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/test-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run ops/test.sh, which creates the virtual environment with huggingface_hub",
        path.display()
    );
    path
}

/// The socket of the containerd that ops/test.sh starts for the suite (`SPACEDOCK_TEST_CONTAINERD`).
pub fn test_containerd() -> PathBuf {
    let socket = std::env::var_os("SPACEDOCK_TEST_CONTAINERD").map(PathBuf::from).unwrap_or_else(|| {
        panic!("SPACEDOCK_TEST_CONTAINERD is not set: run the suite through ops/test.sh, which starts a containerd for it")
    });
    assert!(
        socket.exists(),
        "{} does not exist: is the test containerd running?",
        socket.display()
    );
    socket
}

/// Runs a binary with arguments and environment, with RUST_LOG cleared unless given.
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result {
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .current_dir(repo_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    Result::from(output)
}

/// What a finished process left.
#[derive(Debug)]
pub struct Result {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Result {
    fn from(o: Output) -> Self {
        Result {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The number after `flag` on this process's command line, or `default` (for the bench binaries).
pub fn flag_u64(flag: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free UDP port on loopback (for QUIC).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A coordinator process; killed when dropped.
#[derive(Debug)]
pub struct Coordinator {
    pub id: u64,
    pub data_dir: PathBuf,
    pub api_url: String,
    pub quic_addr: String,
    pub log: PathBuf,
    child: Option<Child>,
    /// Flags every start gets (a config file), beyond those of the first start (join and token).
    flags: Vec<String>,
}

impl Coordinator {
    fn new(dir: &Path, id: u64) -> Coordinator {
        Coordinator {
            id,
            data_dir: dir.join(format!("coordinator-{id}")),
            api_url: format!("http://127.0.0.1:{}", free_port()),
            quic_addr: format!("127.0.0.1:{}", free_udp_port()),
            log: dir.join(format!("coordinator-{id}.log")),
            child: None,
            flags: Vec::new(),
        }
    }

    /// Starts a coordinator that bootstraps a new cluster in `dir`, and waits until it answers.
    pub fn bootstrap(dir: &Path) -> Coordinator {
        Coordinator::bootstrap_with(dir, &[])
    }

    /// `bootstrap` with extra flags (e.g. `--node-ttl-seconds 3`).
    pub fn bootstrap_with(dir: &Path, extra: &[&str]) -> Coordinator {
        let mut c = Coordinator::first_start(dir, 1, extra);
        c.flags = extra.iter().map(|s| (*s).to_owned()).collect();
        c.wait_ready();
        c
    }

    /// Starts coordinator `id` joining through `via` with a join token; returns once the join finished.
    pub fn join(dir: &Path, id: u64, via: &Coordinator, admin_token: &str) -> Coordinator {
        Coordinator::join_with(dir, id, via, admin_token, &[])
    }

    /// `join` with extra flags (e.g. `--config FILE`).
    pub fn join_with(
        dir: &Path,
        id: u64,
        via: &Coordinator,
        admin_token: &str,
        extra: &[&str],
    ) -> Coordinator {
        let created = api(
            &via.api_url,
            admin_token,
            "POST",
            "/api/cluster/join-tokens",
            Some(serde_json::json!({ "role": "coordinator" })),
        );
        let token = created.expect("join token")["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let join = via.quic_addr.clone();
        let mut args = vec!["--join", join.as_str(), "--token", token.as_str()];
        args.extend_from_slice(extra);
        let mut c = Coordinator::first_start(dir, id, &args);
        c.flags = extra.iter().map(|s| (*s).to_owned()).collect();
        let started = Instant::now();
        while !c.log_text().contains("joined cluster") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "coordinator {id} did not join; log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The first start of a coordinator on free ports. A port that was free when chosen can be taken before the
    /// process binds it (other tests run in parallel): then the data dir is wiped and new ports are tried.
    fn first_start(dir: &Path, id: u64, extra: &[&str]) -> Coordinator {
        for _ in 0..5 {
            let mut c = Coordinator::new(dir, id);
            let _ = std::fs::remove_dir_all(&c.data_dir);
            let _ = std::fs::remove_file(&c.log);
            c.start_with(extra);
            let started = Instant::now();
            loop {
                let log = c.log_text();
                if log.contains("coordinator serving") {
                    return c;
                }
                let exited = c
                    .child
                    .as_mut()
                    .is_some_and(|child| child.try_wait().ok().flatten().is_some());
                if exited && log.contains("Address already in use") {
                    break;
                }
                assert!(
                    !exited,
                    "coordinator {id} exited while starting; log:\n{log}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "coordinator {id} did not start; log:\n{log}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("coordinator {id} found no free ports in 5 tries");
    }

    /// (Re)starts the process with the same data dir and ports.
    pub fn start(&mut self) {
        let flags = self.flags.clone();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.start_with(&flags);
    }

    fn start_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let api_listen = self.api_url.trim_start_matches("http://").to_owned();
        let child = Command::new(binary("spacedock-coordinator"))
            .args(["--node-id", &self.id.to_string()])
            .args(["--data-dir", self.data_dir.to_str().unwrap()])
            .args([
                "--api-listen",
                &api_listen,
                "--quic-listen",
                &self.quic_addr,
            ])
            .args(["--public-url", &self.api_url])
            .args(extra)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning spacedock-coordinator");
        self.child = Some(child);
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Waits until `whoami-v2` answers for the admin token.
    pub fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if self.data_dir.join("admin-token").exists()
                && api(
                    &self.api_url,
                    &self.admin_token(),
                    "GET",
                    "/api/whoami-v2",
                    None,
                )
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "coordinator did not become ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a coordinator config adding the small `test-small` flavor (1 vCPU, 1 GiB) to the Hub's catalog into
/// `dir`; returns its path for `--config`.
pub fn test_flavors_config(dir: &Path) -> String {
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        r#"
[flavors]
include_defaults = true
[[flavors.flavor]]
name = "test-small"
vcpu = 1
memory_gib = 1
disk_gib = 1
price_per_hour = "0.01"
"#,
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

/// Debian's CA bundle (with any CA the machine's administrator added).
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A `spacedock-agent` (or `spacedock-builder`) process; killed when dropped.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Starts agent `name` in `dir/name`, dialing `join`, with a join token on its first start and extra
    /// flags (`--container-subnet`, `--containerd-namespace`).
    pub fn start(dir: &Path, name: &str, join: &str, token: Option<&str>, extra: &[&str]) -> Agent {
        let data_dir = dir.join(name);
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
            "--join".into(),
            join.into(),
            "--node-name".into(),
            name.into(),
            "--containerd-socket".into(),
            test_containerd().to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut agent = Agent {
            name: name.to_owned(),
            log: dir.join(format!("{name}.log")),
            data_dir,
            program: "spacedock-agent",
            args,
            child: None,
        };
        agent.spawn(token);
        agent
    }

    /// Starts builder `name` in `dir/name` (the suite's containerd runs its steps in `namespace`), dialing
    /// `join`, with a join token on its first start.
    pub fn start_builder(
        dir: &Path,
        name: &str,
        join: &str,
        token: Option<&str>,
        namespace: &str,
    ) -> Agent {
        let data_dir = dir.join(name);
        let containerd = test_containerd().to_string_lossy().into_owned();
        let mut args = vec![
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--join",
            join,
            "--name",
            name,
            "--containerd-socket",
            &containerd,
            "--containerd-namespace",
            namespace,
        ];
        // Build steps reach PyPI through whatever TLS proxy this machine trusts.
        if Path::new(HOST_CA_BUNDLE).exists() {
            args.extend(["--extra-ca-cert", HOST_CA_BUNDLE]);
        }
        let mut builder = Agent {
            name: name.to_owned(),
            log: dir.join(format!("{name}.log")),
            data_dir: data_dir.clone(),
            program: "spacedock-builder",
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        builder.spawn(token);
        builder
    }

    fn spawn(&mut self, token: Option<&str>) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(binary(self.program));
        cmd.args(&self.args);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning the agent or builder");
        self.child = Some(child);
    }

    /// Starts it again after `kill` (it has its identity now).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child
            .as_mut()
            .expect("the agent was started")
            .wait()
            .expect("waiting for the agent")
    }

    /// Whether the process has exited (reaping it).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a Python script from `cluster-tests/python` with the client environment.
pub fn run_python(script: &str, env: &[(&str, &str)]) -> Result {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("cluster-tests/python").join(script))
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("spacedock-test-hf-home"),
        )
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Result::from(cmd.output().expect("running python"))
}

/// One API call with a token; `Err` carries the status and message of a failure (or the transport error).
pub fn api(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> std::result::Result<serde_json::Value, String> {
    thread_local! {
        // One agent per thread keeps connections alive between calls.
        static AGENT: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
    }
    let agent = AGENT.with(Clone::clone);
    let url = format!("{base}{path}");
    let auth = format!("Bearer {token}");
    let result = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        ("PUT", Some(b)) => agent.put(&url).header("Authorization", &auth).send_json(b),
        (_, Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
        (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    let mut response = result.map_err(|e| format!("transport: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if status >= 400 {
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// The whole body of `GET path` with the token (a blob, an event stream until the server ends it).
pub fn api_bytes(base: &str, token: &str, path: &str) -> Vec<u8> {
    let response = ureq::get(&format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut response.into_body().into_reader(), &mut bytes).unwrap();
    bytes
}

/// The `data` of each event of a Hub log stream (`data: {"data": "...", "timestamp": ...}`), as sent.
pub fn sse_data(stream: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stream)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .map(|v| v["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Writes a docker-archive (`docker save` layout) of a one-layer image: busybox-static as `/bin/busybox` with
/// `/bin/sh`, `/www/index.html` holding `marker` (which also makes the layer unique), an empty `/home/user`,
/// `PATH=/bin` and `cmd` as its command, tagged `name`. Returns the archive's path.
pub fn busybox_image(dir: &Path, name: &str, cmd: &[&str], marker: &str) -> PathBuf {
    busybox_image_with(dir, name, cmd, marker, &[])
}

/// `busybox_image` with extra executable files (`path`, `contents`) in the layer.
pub fn busybox_image_with(
    dir: &Path,
    name: &str,
    cmd: &[&str],
    marker: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox: install busybox-static (ops/test.sh does)");
    let index = format!("<h1>{marker}</h1>\n");
    let mut all: Vec<(&str, &[u8], u32)> = vec![("www/index.html", index.as_bytes(), 0o644)];
    all.extend(files.iter().map(|(p, c)| (*p, c.as_bytes(), 0o755)));
    let archive = spacedock_shared::image::busybox_archive(name, &busybox, cmd, &all).unwrap();
    let path = dir.join(format!("{}.tar", name.replace([':', '/'], "_")));
    std::fs::write(&path, archive).unwrap();
    path
}

/// `GET path` with `Host: host` to `base` (`http://ADDR`), over a plain HTTP/1.1 connection (so the `Host`
/// header is exactly the one given). Returns the status and the body.
pub fn http_get(base: &str, host: &str, path: &str) -> std::result::Result<(u16, String), String> {
    http_get_with(base, host, path, &[])
}

/// One GET with `Host` and extra headers over a fresh connection: the status and the whole response.
fn http_exchange(
    base: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::result::Result<(u16, String), String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text}"))?;
    Ok((status, text))
}

/// `http_get_with`: the status and the body.
pub fn http_get_with(
    base: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::result::Result<(u16, String), String> {
    let (status, text) = http_exchange(base, host, path, headers)?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// A GET to a Space host over HTTP/2 with prior knowledge (curl): the body, then a line with the HTTP version
/// and the status (`2 200`).
pub fn http2_get(base: &str, host: &str, path: &str) -> String {
    let port = base.rsplit(':').next().unwrap_or("80");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
            "--resolve",
        ])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("http://{host}:{port}{path}"))
        .output()
        .expect("running curl (ops/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `http_get`: the status and the response headers (names lowercased).
pub fn http_get_headers(
    base: &str,
    host: &str,
    path: &str,
) -> std::result::Result<(u16, Vec<(String, String)>), String> {
    let (status, text) = http_exchange(base, host, path, &[])?;
    let head = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(h, _)| h);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// Removes, when dropped, every container an agent made in containerd namespace `ns` of the suite's containerd,
/// with its network namespace: a test kills its agent, and containers outlive agents by design.
#[derive(Debug)]
pub struct ContainersGuard {
    pub namespace: String,
}

impl Drop for ContainersGuard {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async {
            use spacedock_agent::containerd::Containerd;
            use spacedock_agent::network;
            let Ok(c) = Containerd::connect(&test_containerd(), &self.namespace).await else {
                return;
            };
            for id in c.containers().await.unwrap_or_default() {
                let _ = c.kill(&id, 9).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait(&id)).await;
                c.remove(&id).await;
                network::remove(&network::names(&id));
            }
        });
    }
}

/// Imports a busybox `httpd` image (serving a page with `marker`) and creates `admin/NAME` running it on port
/// 8080, with `settings` applied first (`(path under the Space, JSON body)`, e.g. hardware or sleep time).
pub fn httpd_space(
    c: &Coordinator,
    admin: &str,
    dir: &Path,
    name: &str,
    marker: &str,
    settings: &[(&str, serde_json::Value)],
) {
    let image = format!("bench/{name}:1");
    let archive = busybox_image(
        dir,
        &image,
        &["/bin/sh", "-c", "exec busybox httpd -f -p 8080 -h /www"],
        marker,
    );
    let env = [("HF_ENDPOINT", c.api_url.as_str()), ("HF_TOKEN", admin)];
    let out = run(
        "spacedock",
        &["image", "import", archive.to_str().unwrap()],
        &env,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let call = |method: &str, path: String, body: serde_json::Value| {
        api(&c.api_url, admin, method, &path, Some(body)).unwrap();
    };
    call(
        "POST",
        "/api/repos/create".into(),
        serde_json::json!({ "type": "space", "name": name, "sdk": "docker" }),
    );
    for (path, body) in settings {
        call(
            "POST",
            format!("/api/spaces/admin/{name}/{path}"),
            body.clone(),
        );
    }
    call(
        "PUT",
        format!("/api/spaces/admin/{name}/image"),
        serde_json::json!({ "image": image, "port": 8080, "startupTimeout": 60 }),
    );
}

/// git through the real CLI, with no user or system config.
pub mod git {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::Coordinator;

    /// A git command in `cwd` with no user or system config; returns (success, stdout + stderr).
    pub fn git(cwd: &Path, args: &[&str]) -> (bool, String) {
        git_with(cwd, args, "/dev/null")
    }

    /// `git` with `global` as the user config (git-lfs's filters live there).
    pub fn git_with(cwd: &Path, args: &[&str], global: &str) -> (bool, String) {
        let out = Command::new("git")
            .current_dir(cwd)
            .args(args)
            .env("HOME", cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", global)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .expect("running git");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn git_ok(cwd: &Path, args: &[&str]) -> String {
        let (ok, text) = git(cwd, args);
        assert!(ok, "git {args:?} failed:\n{text}");
        text
    }

    /// `http://user:TOKEN@host/PATH` (or anonymous).
    pub fn url(c: &Coordinator, token: Option<&str>, path: &str) -> String {
        let host = c.api_url.trim_start_matches("http://");
        match token {
            Some(t) => format!("http://user:{t}@{host}/{path}"),
            None => format!("http://{host}/{path}"),
        }
    }

    pub fn clone(c: &Coordinator, token: Option<&str>, path: &str, into: &Path) -> PathBuf {
        let into_str = into.to_str().unwrap();
        git_ok(
            into.parent().unwrap(),
            &["clone", "-q", &url(c, token, path), into_str],
        );
        into.to_owned()
    }

    pub fn commit(repo: &Path, files: &[(&str, &[u8])], message: &str) -> String {
        for (name, bytes) in files {
            let path = repo.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        git_ok(repo, &["add", "-A"]);
        git_ok(repo, &["commit", "-q", "-m", message]);
        head(repo)
    }

    pub fn head(repo: &Path) -> String {
        git_ok(repo, &["rev-parse", "HEAD"]).trim().to_owned()
    }
}
