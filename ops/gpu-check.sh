#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, as root: prints the agent's NVML inventory and checks, through a real
# coordinator, agent and containerd, that a Space on a GPU flavor gets exactly its GPU and a CPU Space none
# (spacedock-gpu-check). Uses the binaries of `cargo build --release --workspace --bins`, or SPACEDOCK_BIN_DIR.
# Arguments go to spacedock-gpu-check: `--write-cdi-spec` where `nvidia-ctk cdi generate` made no CDI spec.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ops/lib.sh
. ops/lib.sh

bin=${SPACEDOCK_BIN_DIR:-$PWD/target/release}
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || ! command -v ip >/dev/null ||
  [ ! -x /bin/busybox ]; then
  ensure_debian_packages containerd runc iproute2 busybox-static
fi
start_test_containerd "${TMPDIR:-/tmp}/spacedock-gpu-check-containerd"
"$bin/spacedock-gpu-check" "$@"
