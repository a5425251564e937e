#!/usr/bin/env bash
# "COND && pass ... || fail ...": pass always succeeds, so fail runs exactly when COND fails;
# sed indents multi-line output.
# shellcheck disable=SC2015,SC2001
# The deploy and adopt tooling, checked here without any real host:
#   1. shellcheck on every shell script of the repository (Debian's shellcheck);
#   2. scripts/adopt_facts.py on the captured machine outputs in scripts/testdata/adopt
#      (DigitalOcean, Hetzner, Vultr; BIOS and UEFI; after nixos-infect; refusals), then
#      scripts/adopt-host.sh end to end on a capture, and the collector run on this machine
#      (read-only) to show its output parses;
#   3. scripts/deploy.sh against simulated nodes (scripts/testdata/deploy: a stand-in for
#      ssh whose "node" keeps its generations, profile, transient timer and /health in a
#      directory): a good deploy, an unhealthy generation, one that cuts SSH off (the
#      node's own timer reverts it), a changed node key, a system without root's key, a
#      pending earlier rollback, --all stopping at the first failure, the refusals
#      (no SSH key, unadopted facts, not NixOS yet) and --print-plan touching nothing;
#   4. scripts/first-install.sh in its offline mode; docs/NIX.md's fleet check (the block
#      scripts/check-systemd.sh runs against its container mesh) is shellcheck-clean and
#      asks x0x status with the inventory.
# Nothing here opens a network connection. PASS/FAIL lines; exit 1 on any FAIL.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$PWD

fails=0 passes=0
pass() { printf 'PASS %s\n' "$*"; passes=$((passes + 1)); }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
started=$SECONDS

work=$(mktemp -d /tmp/x0x-check-deploy.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- 1. shellcheck -------------------------------------------------------------------------
echo "== shellcheck"
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1; }
fi
mapfile -t shell_files < <(git ls-files --cached --others --exclude-standard | while read -r f; do
  [ -f "$f" ] || continue
  case $f in *.sh) echo "$f" ;; *) head -1 "$f" 2>/dev/null | grep -qE '^#!.*(ba)?sh' && echo "$f" ;; esac
done)
if command -v shellcheck >/dev/null; then
  # Sourced files without a shebang (scripts/isolated.sh) are bash, like every script here.
  mapfile -t no_shebang < <(for f in "${shell_files[@]}"; do head -c2 "$f" | grep -q '^#!' || echo "$f"; done)
  mapfile -t with_shebang < <(for f in "${shell_files[@]}"; do head -c2 "$f" | grep -q '^#!' && echo "$f"; done)
  if shellcheck -x "${with_shebang[@]}" && { [ ${#no_shebang[@]} = 0 ] || shellcheck -x --shell=bash "${no_shebang[@]}"; }; then
    pass "shellcheck: ${#shell_files[@]} scripts clean ($(shellcheck --version | sed -n 's/^version: //p'))"
  else
    fail "shellcheck"
  fi
else
  fail "shellcheck is not installed (apt-get install shellcheck)"
fi

# --- 2. adopt ----------------------------------------------------------------------------
echo "== adopt: parsing captured machine outputs"
if out=$(python3 scripts/adopt_facts.py test scripts/testdata/adopt); then
  sed 's/^/  /' <<<"$out"
  pass "adopt_facts.py: $(echo "$out" | tail -1)"
else
  sed 's/^/  /' <<<"$out"
  fail "adopt_facts.py test"
fi

echo "== adopt-host.sh end to end on a capture (Hetzner, then again after nixos-infect)"
mkdir -p "$work/facts"
cp hosts/facts/saorsa-6.json "$work/facts/"
if scripts/adopt-host.sh --capture scripts/testdata/adopt/hetzner-ubuntu-bios/capture.txt --out "$work/facts" \
  --target root@198.51.100.20 saorsa-6 >"$work/adopt.out" 2>&1; then
  fail "adopt-host.sh accepted facts whose addresses are not the inventory's"
else
  grep -q 'inventory ipv4 65.21.157.229 is not on the machine' "$work/adopt.out" &&
    pass "adopt-host.sh writes the facts and names the inventory mismatch (exit 3)" ||
    { sed 's/^/  /' "$work/adopt.out"; fail "adopt-host.sh mismatch message"; }
fi
python3 - "$work/facts/saorsa-6.json" scripts/testdata/adopt/hetzner-ubuntu-bios/expected.json <<'EOF' &&
import json, sys
got, want = (json.load(open(p)) for p in sys.argv[1:])
for d in (got, want):
    d["adopted"]["at"] = None
sys.exit(0 if got == want else 1)
EOF
  pass "adopt-host.sh wrote hosts/facts/saorsa-6.json = the expected facts" || fail "adopt-host.sh facts differ"
[ -s "$work/facts/saorsa-6.capture.txt" ] && pass "adopt-host.sh keeps the raw capture beside the facts" ||
  fail "no capture kept"

echo "== the collector on this machine (read-only)"
python3 scripts/adopt_facts.py collector | sh >"$work/local.txt" 2>"$work/local.err"
if python3 scripts/adopt_facts.py parse --name local --capture "$work/local.txt" >"$work/local.json" 2>"$work/local.perr"; then
  pass "collector output on this machine parses into facts"
elif grep -qE 'incomplete|not JSON' "$work/local.perr"; then
  fail "collector output does not parse: $(cat "$work/local.perr")"
else
  pass "collector output on this machine parses; adoption refused as it should be here: $(sed 's/^adopt: local: //' "$work/local.perr")"
fi

# --- 3. deploy against simulated nodes ------------------------------------------------------
echo "== deploy.sh against simulated nodes"
td=scripts/testdata/deploy
cat >"$work/inventory.toml" <<'EOF'
[defaults]
quic_port = 12000
health_port = 12600
tcp_port = 443

[[node]]
name = "n1"
location = "lab"
provider = "Hetzner"
ipv4 = "10.0.0.1"
quic_port = 12000
ipv4_prefix_length = 32
ipv4_gateway = "172.31.1.1"

[[node]]
name = "n2"
location = "lab"
provider = "Hetzner"
ipv4 = "10.0.0.2"
quic_port = 12000
ipv4_prefix_length = 32
ipv4_gateway = "172.31.1.1"

[[node]]
name = "n3"
location = "lab"
provider = "Hetzner"
ipv4 = "10.0.0.3"
quic_port = 12000
ipv4_prefix_length = 32
ipv4_gateway = "172.31.1.1"
EOF
mkdir -p "$work/dfacts"
for n in n1 n2 n3; do
  python3 scripts/adopt_facts.py parse --name "$n" --capture scripts/testdata/adopt/hetzner-nixos-after-infect/capture.txt >"$work/dfacts/$n.json"
done
echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheDeployTestOnly x0x-test" >"$work/keys"
PEER=a250e8c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9

export X0X_INVENTORY=$work/inventory.toml X0X_FAKE_NODES=$work/nodes X0X_FAKE_BUILDS=$work/builds
export X0X_DEPLOY_SSH=$repo/$td/fake-ssh X0X_DEPLOY_NIX=$repo/$td/fake-nix
export X0X_DEPLOY_POLL=1 X0X_DEPLOY_MIN_ROLLBACK=3 X0X_DEPLOY_GRACE=10

# scenario NAME NODE_SYSTEMS... ; then deploy with DEPLOY_ARGS, new system = NEW
setup() { # NODE SYSTEM:BEHAVIOUR... (first = running); the build of NODE yields the last
  local node=$1; shift
  rm -rf "${X0X_FAKE_NODES:?}/root@10.0.0.${node#n}"
  "$td/make-node.sh" "$X0X_FAKE_NODES/root@10.0.0.${node#n}" "$PEER" "$@"
  mkdir -p "$X0X_FAKE_BUILDS"
  local last=${*: -1}
  echo "/nix/store/${last%%:*}" >"$X0X_FAKE_BUILDS/$node"
}
current() { readlink -f "$X0X_FAKE_NODES/root@10.0.0.${1#n}/run/current-system" | xargs basename; }
profile() { readlink -f "$X0X_FAKE_NODES/root@10.0.0.${1#n}/profiles/system" | xargs basename; }
armed() { [ -f "$X0X_FAKE_NODES/root@10.0.0.${1#n}/timer" ]; }
nodelog() { cat "$X0X_FAKE_NODES/root@10.0.0.${1#n}/log"; }
deploy() { scripts/deploy.sh --authorized-keys "$work/keys" --facts-dir "$work/dfacts" --health-timeout 3 --rollback-after 20 "$@" >"$work/deploy.out" 2>&1; }
expect() { # WHAT RC NODE CURRENT PROFILE [LOG-GREP...]
  local what=$1 want_rc=$2 node=$3 cur=$4 prof=$5 ok=1 g
  shift 5
  [ "$rc" = "$want_rc" ] || { echo "  exit $rc, expected $want_rc"; ok=0; }
  [ "$(current "$node")" = "$cur" ] || { echo "  running $(current "$node"), expected $cur"; ok=0; }
  [ "$(profile "$node")" = "$prof" ] || { echo "  boot default $(profile "$node"), expected $prof"; ok=0; }
  ! armed "$node" || { echo "  the rollback timer is still armed"; ok=0; }
  for g in "$@"; do
    case $g in
      '!'*) ! nodelog "$node" | grep -q -- "${g#!}" || { echo "  node log has '${g#!}'"; ok=0; } ;;
      *) nodelog "$node" | grep -q -- "$g" || { echo "  node log lacks '$g'"; ok=0; } ;;
    esac
  done
  if [ $ok = 1 ]; then pass "deploy: $what"; else
    sed 's/^/    deploy: /' "$work/deploy.out"; nodelog "$node" | sed 's/^/    node: /'; fail "deploy: $what"; fi
}

setup n1 gen-a:healthy gen-b:healthy
deploy n1; rc=$?
expect "good generation: test, healthy, switch, confirmed" 0 n1 gen-b gen-b \
  "armed x0x-deploy-rollback" "switch-to-configuration test: gen-b" "switch-to-configuration switch: gen-b" "timer stopped" "!rollback started" "!timer fired"

setup n1 gen-a:healthy gen-u:unhealthy
deploy n1; rc=$?
expect "unhealthy generation: reverted at once, boot default untouched" 1 n1 gen-a gen-a \
  "switch-to-configuration test: gen-u" "rollback started" "switch-to-configuration switch: gen-a" "!switch-to-configuration switch: gen-u"

setup n1 gen-a:healthy gen-c:cutoff
t0=$SECONDS
deploy n1 --health-timeout 1 --rollback-after 6; rc=$?
expect "generation that shuts SSH out: the node's own timer reverts it ($((SECONDS - t0)) s)" 1 n1 gen-a gen-a \
  "connection refused (cutoff)" "timer fired" "switch-to-configuration switch: gen-a"
grep -q "reverted by itself" "$work/deploy.out" && pass "deploy: reports that the node reverted by itself" ||
  fail "deploy: no 'reverted by itself' message"

setup n1 gen-a:healthy gen-k:newkey
deploy n1; rc=$?
expect "generation with another node key: refused by peer_id, reverted" 1 n1 gen-a gen-a "rollback started"
grep -q "peer_id changed" "$work/deploy.out" && pass "deploy: names the changed peer_id" || fail "deploy: peer_id message"

setup n1 gen-a:healthy gen-n:healthy:nokey
deploy n1; rc=$?
expect "system without root's SSH key: refused before arming" 2 n1 gen-a gen-a "!armed" "!switch-to-configuration"

setup n1 gen-a:healthy gen-b:healthy
echo "$(($(date +%s) + 3600)) true" >"$X0X_FAKE_NODES/root@10.0.0.1/timer"
deploy n1; rc=$?
rm -f "$X0X_FAKE_NODES/root@10.0.0.1/timer"
expect "a pending rollback from an earlier deploy: refused, nothing activated" 2 n1 gen-a gen-a "!switch-to-configuration"

setup n1 gen-a:healthy gen-b:healthy
setup n2 gen-a:healthy gen-u:unhealthy
setup n3 gen-a:healthy gen-b:healthy
deploy --all; rc=$?
expect "--all: n1 deployed" 1 n1 gen-b gen-b
expect "--all: n2 failed and reverted" 1 n2 gen-a gen-a "rollback started"
expect "--all: stopped, n3 untouched" 1 n3 gen-a gen-a "!ssh:"

setup n1 gen-a:healthy gen-b:healthy
: >"$work/nokeys"
scripts/deploy.sh --authorized-keys "$work/nokeys" --facts-dir "$work/dfacts" n1 >"$work/deploy.out" 2>&1; rc=$?
expect "no SSH key in the keys file: refused" 2 n1 gen-a gen-a "!ssh:"
grep -q "no SSH authorized key configured" "$work/deploy.out" && pass "deploy: says why (no SSH authorized key)" || fail "deploy: no-key message"

unset X0X_INVENTORY
scripts/deploy.sh --print-plan saorsa-2 >"$work/deploy.out" 2>&1; rc=$?
[ $rc = 2 ] && grep -q "no SSH authorized key configured" "$work/deploy.out" &&
  pass "deploy: the real fleet is refused today (hosts/authorized_keys lists no key)" ||
  { sed 's/^/    /' "$work/deploy.out"; fail "deploy: real fleet not refused"; }
scripts/deploy.sh --print-plan --authorized-keys "$work/keys" saorsa-2 >"$work/deploy.out" 2>&1; rc=$?
[ $rc = 2 ] && grep -q "never read off the machine" "$work/deploy.out" &&
  pass "deploy: with a key, the real fleet is still refused: facts not adopted" ||
  { sed 's/^/    /' "$work/deploy.out"; fail "deploy: unadopted facts not refused"; }
export X0X_INVENTORY=$work/inventory.toml
cp "$work/dfacts/n1.json" "$work/n1-ubuntu.json"
python3 scripts/adopt_facts.py parse --name n1 --capture scripts/testdata/adopt/hetzner-ubuntu-bios/capture.txt >"$work/dfacts/n1.json"
deploy n1; rc=$?
expect "adopted but still Ubuntu: refused, install first" 2 n1 gen-a gen-a "!ssh:"
cp "$work/n1-ubuntu.json" "$work/dfacts/n1.json"

X0X_DEPLOY_SSH=false X0X_DEPLOY_NIX=false scripts/deploy.sh --print-plan --all --authorized-keys "$work/keys" \
  --facts-dir "$work/dfacts" >"$work/deploy.out" 2>&1; rc=$?
[ $rc = 0 ] && [ "$(grep -c 'step 9/9' "$work/deploy.out")" = 3 ] && grep -q "plan only" "$work/deploy.out" &&
  pass "deploy --print-plan --all: 3 nodes x 9 steps, without SSH or nix" ||
  { sed 's/^/    /' "$work/deploy.out"; fail "deploy --print-plan --all"; }

# --- 4. first install offline, the documented fleet check ------------------------------
echo "== first-install.sh offline, the fleet check of docs/NIX.md"
unset X0X_INVENTORY
if scripts/first-install.sh --print-plan saorsa-6 >"$work/fi.out" 2>&1; then
  fail "first-install.sh --print-plan accepted a fleet with no SSH key"
else
  grep -q "no SSH authorized key" "$work/fi.out" && pass "first-install.sh refuses without an SSH key" ||
    { sed 's/^/    /' "$work/fi.out"; fail "first-install.sh no-key message"; }
fi
if scripts/first-install.sh --print-plan --authorized-keys "$work/keys" saorsa-6 >"$work/fi.out" 2>&1 &&
  grep -q "nixos-infect" "$work/fi.out" && grep -q "sha256" "$work/fi.out"; then
  pass "first-install.sh --print-plan: $(grep -c '^\[saorsa-6\] step' "$work/fi.out") steps, pinned nixos-infect"
else
  sed 's/^/    /' "$work/fi.out"; fail "first-install.sh --print-plan"
fi
# The fleet check of docs/NIX.md, as check-systemd.sh extracts and runs it.
awk '/<!-- fleet-check:/ { on = 1; next } on && /^```sh/ { next } on && /^```/ { exit } on' docs/NIX.md >"$work/fleet-check.sh"
if [ -s "$work/fleet-check.sh" ] && grep -q 'x0x status --inventory hosts/inventory.toml --json' "$work/fleet-check.sh" &&
  out=$(shellcheck -s bash "$work/fleet-check.sh" 2>&1); then
  pass "docs/NIX.md fleet check: $(wc -l <"$work/fleet-check.sh") lines, x0x status --inventory --json, shellcheck-clean"
else
  sed 's/^/    /' "$work/fleet-check.sh"; echo "${out:-}" | sed 's/^/    /'; fail "docs/NIX.md fleet check block"
fi

echo
echo "check-deploy: $passes passed, $fails failed ($((SECONDS - started)) s)"
[ $fails = 0 ]
