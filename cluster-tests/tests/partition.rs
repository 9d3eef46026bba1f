//! A real network partition: three coordinators, each in its own network namespace on a bridge (10.77.0.0/24,
//! inside namespaces this test makes and removes). The leader's link is cut: the majority elects a new leader
//! and keeps committing; the cut-off node commits nothing and serves no linearizable read; healed, it catches
//! up. Needs root and iproute2 (ops/test.sh installs it); without them the test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spacedock_cluster_tests::binary;

const API: &str = "http://127.0.0.1:8080";

/// Runs a command, panicking with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (this test needs root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Net {
    prefix: String,
}

impl Net {
    fn new() -> Net {
        let prefix = format!("sd{}", std::process::id() % 100_000);
        let net = Net { prefix };
        let br = net.bridge_ns();
        sh(&["ip", "netns", "add", &br]);
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=3 {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{i}"),
                "netns",
                &br,
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &br,
                "link",
                "set",
                &format!("p{i}"),
                "master",
                "br0",
            ]);
            sh(&["ip", "-n", &br, "link", "set", &format!("p{i}"), "up"]);
        }
        net
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: u64) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn set_link(&self, i: u64, up: bool) {
        sh(&[
            "ip",
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Runs the `spacedock` CLI inside node `i`'s namespace against its coordinator.
    fn cli(&self, i: u64, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(binary("spacedock"))
            .args(["--endpoint", API, "--token", token])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=3 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns()])
            .status();
    }
}

struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(net: &Net, dir: &Path, i: u64, join: Option<&str>) -> Node {
    let log = std::fs::File::create(dir.join(format!("n{i}.log"))).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns(i)])
        .arg(binary("spacedock-coordinator"))
        .args(["--node-id", &i.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("n{i}")))
        .args(["--api-listen", "127.0.0.1:8080", "--public-url", API])
        .args(["--quic-listen", &format!("10.77.0.{i}:7443")])
        .env("RUST_LOG", "info,raft=warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(token) = join {
        cmd.args(["--join", "10.77.0.1:7443", "--token", token]);
    }
    Node {
        child: cmd.stdin(Stdio::null()).spawn().unwrap(),
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leader_seen_by(net: &Net, i: u64, token: &str) -> Option<u64> {
    let (ok, out) = net.cli(i, token, &["cluster", "status", "--json"]);
    if !ok {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&out).ok()?["leader"].as_u64()
}

#[test]
fn a_partitioned_leader_cannot_commit_or_serve_reads() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![start(&net, dir.path(), 1, None)];
    let token_file: PathBuf = dir.path().join("n1/admin-token");
    wait_for("the admin token", Duration::from_secs(20), || {
        token_file.exists()
    });
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    wait_for("coordinator 1", Duration::from_secs(20), || {
        net.cli(1, &token, &["cluster", "status"]).0
    });
    let (ok, join) = net.cli(
        1,
        &token,
        &["cluster", "join-token", "create", "--role", "coordinator"],
    );
    assert!(ok, "{join}");
    let join = join
        .lines()
        .find(|l| l.starts_with("sdj1-"))
        .unwrap()
        .to_owned();
    for i in 2..=3 {
        nodes.push(start(&net, dir.path(), i, Some(&join)));
        wait_for(&format!("coordinator {i}"), Duration::from_secs(30), || {
            net.cli(i, &token, &["cluster", "status"]).0
        });
    }
    let (ok, out) = net.cli(2, &token, &["user", "create", "before-cut"]);
    assert!(ok, "{out}");

    let leader = leader_seen_by(&net, 1, &token).expect("a leader");
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    net.set_link(leader, false);

    wait_for(
        "a new leader in the majority",
        Duration::from_secs(15),
        || leader_seen_by(&net, majority[0], &token).is_some_and(|l| majority.contains(&l)),
    );
    let (ok, out) = net.cli(majority[1], &token, &["user", "create", "during-cut"]);
    assert!(ok, "the majority could not commit: {out}");

    let (ok, out) = net.cli(leader, &token, &["user", "create", "minority"]);
    assert!(
        !ok && out.contains("503"),
        "the cut-off node acknowledged a write: {out}"
    );
    let (ok, out) = net.cli(leader, &token, &["cluster", "status"]);
    assert!(
        !ok && out.contains("503"),
        "the cut-off node served a linearizable read: {out}"
    );

    net.set_link(leader, true);
    wait_for(
        "the healed node to catch up",
        Duration::from_secs(30),
        || {
            net.cli(leader, &token, &["user", "create", "during-cut"])
                .1
                .contains("is taken")
        },
    );
    let (ok, out) = net.cli(majority[0], &token, &["user", "create", "minority"]);
    assert!(ok, "the refused minority write must not exist: {out}");
    drop(nodes);
}
