//! `spacedock dev` as a user runs it: three coordinators and two agents come up, `cluster.json` has its
//! documented shape, the CLI reads the status through it, the demo Space answers through the ingress, and
//! SIGTERM stops every child.

#![allow(clippy::unwrap_used)] // test harness: panics are how tests fail

use std::process::Command;
use std::time::{Duration, Instant};

use spacedock_cluster_tests::{ContainersGuard, binary, http_get, repo_root, run, test_containerd};

#[test]
fn dev_runs_and_stops_a_three_coordinator_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let mut child = Command::new(binary("spacedock"))
        .args([
            "dev",
            "--coordinators",
            "3",
            "--agents",
            "2",
            "--examples",
            "ops/examples",
            "--data-dir",
        ])
        .arg(&data_dir)
        .arg("--containerd-socket")
        .arg(test_containerd())
        .current_dir(repo_root())
        .stdout(std::fs::File::create(dir.path().join("dev.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("dev.err")).unwrap())
        .spawn()
        .unwrap();
    let cluster_json = data_dir.join("cluster.json");
    let started = Instant::now();
    while !cluster_json.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cluster.json never appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "spacedock dev exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cluster: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster_json).unwrap()).unwrap();
    let coordinators = cluster["coordinators"].as_array().unwrap();
    assert_eq!(coordinators.len(), 3, "{cluster}");
    for (i, c) in coordinators.iter().enumerate() {
        assert_eq!(c["id"].as_u64(), Some(i as u64 + 1));
        assert!(
            c["api_url"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        assert!(c["pid"].as_u64().unwrap() > 0);
    }
    let agents = cluster["agents"].as_array().unwrap();
    let output = || {
        std::fs::read_to_string(dir.path().join("dev.out")).unwrap()
            + &std::fs::read_to_string(dir.path().join("dev.err")).unwrap()
    };
    assert_eq!(agents.len(), 2, "{cluster}\n{}", output());
    assert_eq!(
        (agents[0]["id"].as_str(), agents[1]["id"].as_str()),
        (Some("node-1"), Some("node-2"))
    );
    assert_eq!(cluster["builders"][0]["id"], "builder-1", "{cluster}");
    let token_file = cluster["admin_token_file"].as_str().unwrap();
    let token = std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_owned();
    let api_url = cluster["api_url"].as_str().unwrap();

    let status = run(
        "spacedock",
        &["cluster", "status", "--json"],
        &[("HF_ENDPOINT", api_url), ("HF_TOKEN", &token)],
    );
    assert_eq!(status.code, Some(0), "{status:?}");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let keys: Vec<&String> = status.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["leader", "members", "term"]);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["api_url", "applied_index", "id", "role"]);
    }
    let started = Instant::now();
    while !output().contains("Space admin/gradio-echo (gradio)") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no example Spaces:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let space = spacedock_cluster_tests::api(
        api_url,
        &token,
        "GET",
        "/api/spaces/admin/gradio-echo",
        None,
    )
    .unwrap();
    assert_eq!(space["sdk"], "gradio");

    // The demo Space runs in a container on one of the agents and answers through the ingress.
    let _containers = [
        ContainersGuard {
            namespace: "spacedock-node-1".into(),
        },
        ContainersGuard {
            namespace: "spacedock-node-2".into(),
        },
        ContainersGuard {
            namespace: "spacedock-builder".into(),
        },
    ];
    let started = Instant::now();
    while !output().contains("Open http://admin-hello.localhost:") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo Space did not start:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http_get(api_url, "admin-hello.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from spacedock"), "{body}");

    // The examples were pushed with git; the static one is served from its repo at once.
    assert!(
        output().contains("pushed; RUNNING: open http://admin-static-hello.localhost:"),
        "{}",
        output()
    );
    let (status, body) = http_get(api_url, "admin-static-hello.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("window.huggingface"), "{body}");
    let page =
        std::fs::read_to_string(repo_root().join("ops/examples/static-hello/index.html")).unwrap();
    let title = page
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap();
    assert!(body.contains(title), "{body}");

    // The Docker example was built by the builder from its Dockerfile and runs; the Gradio one needs a Python
    // base this cluster does not have, and says so.
    assert!(
        output().contains(
            "Space admin/docker-hello built; RUNNING: open http://admin-docker-hello.localhost:"
        ),
        "{}",
        output()
    );
    let (status, body) = http_get(api_url, "admin-docker-hello.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Hello from a Docker Space on spacedock"),
        "{body}"
    );
    assert!(
        output().contains(
            "Space admin/gradio-echo: BUILD_ERROR: README.md python_version: base image `spacedock/python:3.11`"
        ),
        "{}",
        output()
    );

    // SIGTERM stops the command and every coordinator it started.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spacedock dev did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    for c in coordinators {
        let pid = c["pid"].as_u64().unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "coordinator {pid} still runs"
        );
    }
}
