#!/usr/bin/env bash
# Run every check and test of x0x. On a fresh Debian machine as root it first
# installs what it needs (iproute2, iptables, nix-bin, ...).
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    Rust checks and tests only (no Nix, no benchmark)
#
# The test suite runs inside a network namespace of its own (unshare -n) with
# only a loopback interface, so no test can send a packet off this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/isolated.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1
started=$(date +%s)
step() { printf '\n==> %s  (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "installing system packages (if missing)"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v iptables >/dev/null || need+=(iptables)
  command -v tc >/dev/null || need+=(iproute2)
  command -v unshare >/dev/null || need+=(util-linux)
  command -v nix-instantiate >/dev/null || need+=(nix-bin)
  # The port-mapping tests (tests/netns/portmap.rs) run Debian's miniupnpd
  # (UPnP IGD, NAT-PMP, PCP) inside a lab router's namespace, with its
  # iptables backend (its rules go to the legacy tables: iptables-legacy).
  # Only the daemon's binary package: it has no maintainer scripts, no
  # debconf questions and no service, so nothing starts on this host or
  # touches its firewall (the `miniupnpd` package would add a service).
  # The nftables build conflicts with it: a host that has it keeps it, and
  # the port-mapping tests then fail saying so.
  if ! dpkg -s miniupnpd-iptables >/dev/null 2>&1; then
    if dpkg -s miniupnpd-nftables >/dev/null 2>&1; then
      echo "miniupnpd-nftables is installed: the port-mapping tests need miniupnpd-iptables and will fail" >&2
    else
      need+=(miniupnpd-iptables)
    fi
  fi
  command -v iptables-legacy >/dev/null || need+=(iptables)
  command -v shellcheck >/dev/null || need+=(shellcheck)
  command -v jq >/dev/null || need+=(jq)
  if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "not root or no apt-get: assuming iproute2, iptables, miniupnpd-iptables and nix-bin are installed"
fi
# The network-namespace tests need root. They fail rather than pass
# silently when they cannot run; X0X_SKIP_NETNS=1 skips them on purpose.
if [ "$(id -u)" != 0 ] && [ "${X0X_SKIP_NETNS:-}" != 1 ]; then
  echo "error: not root: the network-namespace tests cannot run." >&2
  echo "       Run as root, or set X0X_SKIP_NETNS=1 to skip them explicitly (reported as NOT RUN)." >&2
  exit 1
fi
[ "${X0X_SKIP_NETNS:-}" = 1 ] && echo "NOT RUN: network-namespace tests (X0X_SKIP_NETNS=1)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo doc (warnings denied, as the flake's rustdoc check)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet

step "crate boundaries and cargo publish --dry-run"
scripts/check-crates.sh

step "building tests (fetches crates; the tests themselves run offline)"
cargo build --locked --workspace --all-targets
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --locked --workspace --no-run >/dev/null
  runner="cargo nextest run --offline --locked --workspace --no-fail-fast"
else
  runner="cargo test --offline --locked --workspace --no-fail-fast"
fi

step "test suite in an isolated network namespace: $runner"
isolated "echo \"interfaces in this namespace: \$(ip -o link show | cut -d: -f2 | xargs)\" && $runner" || {
  rc=$?
  [ "$rc" = 125 ] && echo "error: the suite refuses to run on the host network." >&2
  exit "$rc"
}

step "fuzz corpus replay (stable toolchain; docs/FUZZING.md)"
scripts/fuzz.sh replay

step "monitoring: promtool check/test rules, dashboard schema (docs/MONITORING.md)"
scripts/check-monitoring.sh

if [ "$quick" = 1 ]; then
  step "done (quick)"
  exit 0
fi

if [ -x scripts/bench-quick.sh ]; then
  step "benchmark, quick mode"
  scripts/bench-quick.sh
fi

step "gossip at 100 agents, 10 publishers (release build: 100 in-process agents are too many for -O0 on two cores)"
cargo build --locked --release -p x0x-bootstrap
cargo nextest run --locked --release -p x0x --test collab --no-run >/dev/null
isolated "X0X_GOSSIP_AGENTS=100 X0X_GOSSIP_PUBLISHERS=10 cargo nextest run --offline --locked --release -p x0x --test collab --no-capture gossip_every_subscriber_receives_every_message_exactly_once"

if [ -x scripts/check-nix.sh ]; then
  step "Nix checks"
  scripts/check-nix.sh
  step "deploy and adopt tooling (shellcheck, captured machine outputs, simulated nodes)"
  scripts/check-deploy.sh
  step "flake checks with a modern Nix (root; X0X_SKIP_MODERN_NIX=1 to skip)"
  scripts/check-nix-modern.sh
fi

step "the module's unit under real systemd, one node and a six-container mesh (root; X0X_SKIP_SYSTEMD=1 to skip)"
scripts/check-systemd.sh

step "all checks passed"
