//! Spaces that run a stored image, end to end with real processes and the suite's containerd: `spacedock image
//! import`, `spacedock space set-image`, the leader placing the Space on an agent, the agent fetching the layer
//! over QUIC, starting the container in its own network namespace and reporting APP_STARTING, then RUNNING once
//! the app answers HTTP; failures (an exit, no answer in time, a rotten blob) as RUNTIME_ERROR with the reason;
//! an agent restart that adopts the running container; pausing that removes everything.
//!
//! Each test has its own coordinator, agent, containerd namespace and container subnet, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_cluster_tests::{
    Agent, ContainersGuard, Coordinator, api, api_bytes, busybox_image, busybox_image_with,
    http_get, http_get_with, run, run_python, test_containerd, test_flavors_config,
};

/// A coordinator with a small test flavor and one agent, both ready.
struct Cluster {
    dir: tempfile::TempDir,
    c: Coordinator,
    admin: String,
    agent: Agent,
    namespace: String,
    /// Declared after `agent`: dropped after the agent is killed.
    _containers: ContainersGuard,
}

/// A temporary dir with the coordinator config that adds the test flavor.
fn config_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_flavors_config(dir.path());
    (dir, config)
}

/// Three coordinators with the test flavor: the first bootstraps (and leads), the others join it.
fn three_coordinators() -> (tempfile::TempDir, Coordinator, Coordinator, Coordinator) {
    let (dir, config) = config_dir();
    let flags = ["--config", config.as_str()];
    let c1 = Coordinator::bootstrap_with(dir.path(), &flags);
    let admin = c1.admin_token();
    let c2 = Coordinator::join_with(dir.path(), 2, &c1, &admin, &flags);
    let c3 = Coordinator::join_with(dir.path(), 3, &c1, &admin, &flags);
    (dir, c1, c2, c3)
}

impl Cluster {
    fn start(test: &str, subnet: &str) -> Cluster {
        let (dir, config) = config_dir();
        let c = Coordinator::bootstrap_with(dir.path(), &["--config", &config]);
        let join = c.quic_addr.clone();
        Cluster::with_agent(dir, c, test, subnet, &join)
    }

    /// Adds an agent dialing `join` (its own containerd namespace and subnet) and waits until it is ready.
    fn with_agent(
        dir: tempfile::TempDir,
        c: Coordinator,
        test: &str,
        subnet: &str,
        join: &str,
    ) -> Cluster {
        let admin = c.admin_token();
        let token = api(
            &c.api_url,
            &admin,
            "POST",
            "/api/cluster/join-tokens",
            Some(json!({ "role": "agent" })),
        )
        .unwrap();
        let namespace = format!("sdtest-{test}-{}", std::process::id());
        let agent = Agent::start(
            dir.path(),
            &format!("run-{test}"),
            join,
            token["token"].as_str(),
            &[
                "--container-subnet",
                subnet,
                "--containerd-namespace",
                &namespace,
            ],
        );
        let cluster = Cluster {
            dir,
            c,
            admin,
            agent,
            _containers: ContainersGuard {
                namespace: namespace.clone(),
            },
            namespace,
        };
        cluster.wait(Duration::from_secs(30), "the agent ready", |c| {
            let nodes = api(&c.c.api_url, &c.admin, "GET", "/api/nodes", None).ok()?;
            nodes
                .as_array()?
                .iter()
                .find(|n| n["state"] == "ready")
                .cloned()
        });
        cluster
    }

    fn cli(&self, args: &[&str]) -> spacedock_cluster_tests::Result {
        run(
            "spacedock",
            args,
            &[("HF_ENDPOINT", &self.c.api_url), ("HF_TOKEN", &self.admin)],
        )
    }

    fn import(&self, archive: &Path) -> String {
        let out = self.cli(&["image", "import", archive.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{out:?}");
        out.stdout
    }

    /// Creates Space `admin/NAME` on the test flavor with a secret, running `image` on port 8080.
    fn space(&self, name: &str, image: &str, startup_timeout: u64) -> String {
        let id = format!("admin/{name}");
        let call = |method: &str, path: String, body: Value| {
            api(&self.c.api_url, &self.admin, method, &path, Some(body)).unwrap()
        };
        call(
            "POST",
            "/api/repos/create".into(),
            json!({ "type": "space", "name": name, "sdk": "docker" }),
        );
        call(
            "POST",
            format!("/api/spaces/{id}/hardware"),
            json!({ "flavor": "test-small" }),
        );
        call(
            "POST",
            format!("/api/spaces/{id}/secrets"),
            json!({ "key": "API_KEY", "value": SECRET }),
        );
        call(
            "POST",
            format!("/api/spaces/{id}/variables"),
            json!({ "key": "MODE", "value": "test" }),
        );
        let out = self.cli(&[
            "space",
            "set-image",
            &id,
            image,
            "--port",
            "8080",
            "--startup-timeout",
            &startup_timeout.to_string(),
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        id
    }

    /// `admin/NAME` running busybox `httpd` serving `marker`, RUNNING; returns its id.
    fn running_httpd(&self, name: &str, marker: &str) -> String {
        let image = format!("demo/{name}:1");
        let archive = busybox_image(
            self.dir.path(),
            &image,
            &["/bin/sh", "-c", "exec busybox httpd -f -p 8080 -h /www"],
            marker,
        );
        self.import(&archive);
        let id = self.space(name, &image, 60);
        self.wait_stage(&id, "RUNNING", Duration::from_secs(90));
        id
    }

    fn runtime(&self, id: &str) -> Value {
        api(
            &self.c.api_url,
            &self.admin,
            "GET",
            &format!("/api/spaces/{id}/runtime"),
            None,
        )
        .unwrap()
    }

    fn wait<T>(&self, limit: Duration, what: &str, f: impl Fn(&Cluster) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                started.elapsed() < limit,
                "{what} not within {limit:?}\nagent log:\n{}\ncoordinator log tail:\n{}",
                self.agent.log_text(),
                tail(&self.c.log_text(), 4000)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_stage(&self, id: &str, stage: &str, limit: Duration) -> Value {
        self.wait(limit, &format!("{id} {stage}"), |c| {
            Some(c.runtime(id)).filter(|r| r["stage"] == stage)
        })
    }

    /// Containers in the agent's containerd namespace.
    fn containers(&self) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(test_containerd())
            .args(["-n", &self.namespace, "containers", "ls", "-q"])
            .output()
            .expect("ctr (from the containerd package)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn allocation(&self) -> Value {
        let nodes = api(&self.c.api_url, &self.admin, "GET", "/api/nodes", None).unwrap();
        nodes[0]["allocations"][0].clone()
    }

    /// The Space's run log as `fetch_space_logs` returns it, asked of coordinator `via`.
    fn logs(&self, via: &Coordinator, id: &str) -> String {
        let out = run_python(
            "space_logs.py",
            &[
                ("HF_ENDPOINT", &via.api_url),
                ("HF_TOKEN", &self.admin),
                ("SPACE", id),
            ],
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        out.stdout
    }

    fn assert_secret_never_logged(&self) {
        for (who, log) in [
            ("agent", self.agent.log_text()),
            ("coordinator", self.c.log_text()),
        ] {
            assert!(!log.contains(SECRET), "the secret is in the {who} log");
        }
    }
}

const SECRET: &str = "sk-test-do-not-leak-7781";

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

#[test]
fn an_imported_image_runs_answers_and_survives_an_agent_restart() {
    let cl = Cluster::start("runs", "10.201.0.0/24");
    let archive = busybox_image(
        cl.dir.path(),
        "demo/web:1",
        &[
            "/bin/sh",
            "-c",
            "echo starting as $(busybox id -u) MODE=$MODE key=$API_KEY \
             mem=$(busybox cat /sys/fs/cgroup/memory.max 2>/dev/null || busybox cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
             exec busybox httpd -f -v -p 8080 -h /www",
        ],
        "hello from runs",
    );
    let first = cl.import(&archive);
    assert!(
        first.contains("uploaded") && first.contains("imported demo/web:1"),
        "{first}"
    );
    // A second import finds every blob in the cluster and uploads nothing.
    let again = cl.import(&archive);
    assert!(
        !again.contains("uploaded") && again.contains("already in the cluster"),
        "{again}"
    );
    let listed = cl.cli(&["image", "list"]);
    assert!(listed.stdout.contains("demo/web:1"), "{listed:?}");
    // The coordinator stored the image's OCI manifest, naming its config and layer.
    let manifest_digest = first
        .split("imported demo/web:1@")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no manifest digest in {first}"));
    let path = format!("/api/blobs/{manifest_digest}");
    let manifest: Value =
        serde_json::from_slice(&api_bytes(&cl.c.api_url, &cl.admin, &path)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    assert!(
        first.contains(manifest["config"]["digest"].as_str().unwrap()),
        "{first}\n{manifest}"
    );
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );

    let id = cl.space("web", "demo/web:1", 60);
    let runtime = cl.wait_stage(&id, "RUNNING", Duration::from_secs(90));
    assert_eq!(runtime["hardware"]["current"], "test-small", "{runtime}");
    let allocation = cl.allocation();
    assert_eq!(allocation["space"], id.as_str());
    assert_eq!(allocation["phase"], "running");
    let alloc_id = allocation["id"].as_str().unwrap().to_owned();
    assert!(cl.containers().contains(&alloc_id), "{}", cl.containers());
    // The container ran as uid 1000 with the Space's variables; the app logged the agent's health probe.
    let log = std::fs::read_to_string(
        cl.agent
            .data_dir
            .join("allocs")
            .join(&alloc_id)
            .join("run.log"),
    )
    .unwrap();
    assert!(log.contains("starting as 1000 MODE=test"), "{log}");
    // The flavor's memory limit (test-small: 1 GiB) is the container's cgroup limit.
    assert!(log.contains("mem=1073741824"), "{log}");

    // Through the ingress: the Space's host on the API port reaches the app.
    let (status, body) = http_get(&cl.c.api_url, "admin-web.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from runs"), "{body}");
    let (status, _) = http_get(&cl.c.api_url, "nobody-here.localhost", "/").unwrap();
    assert_eq!(status, 404);
    // The run log through the real huggingface_hub client, the secret redacted.
    let logs = cl.logs(&cl.c, &id);
    assert!(
        logs.contains("starting as 1000 MODE=test key=***"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");

    // kill -9 and restart of the agent: the same container is adopted, and the Space stays RUNNING.
    let mut cl = cl;
    cl.agent.kill();
    cl.agent.restart();
    cl.wait(
        Duration::from_secs(30),
        "the running container adopted",
        |c| {
            c.agent
                .log_text()
                .contains("adopting the running container")
                .then_some(())
        },
    );
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(30));
    assert_eq!(cl.allocation()["id"], alloc_id.as_str());

    // A coordinator outage leaves the running container alone; back, the same allocation is RUNNING.
    cl.c.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(cl.containers().contains(&alloc_id), "{}", cl.containers());
    cl.c.start();
    cl.c.wait_ready();
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(30));
    assert_eq!(cl.allocation()["id"], alloc_id.as_str());
    // Reachable again once the agent notices and reconnects (its link times out after 10 s).
    cl.wait(Duration::from_secs(40), "the Space answering again", |c| {
        let (status, _) = http_get(&c.c.api_url, "admin-web.localhost", "/").ok()?;
        (status == 200).then_some(())
    });

    // Pause: the allocation goes, the container and its network are removed.
    api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        &format!("/api/spaces/{id}/pause"),
        None,
    )
    .unwrap();
    cl.wait(Duration::from_secs(30), "the container removed", |c| {
        (!c.containers().contains(&alloc_id)).then_some(())
    });
    assert_eq!(cl.runtime(&id)["stage"], "PAUSED");
    assert!(cl.allocation().is_null());
    let (status, body) = http_get(&cl.c.api_url, "admin-web.localhost", "/").unwrap();
    assert!(
        status == 503 && body.contains("admin/web is paused"),
        "{status} {body}"
    );
    // Its running minutes are on the ledger, priced by the flavor; paused, it adds none.
    let usage = || {
        let out = cl.cli(&["usage", "--namespace", "admin", "--json"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    let report = usage();
    let line = &report["spaces"][0];
    assert_eq!(
        (line["id"].as_str(), line["flavor"].as_str()),
        (Some("admin/web"), Some("test-small")),
        "{report}"
    );
    let minutes = line["minutes"].as_u64().unwrap();
    assert!((1..=3).contains(&minutes), "{report}");
    assert_ne!(line["costUsd"], "0.00", "{report}");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(usage()["totalMinutes"].as_u64(), Some(minutes));
    cl.assert_secret_never_logged();
}

#[test]
fn an_image_that_exits_is_a_runtime_error_with_its_code_and_log() {
    let cl = Cluster::start("exits", "10.202.0.0/24");
    let archive = busybox_image(
        cl.dir.path(),
        "demo/crash:1",
        &["/bin/sh", "-c", "echo boom key=$API_KEY; exit 3"],
        "crash",
    );
    cl.import(&archive);
    let id = cl.space("crash", "demo/crash:1", 60);
    let runtime = cl.wait_stage(&id, "RUNTIME_ERROR", Duration::from_secs(90));
    let message = runtime["errorMessage"].as_str().unwrap();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(
        message.contains("boom key=***"),
        "the log tail, redacted: {message}"
    );
    assert!(!runtime.to_string().contains(SECRET));
    cl.wait(
        Duration::from_secs(30),
        "the failed container removed",
        |c| {
            (!c.containers()
                .contains(cl.allocation()["id"].as_str().unwrap_or("-")))
            .then_some(())
        },
    );
    cl.assert_secret_never_logged();

    // A restart places it again (a new allocation), and it fails the same way.
    let before = cl.allocation()["id"].clone();
    api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        &format!("/api/spaces/{id}/restart"),
        None,
    )
    .unwrap();
    cl.wait(
        Duration::from_secs(60),
        "a new allocation that failed",
        |c| {
            let a = c.allocation();
            (a["id"] != before && a["phase"] == "failed").then_some(())
        },
    );
}

#[test]
fn an_app_that_never_answers_fails_at_its_startup_timeout() {
    let cl = Cluster::start("silent", "10.203.0.0/24");
    let archive = busybox_image(
        cl.dir.path(),
        "demo/silent:1",
        &["/bin/sh", "-c", "echo waiting; exec busybox sleep 600"],
        "silent",
    );
    cl.import(&archive);
    let id = cl.space("silent", "demo/silent:1", 3);
    let runtime = cl.wait_stage(&id, "RUNTIME_ERROR", Duration::from_secs(90));
    let message = runtime["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("did not answer HTTP on port 8080 within its startup timeout of 3 s")
            && message.contains("waiting"),
        "{message}"
    );
}

#[test]
fn a_rotten_blob_is_refused_and_nothing_runs() {
    let cl = Cluster::start("rotten", "10.204.0.0/24");
    let archive = busybox_image(
        cl.dir.path(),
        "demo/rotten:1",
        &["/bin/sh", "-c", "exec busybox httpd -f -p 8080 -h /www"],
        "rotten",
    );
    cl.import(&archive);
    // Flip the stored layer's bytes on the only coordinator: its blake3 check quarantines it, and no peer has a
    // good copy.
    let image = &api(&cl.c.api_url, &cl.admin, "GET", "/api/images", None).unwrap()[0];
    let digest = image["layers"][0]["digest"].as_str().unwrap();
    let path =
        cl.c.data_dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let id = cl.space("rotten", "demo/rotten:1", 30);
    let runtime = cl.wait_stage(&id, "RUNTIME_ERROR", Duration::from_secs(90));
    let message = runtime["errorMessage"].as_str().unwrap();
    assert!(
        message.contains(digest) && message.contains("no coordinator has blob"),
        "{message}"
    );
    assert!(
        cl.c.data_dir
            .join("blobs/quarantine")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    assert!(
        !cl.containers()
            .contains(cl.allocation()["id"].as_str().unwrap())
    );
}

#[test]
fn bad_imports_and_unknown_images_are_refused_with_a_message() {
    let cl = Cluster::start("bad", "10.205.0.0/24");
    let junk = cl.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    let out = cl.cli(&["image", "import", junk.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("junk.tar"), "{out:?}");

    api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        "/api/repos/create",
        Some(json!({ "type": "space", "name": "x", "sdk": "docker" })),
    )
    .unwrap();
    let out = cl.cli(&["space", "set-image", "admin/x", "nope:1", "--port", "80"]);
    assert!(
        out.code == Some(1) && out.stderr.contains("image `nope:1` not found"),
        "{out:?}"
    );
    // Bytes that do not match their digest are refused, and nothing is stored.
    let err = api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        "/api/images",
        Some(
            json!({ "name": "x:1", "config": format!("sha256:{}", "0".repeat(64)), "layers": [] }),
        ),
    )
    .unwrap_err();
    assert!(err.contains("not in the cluster's blob store"), "{err}");
}

#[test]
fn a_space_answers_through_every_coordinator() {
    let (dir, c1, c2, c3) = three_coordinators();
    // The agent dials a follower first: it is sent to the leader.
    let join = format!("{},{}", c2.quic_addr, c1.quic_addr);
    let cl = Cluster::with_agent(dir, c1, "every", "10.206.0.0/24", &join);
    let archive = busybox_image(
        cl.dir.path(),
        "demo/every:1",
        &[
            "/bin/sh",
            "-c",
            "echo every starts; exec busybox httpd -f -p 8080 -h /www",
        ],
        "hello from every coordinator",
    );
    // Imported through a follower: the blobs are on a quorum before the import is acknowledged.
    let out = run(
        "spacedock",
        &["image", "import", archive.to_str().unwrap()],
        &[("HF_ENDPOINT", &c3.api_url), ("HF_TOKEN", &cl.admin)],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let image = &api(&cl.c.api_url, &cl.admin, "GET", "/api/images", None).unwrap()[0];
    let layer = image["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let holding = || {
        [&cl.c, &c2, &c3]
            .iter()
            .filter(|c| {
                c.data_dir
                    .join("blobs/sha256")
                    .join(format!("{layer}.b3"))
                    .exists()
            })
            .count()
    };
    assert!(
        holding() >= 2,
        "acknowledged with the layer on {} coordinators",
        holding()
    );
    cl.wait(Duration::from_secs(30), "the layer on all three", |_| {
        (holding() == 3).then_some(())
    });
    let id = cl.space("every", "demo/every:1", 60);
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(90));
    for c in [&cl.c, &c2, &c3] {
        let (status, body) = http_get(&c.api_url, "admin-every.localhost", "/").unwrap();
        assert_eq!(status, 200, "through coordinator {}: {body}", c.id);
        assert!(body.contains("hello from every coordinator"), "{body}");
        // HTTP/2 from the client (prior knowledge); the app still gets HTTP/1.1.
        let text = spacedock_cluster_tests::http2_get(&c.api_url, "admin-every.localhost", "/");
        assert!(
            text.contains("hello from every coordinator") && text.ends_with("\n2 200"),
            "HTTP/2 through coordinator {}: {text}",
            c.id
        );
    }
    let logs = cl.logs(&c3, &id);
    assert!(logs.contains("every starts"), "through a follower: {logs}");
}

/// Answers any request with `101 Switching Protocols`, then echoes what it receives.
const UPGRADE_ECHO: &str = r#"#!/bin/sh
while read -r line; do
  line=$(echo "$line" | busybox tr -d '\r')
  [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n'
exec busybox cat
"#;

#[test]
fn an_upgraded_connection_is_piped_both_ways_through_the_ingress() {
    use std::io::{BufRead, BufReader, Write};
    let cl = Cluster::start("upgrade", "10.207.0.0/24");
    let archive = busybox_image_with(
        cl.dir.path(),
        "demo/echo:1",
        &[
            "busybox",
            "nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            "/bin/upgrade-echo",
        ],
        "echo",
        &[("bin/upgrade-echo", UPGRADE_ECHO)],
    );
    cl.import(&archive);
    let id = cl.space("echo", "demo/echo:1", 60);
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(90));
    let addr = cl.c.api_url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: admin-echo.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    for word in ["ping", "pong"] {
        writeln!(stream, "{word}").unwrap();
        let mut echoed = String::new();
        reader.read_line(&mut echoed).unwrap();
        assert_eq!(echoed, format!("{word}\n"));
    }
}

#[test]
fn an_idle_space_sleeps_and_a_request_wakes_it() {
    let cl = Cluster::start("sleepy", "10.208.0.0/24");
    let archive = busybox_image(
        cl.dir.path(),
        "demo/sleepy:1",
        &["/bin/sh", "-c", "exec busybox httpd -f -p 8080 -h /www"],
        "awake again",
    );
    cl.import(&archive);
    let id = cl.space("sleepy", "demo/sleepy:1", 60);
    api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        &format!("/api/spaces/{id}/sleeptime"),
        Some(json!({ "seconds": 3 })),
    )
    .unwrap();
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(90));
    let first = cl.allocation()["id"].as_str().unwrap().to_owned();
    // Idle past its sleep time: SLEEPING, its allocation and container gone.
    cl.wait_stage(&id, "SLEEPING", Duration::from_secs(30));
    cl.wait(
        Duration::from_secs(30),
        "the sleeping Space's container removed",
        |c| (c.allocation().is_null() && !c.containers().contains(&first)).then_some(()),
    );
    // A browser gets a page that reloads while the Space wakes.
    let (status, body) = http_get_with(
        &cl.c.api_url,
        "admin-sleepy.localhost",
        "/",
        &[("Accept", "text/html")],
    )
    .unwrap();
    assert!(
        status == 503 && body.contains("waking up"),
        "{status} {body}"
    );
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(60));
    // Asleep again, a plain client's request is held until the app answers, then served.
    cl.wait_stage(&id, "SLEEPING", Duration::from_secs(30));
    let (status, body) = http_get(&cl.c.api_url, "admin-sleepy.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("awake again"), "{body}");
    assert_eq!(cl.runtime(&id)["stage"], "RUNNING");
    assert_ne!(cl.allocation()["id"].as_str(), Some(first.as_str()));
}

#[test]
fn a_lost_node_s_space_runs_on_another() {
    let (dir, config) = config_dir();
    let c = Coordinator::bootstrap_with(
        dir.path(),
        &["--config", &config, "--node-ttl-seconds", "3"],
    );
    let join = c.quic_addr.clone();
    let mut cl = Cluster::with_agent(dir, c, "lost-a", "10.209.0.0/24", &join);
    let token = api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "agent" })),
    )
    .unwrap();
    let namespace_b = format!("sdtest-lost-b-{}", std::process::id());
    let mut agent_b = Agent::start(
        cl.dir.path(),
        "run-lost-b",
        &join,
        token["token"].as_str(),
        &[
            "--container-subnet",
            "10.210.0.0/24",
            "--containerd-namespace",
            &namespace_b,
        ],
    );
    let _containers_b = ContainersGuard {
        namespace: namespace_b,
    };
    cl.wait(Duration::from_secs(30), "two ready nodes", |c| {
        let nodes = api(&c.c.api_url, &c.admin, "GET", "/api/nodes", None).ok()?;
        (nodes
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "ready")
            .count()
            == 2)
            .then_some(())
    });
    let id = cl.running_httpd("lost", "survives its node");
    // Where it runs: (node, allocation).
    let placed = |c: &Cluster| -> Option<(String, String)> {
        let nodes = api(&c.c.api_url, &c.admin, "GET", "/api/nodes", None).ok()?;
        nodes.as_array()?.iter().find_map(|n| {
            let a = n["allocations"].as_array()?.first()?;
            Some((n["name"].as_str()?.to_owned(), a["id"].as_str()?.to_owned()))
        })
    };
    let (first_node, first) = placed(&cl).unwrap();
    // kill -9 of the agent running it: the node goes down after its TTL and the Space runs on the other one.
    if first_node == "run-lost-a" {
        cl.agent.kill();
    } else {
        agent_b.kill();
    }
    cl.wait(
        Duration::from_secs(60),
        "the Space RUNNING on the other node",
        |c| {
            let (node, allocation) = placed(c)?;
            (node != first_node && allocation != first && c.runtime(&id)["stage"] == "RUNNING")
                .then_some(())
        },
    );
    let (status, body) = http_get(&cl.c.api_url, "admin-lost.localhost", "/").unwrap();
    assert!(
        status == 200 && body.contains("survives its node"),
        "{status} {body}"
    );
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn the_usage_ledger_survives_a_leader_failover() {
    let (dir, c1, c2, c3) = three_coordinators();
    let join = format!("{},{},{}", c1.quic_addr, c2.quic_addr, c3.quic_addr);
    let mut cl = Cluster::with_agent(dir, c1, "meter", "10.211.0.0/24", &join);
    let id = cl.running_httpd("meter", "metered");
    let started = now_ms();
    // Run past the next minute boundary, so the leader's meter records a completed minute before it dies.
    let to_boundary = 60_000 - started % 60_000;
    std::thread::sleep(Duration::from_millis(to_boundary + 7_000));
    cl.c.kill();
    // The new leader takes over the meter; the Space keeps running meanwhile.
    let runtime = |c: &Coordinator| {
        api(
            &c.api_url,
            &cl.admin,
            "GET",
            &format!("/api/spaces/{id}/runtime"),
            None,
        )
    };
    let waited = Instant::now();
    while !runtime(&c2).is_ok_and(|r| r["stage"] == "RUNNING") {
        assert!(waited.elapsed() < Duration::from_secs(30), "no new leader");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(7));
    api(
        &c2.api_url,
        &cl.admin,
        "POST",
        &format!("/api/spaces/{id}/pause"),
        None,
    )
    .unwrap();
    let stopped = now_ms();
    let waited = Instant::now();
    let minutes = loop {
        let usage = api(
            &c2.api_url,
            &cl.admin,
            "GET",
            "/api/usage?namespace=admin",
            None,
        )
        .unwrap();
        let stage = runtime(&c2).unwrap()["stage"].clone();
        let nodes = api(&c2.api_url, &cl.admin, "GET", "/api/nodes", None).unwrap();
        if stage == "PAUSED" && nodes[0]["allocations"][0].is_null() {
            break usage["totalMinutes"].as_u64().unwrap();
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "not paused: {usage}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every minute the Space ran, once: the minutes from its start to its pause (its start may fall just
    // before RUNNING was seen, and the scheduler's removal just after the pause was acknowledged).
    let real = stopped / 60_000 - started / 60_000 + 1;
    assert!(
        (real..=real + 2).contains(&minutes),
        "ledger {minutes} minutes, ran in {real} minutes"
    );
    let _ = c3;
}
