# Shell helpers shared by ops/test.sh and ops/up.sh. Sourced, not run.

step() {
  printf '\n==> %s\n' "$*" >&2
}

# Installs the Debian packages that are missing (needs root when any is).
ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages: ${missing[*]}; run as root or install them first" >&2
    return 1
  fi
  step "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Checks for a Rust toolchain new enough for the workspace (edition 2024, rust-version in Cargo.toml).
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: no Rust toolchain found; install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
    return 1
  fi
  local want have
  want=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
  have=$(rustc --version | cut -d' ' -f2)
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
    echo "error: Rust $have is older than the $want this workspace needs; run \`rustup update\`" >&2
    return 1
  fi
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
  fi
}

# The Python client the tests drive the API with, pinned, in target/test-venv.
HF_HUB_VERSION=2.4.0
ensure_test_venv() {
  local venv=target/test-venv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import huggingface_hub as h; assert h.__version__ == '$HF_HUB_VERSION'" 2>/dev/null; then
    return 0
  fi
  step "python venv with huggingface_hub==$HF_HUB_VERSION"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "huggingface_hub==$HF_HUB_VERSION"
}

# Stops what a test containerd under $1 left running: every task killed (containers survive their shim and
# containerd), then containerd, then whatever is still mounted under $1.
stop_test_containerd() {
  local dir=$1 sock=$1/containerd.sock ns id
  if [ -S "$sock" ]; then
    for ns in $(ctr -a "$sock" namespaces ls -q 2>/dev/null); do
      for id in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
    done
    sleep 0.5
  fi
  [ -n "${TEST_CONTAINERD_PID:-}" ] && kill "$TEST_CONTAINERD_PID" 2>/dev/null && wait "$TEST_CONTAINERD_PID" 2>/dev/null
  pkill -9 -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
  if [ -d "$dir" ]; then
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  return 0
}

# Starts a containerd of the test suite's own under $1 (root, state, socket, config there) and exports
# SPACEDOCK_TEST_CONTAINERD with its socket; it stops, with everything it ran, when the calling shell exits.
start_test_containerd() {
  local dir=$1
  stop_test_containerd "$dir"
  rm -rf "$dir" && mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
TOML
  step "containerd for the tests ($dir)"
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  TEST_CONTAINERD_PID=$!
  trap "stop_test_containerd '$dir'" EXIT
  for _ in $(seq 1 100); do
    [ -S "$dir/containerd.sock" ] && break
    sleep 0.1
  done
  if [ ! -S "$dir/containerd.sock" ]; then
    echo "error: containerd did not start; its log:" >&2
    cat "$dir/containerd.log" >&2
    return 1
  fi
  export SPACEDOCK_TEST_CONTAINERD="$dir/containerd.sock"
}
