#!/usr/bin/env bash
# Runs the whole spacedock test suite on a Debian machine: installs the system packages it needs (as root),
# then `cargo fmt --check`, clippy with warnings as errors, a build of every binary, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ops/lib.sh
. ops/lib.sh

ensure_debian_packages protobuf-compiler build-essential git ca-certificates python3 python3-venv iproute2 \
  containerd runc busybox-static git-lfs curl debootstrap docker-registry chromium
ensure_rust
ensure_test_venv
start_test_containerd "$PWD/target/test-containerd"

# cluster-tests run the official huggingface_hub client from this virtual environment.
export SPACEDOCK_TEST_PYTHON="$PWD/target/test-venv/bin/python"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (binaries used by cluster-tests)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked
