#!/usr/bin/env bash
# Show the main job: the six bootstrap nodes of hosts/inventory.toml form a
# full mesh on this machine (loopback only), then two agents find each other
# through it. Builds first. Runs in a network namespace of its own when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p x0x-bootstrap -p x0x --bin x0x-bootstrap --example local_mesh
. scripts/isolated.sh
run="target/release/examples/local_mesh"
isolated "$run" || {
  rc=$?
  [ "$rc" = 125 ] || exit "$rc"
  echo "(no network namespace available: running on this host's loopback)"
  exec "$run"
}
