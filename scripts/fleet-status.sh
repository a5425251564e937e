#!/usr/bin/env bash
# The fleet's health in one command: every node of hosts/inventory.toml asked over QUIC by
# `x0x status --json` (its contract: {"healthy", "nodes": [{"addr", "peer_id", "reachable",
# "rtt_ms", "version", "uptime_s", "peers", "expected_peers", "status", "mesh": [...]}]}),
# printed one line per node with the inventory's names.
#
#   scripts/fleet-status.sh [--json] [--x0x PATH]   exit: x0x status's (0 healthy, 1 not, 69 none answers)
#   scripts/fleet-status.sh --print-addrs           the addresses it would ask, and nothing else
#
# Talks to the public nodes: run it from an operator's machine, not from CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
x0x=${X0X_BIN:-x0x} json=0
while [ $# -gt 0 ]; do
  case $1 in
    --print-addrs) python3 "$here/fleet.py" addrs; exit 0 ;;
    --json) json=1 ;;
    --x0x) x0x=$2; shift ;;
    *) echo "fleet-status: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
args=()
while read -r _name addr; do args+=(--bootstrap "$addr"); done < <(python3 "$here/fleet.py" addrs)
rc=0
out=$("$x0x" status --json "${args[@]}") || rc=$?
if [ $json = 1 ]; then printf '%s\n' "$out"; else python3 "$here/fleet.py" status-report - <<<"$out" || true; fi
exit $rc
