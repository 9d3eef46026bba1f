//! The official `huggingface_hub` client against a real coordinator: the Spaces API scenario and the repo files
//! scenario (uploads, commits, downloads, listings on Space, model and dataset repos).

#![allow(clippy::unwrap_used)] // test harness: panics are how tests fail

use spacedock_cluster_tests::{Coordinator, run_python};

/// Runs a scenario script against a fresh coordinator; returns its log after checking the script passed.
fn scenario(script: &str, env: &[(&str, &str)]) -> (Coordinator, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::bootstrap(dir.path());
    let token = coordinator.admin_token();
    let mut all = vec![
        ("HF_ENDPOINT", coordinator.api_url.as_str()),
        ("SPACEDOCK_ADMIN_TOKEN", token.as_str()),
    ];
    all.extend_from_slice(env);
    let r = run_python(script, &all);
    if r.code != Some(0) {
        let log = coordinator.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{script} failed:\n{}\n{}\nthe coordinator's log ends:\n{}",
            r.stdout,
            r.stderr,
            tail.join("\n")
        );
    }
    assert!(
        r.stdout.contains("checks passed with huggingface_hub"),
        "{}",
        r.stdout
    );
    let log = coordinator.log_text();
    assert!(
        !log.contains(&token),
        "the admin token reached the coordinator log"
    );
    (coordinator, log, dir)
}

#[test]
fn huggingface_hub_spaces_scenario() {
    let (_c, log, _dir) = scenario("hf_scenario.py", &[]);
    assert!(
        !log.contains("s3cret-value-that-must-never-leak"),
        "the secret reached the coordinator log"
    );
}

#[test]
fn huggingface_hub_files_scenario() {
    let (_c, log, _dir) = scenario("hf_files.py", &[("HF_HUB_DISABLE_XET", "1")]);
    assert!(
        !log.contains("hf_QwErTyUiOpAsDfGhJkLzXcVbNm0123456789"),
        "the credential reached the coordinator log"
    );
}
