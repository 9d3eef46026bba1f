#!/usr/bin/env bash
# Brings up spacedock on this machine, as far as the project has come: installs the system packages it needs
# (as root, on Debian), builds every binary in release mode, checks the example Spaces, and prints what to open.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ops/lib.sh
. ops/lib.sh

ensure_debian_packages protobuf-compiler build-essential git ca-certificates
ensure_rust

step "cargo build --release"
cargo build --release --bins --locked

bin=target/release
step "checking the example Spaces"
for example in ops/examples/*/; do
  "$bin/spacedock" space validate "$example"
done

cat <<MSG

spacedock is built: $bin/spacedock, $bin/spacedock-coordinator, $bin/spacedock-agent, $bin/spacedock-builder
Every example Space in ops/examples/ is valid.

Not yet: the cluster itself. The coordinators, agent and builder that run these Spaces land with the
coordinator, agent, builder and end-to-end issues; until then this command stops here, and prints no URL
to open because nothing serves one yet. Try:
  $bin/spacedock space validate ops/examples/gradio-echo
  $bin/spacedock-coordinator --config ops/config/coordinator.toml --print-config
MSG
