//! Helpers for tests that run the real spacedock binaries: finding them, running them, reading their output.
//!
//! The binaries come from `cargo build --workspace --bins` (ops/test.sh does it first). A missing binary fails the
//! test with that instruction; nothing is skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test harness: panics are how tests fail

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The four binaries.
pub const BINARIES: &[&str] = &[
    "spacedock",
    "spacedock-coordinator",
    "spacedock-agent",
    "spacedock-builder",
];

/// Path of a workspace binary built next to this test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (ops/test.sh does)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
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
