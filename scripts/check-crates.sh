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

# `publish --workspace` verifies each crate against the others from a
# temporary registry in target/package, whose crates cargo extracts under
# $CARGO_HOME/registry/src/-<hash>/ and then reuses by name and version: a
# previous run from the same path leaves sources of the same version but
# older content there, and the verification builds against them. Remove
# those extractions (only ours: the temporary registries' directories start
# with '-'; crates.io's are left alone).
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
for c in x0x x0x-proto x0x-bootstrap x0x-cli; do
  rm -rf "$cargo_home"/registry/src/-*/"$c"-[0-9]* "$cargo_home"/registry/cache/-*/"$c"-[0-9]*
done

# A clean checkout in CI; --allow-dirty only matters for local runs.
cargo publish --workspace --dry-run --locked --allow-dirty --quiet
echo "PASS cargo publish --workspace --dry-run --locked"
