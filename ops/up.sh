#!/usr/bin/env bash
# Brings up spacedock on this machine, as far as the project has come: installs the system packages it needs
# (as root, on Debian), builds every binary in release mode, checks the example Spaces, then runs a one-machine
# cluster in the foreground (`spacedock dev`) with the example Spaces created, printing where to reach it.
# SPACEDOCK_DEV_DIR (default ~/.spacedock-dev), SPACEDOCK_COORDINATORS (default 1) and SPACEDOCK_AGENTS (default 1)
# change where and how many.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ops/lib.sh
. ops/lib.sh

ensure_debian_packages protobuf-compiler build-essential git ca-certificates containerd runc iproute2 busybox-static debootstrap
ensure_rust

step "cargo build --release"
cargo build --release --bins --locked

bin=target/release
step "checking the example Spaces"
for example in ops/examples/*/; do
  "$bin/spacedock" space validate "$example"
done

data_dir=${SPACEDOCK_DEV_DIR:-$HOME/.spacedock-dev}
coordinators=${SPACEDOCK_COORDINATORS:-1}
step "starting a $coordinators-coordinator cluster in $data_dir (Ctrl-C stops it)"
cat <<MSG
The example Spaces are pushed with git and built by the cluster's builder (the Python base for the Gradio and
Streamlit ones is made from Debian packages first, once); each one's URL is printed once it runs.
admin/hello is a prebuilt-image Space (busybox httpd) in a container.
MSG
exec "$bin/spacedock" dev --coordinators "$coordinators" --agents "${SPACEDOCK_AGENTS:-1}" \
  --data-dir "$data_dir" --examples ops/examples --python-base 3.11
