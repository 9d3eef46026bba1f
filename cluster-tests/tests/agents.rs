//! Agents joining for real: a join token, mutual-TLS QUIC, the inventory in `GET /api/nodes` and
//! `spacedock nodes`, a second agent on the same token, refused tokens, restart without a token, and a stopped
//! agent marked down within the TTL.

#![allow(clippy::unwrap_used)] // test harness: panics are how tests fail

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_cluster_tests::{Agent, Coordinator, api, run};

fn agent(dir: &std::path::Path, name: &str, join: &str, token: Option<&str>) -> Agent {
    Agent::start(dir, name, join, token, &[])
}

fn node(c: &Coordinator, token: &str, name: &str) -> Option<Value> {
    let nodes = api(&c.api_url, token, "GET", "/api/nodes", None).ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

fn wait_state(c: &Coordinator, token: &str, name: &str, state: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        if let Some(n) = node(c, token, name).filter(|n| n["state"] == state) {
            return n;
        }
        assert!(
            started.elapsed() < limit,
            "node {name} not {state} within {limit:?}: {:?}",
            node(c, token, name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn join_token(c: &Coordinator, token: &str) -> Value {
    api(
        &c.api_url,
        token,
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "agent" })),
    )
    .unwrap()
}

#[test]
fn agents_join_report_inventory_and_go_down() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap_with(dir.path(), &["--node-ttl-seconds", "3"]);
    let admin = c.admin_token();
    let created = join_token(&c, &admin);
    let token = created["token"].as_str().unwrap();

    let mut a1 = agent(dir.path(), "a1", &c.quic_addr, Some(token));
    let n = wait_state(&c, &admin, "a1", "ready", Duration::from_secs(20));
    assert!(n["cpuCores"].as_u64().unwrap() >= 1, "{n}");
    assert!(n["memoryBytes"].as_u64().unwrap() > 0, "{n}");
    assert!(n["diskFreeBytes"].as_u64().unwrap() > 0, "{n}");
    assert!(!n["kernel"].as_str().unwrap().is_empty(), "{n}");
    assert_eq!(n["gpus"], json!([]), "no GPUs on this machine");
    assert!(
        n["containerdVersion"].as_str().unwrap().starts_with("1."),
        "{n}"
    );
    assert!(n["gpuNote"].as_str().unwrap().contains("NVML"), "{n}");

    let _a2 = agent(dir.path(), "a2", &c.quic_addr, Some(token));
    wait_state(&c, &admin, "a2", "ready", Duration::from_secs(20));
    let listed = run(
        "spacedock",
        &["nodes"],
        &[("HF_ENDPOINT", &c.api_url), ("HF_TOKEN", &admin)],
    );
    assert_eq!(listed.code, Some(0), "{listed:?}");
    assert!(
        listed.stdout.contains("a1")
            && listed.stdout.contains("a2")
            && listed.stdout.contains("ready"),
        "{}",
        listed.stdout
    );

    // Drain and back.
    let drained = run(
        "spacedock",
        &["nodes", "drain", "a2"],
        &[("HF_ENDPOINT", &c.api_url), ("HF_TOKEN", &admin)],
    );
    assert_eq!(drained.code, Some(0), "{drained:?}");
    assert_eq!(node(&c, &admin, "a2").unwrap()["state"], "draining");
    let missing = run(
        "spacedock",
        &["nodes", "drain", "nope"],
        &[("HF_ENDPOINT", &c.api_url), ("HF_TOKEN", &admin)],
    );
    assert!(
        missing.code != Some(0) && missing.stderr.contains("node `nope` not found"),
        "{missing:?}"
    );
    run(
        "spacedock",
        &["nodes", "ready", "a2"],
        &[("HF_ENDPOINT", &c.api_url), ("HF_TOKEN", &admin)],
    );
    assert_eq!(node(&c, &admin, "a2").unwrap()["state"], "ready");

    // A wrong token, a revoked one: refused with a message, nothing joins.
    let mut bad = agent(
        dir.path(),
        "bad",
        &c.quic_addr,
        Some(&format!("sdj1-{}-nope", "0".repeat(64))),
    );
    assert!(!bad.wait().success());
    assert!(
        std::fs::read_to_string(&bad.log)
            .unwrap()
            .contains("fingerprint"),
        "{}",
        std::fs::read_to_string(&bad.log).unwrap()
    );
    let fp = token.split('-').nth(1).unwrap();
    let mut forged = agent(
        dir.path(),
        "forged",
        &c.quic_addr,
        Some(&format!("sdj1-{fp}-notthesecret")),
    );
    assert!(!forged.wait().success());
    assert!(
        std::fs::read_to_string(&forged.log)
            .unwrap()
            .contains("unknown token")
    );
    let revoked = join_token(&c, &admin);
    api(
        &c.api_url,
        &admin,
        "DELETE",
        &format!(
            "/api/cluster/join-tokens/{}",
            revoked["id"].as_str().unwrap()
        ),
        None,
    )
    .unwrap();
    let mut late = agent(dir.path(), "late", &c.quic_addr, revoked["token"].as_str());
    assert!(!late.wait().success());
    assert!(
        std::fs::read_to_string(&late.log)
            .unwrap()
            .contains("revoked")
    );
    assert!(node(&c, &admin, "late").is_none());
    let expiring = api(
        &c.api_url,
        &admin,
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "agent", "ttlSeconds": 1 })),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut expired = agent(
        dir.path(),
        "expired",
        &c.quic_addr,
        expiring["token"].as_str(),
    );
    assert!(!expired.wait().success());
    assert!(
        std::fs::read_to_string(&expired.log)
            .unwrap()
            .contains("expired")
    );
    let coordinator_token = api(
        &c.api_url,
        &admin,
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "coordinator" })),
    )
    .unwrap();
    let mut wrong_role = agent(
        dir.path(),
        "wrong-role",
        &c.quic_addr,
        coordinator_token["token"].as_str(),
    );
    assert!(!wrong_role.wait().success());
    assert!(
        std::fs::read_to_string(&wrong_role.log)
            .unwrap()
            .contains("for coordinator nodes")
    );

    // kill -9 and restart without a token: the identity in the data dir is enough.
    a1.kill();
    let stopped = Instant::now();
    wait_state(&c, &admin, "a1", "down", Duration::from_secs(10));
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "marked down after {:?}",
        stopped.elapsed()
    );
    let _a1 = agent(dir.path(), "a1", &c.quic_addr, None);
    wait_state(&c, &admin, "a1", "ready", Duration::from_secs(20));
    assert_eq!(node(&c, &admin, "a2").unwrap()["state"], "ready");
}

#[test]
fn agents_follow_the_leader_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Coordinator::bootstrap_with(dir.path(), &["--node-ttl-seconds", "4"]);
    let admin = first.admin_token();
    let second = Coordinator::join(dir.path(), 2, &first, &admin);
    let third = Coordinator::join(dir.path(), 3, &first, &admin);
    let token = join_token(&first, &admin);
    let join = [&first, &second, &third]
        .map(|c| c.quic_addr.clone())
        .join(",");
    let _agent = agent(dir.path(), "a1", &join, token["token"].as_str());
    wait_state(&first, &admin, "a1", "ready", Duration::from_secs(20));

    // Coordinator 1 bootstrapped the cluster and leads it; kill it.
    let status = api(&second.api_url, &admin, "GET", "/api/cluster/node", None).unwrap();
    assert_eq!(status["leader"], 1, "{status}");
    first.kill();
    // Past two TTLs the node is still ready: the agent found the new leader and heartbeats there.
    std::thread::sleep(Duration::from_secs(9));
    let n = node(&second, &admin, "a1").unwrap();
    assert_eq!(n["state"], "ready", "{n}");
    drop(third);
}
