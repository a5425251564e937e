#!/usr/bin/env bash
# Checks of the crate boundaries and release readiness:
#   1. the SDK (`x0x`) compiles none of the node's or the CLI's dependencies;
#   2. `cargo publish --workspace --dry-run --locked` packages and builds every
#      published crate from its package alone (what crates.io would get).
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='axum|hyper|prometheus-client|clap|tracing-subscriber|sd-notify|toml|tempfile'
tree=$(cargo tree --locked -p x0x -e normal --prefix none)
if hits=$(grep -oE "^($forbidden) v" <<<"$tree" | sort -u); [ -n "$hits" ]; then
  echo "FAIL the x0x SDK depends on node or CLI crates: ${hits//$'\n'/ }"
  echo "     (cargo tree -p x0x -e normal -i NAME shows why)"
  exit 1
fi
echo "PASS the x0x SDK's dependency tree has none of: ${forbidden//|/, } ($(sort -u <<<"$tree" | wc -l) crates)"

# A clean checkout in CI; --allow-dirty only matters for local runs.
cargo publish --workspace --dry-run --locked --allow-dirty --quiet
echo "PASS cargo publish --workspace --dry-run --locked"
