#!/usr/bin/env bash
# Build and run the x0x benchmark in quick mode (a few seconds per scenario,
# small counts) inside an isolated network namespace with only a loopback
# interface, print its table, and fail if the benchmark itself fails.
# scripts/test.sh runs this, so the benchmark cannot rot.
#
#   scripts/bench-quick.sh                    quick mode, JSON to target/bench-quick.json
#   scripts/bench-quick.sh --full --json F    any x0x-bench arguments instead (full mode: docs/BENCHMARKS.md)
#
# X0X_BENCH_PROFILE=debug uses the debug build (faster to build, slower to run;
# its figures mean nothing). Default: release.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/isolated.sh

profile="${X0X_BENCH_PROFILE:-release}"
target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  release) cargo build --locked --release --bins; dir="$target/release" ;;
  debug) cargo build --locked --bins; dir="$target/debug" ;;
  *) echo "X0X_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac

# Run private copies: a concurrent cargo build must not swap the binaries mid-run.
bin=$(mktemp -d "${TMPDIR:-/tmp}/x0x-bench-bin.XXXXXX")
trap 'rm -rf "$bin"' EXIT
# (x0x and x0x-netem: for `--only wan`, which finds them next to the node binary.)
cp "$dir/x0x-bench" "$dir/x0x-bootstrap" "$dir/x0x" "$dir/x0x-netem" "$bin/"

if [ $# -eq 0 ]; then
  mkdir -p "$target"
  set -- --quick --json "$target/bench-quick.json"
fi
args=""
for a in "$@"; do args="$args $(printf '%q' "$a")"; done
isolated "$(printf '%q' "$bin/x0x-bench") --node-bin $(printf '%q' "$bin/x0x-bootstrap")$args" || {
  rc=$?
  [ "$rc" = 125 ] && echo "error: the benchmark refuses to run on the host network." >&2
  exit "$rc"
}
