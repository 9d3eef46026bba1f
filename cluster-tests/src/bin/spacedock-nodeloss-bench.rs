//! `spacedock-nodeloss-bench`: from a node's loss to its Space RUNNING elsewhere. It starts a coordinator (the
//! default node TTL) and two agents (real processes, the containerd at `SPACEDOCK_TEST_CONTAINERD`), runs a
//! busybox `httpd` Space, and `--runs` times (default 5): kills the agent running it with SIGKILL and times
//! until the Space answers through the ingress from the other node; then restarts the killed agent. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::time::{Duration, Instant};

use serde_json::json;
use spacedock_cluster_tests::{
    Agent, ContainersGuard, Coordinator, api, flag_u64, http_get, httpd_space,
};

fn main() {
    let runs = flag_u64("--runs", 5);
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let call = |method: &str, path: &str, body: serde_json::Value| {
        api(&c.api_url, &admin, method, path, Some(body)).unwrap()
    };
    let token = call(
        "POST",
        "/api/cluster/join-tokens",
        json!({ "role": "agent" }),
    );
    let mut agents = Vec::new();
    let mut guards = Vec::new();
    for (i, subnet) in ["10.241.0.0/24", "10.242.0.0/24"].iter().enumerate() {
        let namespace = format!("sdbench-loss-{i}-{}", std::process::id());
        agents.push(Agent::start(
            dir.path(),
            &format!("loss-{i}"),
            &c.quic_addr,
            token["token"].as_str(),
            &[
                "--container-subnet",
                subnet,
                "--containerd-namespace",
                &namespace,
            ],
        ));
        guards.push(ContainersGuard { namespace });
    }
    httpd_space(&c, &admin, dir.path(), "loss", "still here", &[]);
    let placed = || -> Option<String> {
        let nodes = api(&c.api_url, &admin, "GET", "/api/nodes", None).ok()?;
        nodes.as_array()?.iter().find_map(|n| {
            let a = n["allocations"].as_array()?.first()?;
            (a["phase"] == "running" && n["state"] == "ready")
                .then(|| n["name"].as_str().unwrap().to_owned())
        })
    };
    let answers = || http_get(&c.api_url, "admin-loss.localhost", "/").is_ok_and(|(s, _)| s == 200);
    let mut times = Vec::new();
    for i in 0..runs {
        let ready = Instant::now();
        let node = loop {
            let both_ready = api(&c.api_url, &admin, "GET", "/api/nodes", None)
                .ok()
                .and_then(|n| {
                    n.as_array()
                        .map(|a| a.iter().filter(|n| n["state"] == "ready").count())
                })
                == Some(2);
            match placed() {
                Some(node) if both_ready && answers() => break node,
                _ => {}
            }
            assert!(
                ready.elapsed() < Duration::from_secs(120),
                "not ready for run {i}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let victim = agents.iter().position(|a| a.name == node).unwrap();
        let started = Instant::now();
        agents[victim].kill();
        while !(placed().is_some_and(|n| n != node) && answers()) {
            assert!(started.elapsed() < Duration::from_secs(120), "never moved");
            std::thread::sleep(Duration::from_millis(50));
        }
        let elapsed = started.elapsed();
        println!("run {i}: {:.1} s (from {node})", elapsed.as_secs_f64());
        times.push(elapsed);
        agents[victim].restart();
    }
    times.sort();
    println!(
        "node loss to RUNNING elsewhere over {} runs: p50 {:.1} s, max {:.1} s",
        times.len(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
}
