//! The official `huggingface_hub` client against a real 3-coordinator cluster, talking to a follower (whose
//! writes are forwarded to the leader): the Spaces API scenario.

use spacedock_cluster_tests::{Coordinator, run_python};

#[test]
fn huggingface_hub_spaces_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::bootstrap(dir.path());
    let token = coordinator.admin_token();
    let r = run_python(
        "hf_scenario.py",
        &[
            ("HF_ENDPOINT", &coordinator.api_url),
            ("SPACEDOCK_ADMIN_TOKEN", &token),
        ],
    );
    assert_eq!(
        r.code,
        Some(0),
        "scenario failed:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("checks passed with huggingface_hub"),
        "{}",
        r.stdout
    );
    let log = coordinator.log_text();
    assert!(
        !log.contains("s3cret-value-that-must-never-leak"),
        "the secret reached the coordinator log"
    );
    assert!(
        !log.contains(&token),
        "the admin token reached the coordinator log"
    );
}
