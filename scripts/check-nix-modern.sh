#!/usr/bin/env bash
# The flake's offline checks with a modern Nix (2.34, ../shared/tools/modern-nix), which
# Debian's Nix 2.8 cannot run:
#   1. `modern-nix check`: flake.lock accepted as is, crane's narHash, every flake output
#      evaluates in pure mode, every nixosConfigurations.* evaluates through flake.nix's
#      own wiring with no failed assertion. The hosts refuse to evaluate without a root
#      SSH key and hosts/authorized_keys holds none yet, so this runs on a copy of the
#      tree whose hosts/authorized_keys has one throwaway test key (printed below);
#   2. the other way round, on a copy with no key: every host fails evaluation with the
#      lock-out assertion (what keeps `nixos-rebuild` from building a host nobody could
#      log in to);
#   3. the VM tests' nodes (checks.x86_64-linux.vm-mesh and vm-deploy) through the same
#      harness: pkgs.testers.runNixOSTest replaced by an evaluation of every node
#      (scripts/nix/harness/flake.nix): no failed assertion, the x0x settings and units
#      they get, and the test scripts, which are compiled and checked with pyflakes;
#   4. the six real hosts through flake.nix's wiring, on a copy whose inventory gives two
#      nodes an IPv6 address (documentation prefix; one with a gateway, one by router
#      advertisements), as the operators will once the addresses are read off the
#      machines: each host's TCP relay (socket [::]:443 named `tcp`, `[tcp] listen`,
#      TCP 443 and UDP 12000 opened), QUIC on [::], and networkd carrying the IPv6
#      address with its route or RA, and none on the nodes without one (issue 11).
# What none of this can show: packages, crane's builds, real NixOS option declarations,
# the VMs themselves. Needs root (the chroot); otherwise prints NOT RUN and fails unless
# X0X_SKIP_MODERN_NIX=1.
#
# "COND && pass ... || fail ...": pass always succeeds; sed indents multi-line output.
# shellcheck disable=SC2015,SC2001
set -uo pipefail
cd "$(git rev-parse --show-toplevel)" || exit 1
top=$PWD

fails=0 passes=0
pass() { printf 'PASS %s\n' "$*"; passes=$((passes + 1)); }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
started=$SECONDS

if [ "$(id -u)" != 0 ]; then
  echo "NOT RUN: check-nix-modern needs root (modern-nix builds and enters a chroot)"
  [ "${X0X_SKIP_MODERN_NIX:-0}" = 1 ] && { echo "(skipped: X0X_SKIP_MODERN_NIX=1)"; exit 0; }
  exit 1
fi

# ../shared next to the project, or further up (a worktree under wt/).
shared=${X0X_SHARED:-}
for d in "$top/../shared" "$top/../../shared"; do
  [ -n "$shared" ] || { [ -x "$d/tools/modern-nix/modern-nix" ] && shared=$(cd "$d" && pwd); }
done
[ -n "$shared" ] || { echo "FAIL no ../shared/tools/modern-nix (set X0X_SHARED)"; exit 1; }
mn=$shared/tools/modern-nix/modern-nix
NIX_ROOT=${X0X_NIX_ROOT:-/opt/x0x-modern-nix}

work=$(mktemp -d /tmp/x0x-modern-nix.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A git repository holding the tree as it is now: tracked files (with their edits) and new
# files not ignored; a flake in git sees only what is in the index.
snapshot() { # DIR
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && cp --parents -P -t "$1" "$f"
  done
  (cd "$1" && git init -q && git add -A && git -c user.name=check -c user.email=check@localhost commit -qm snapshot)
}
recommit() { (cd "$1" && git add -A && git -c user.name=check -c user.email=check@localhost commit -q --allow-empty -m edit); }

echo "== modern-nix setup"
"$mn" setup >"$work/setup.log" 2>&1 || { tail -5 "$work/setup.log"; echo "FAIL modern-nix setup"; exit 1; }
echo "  $(tail -1 "$work/setup.log")"

test_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExwi18bVHJverTaeZVethuSfQ8ZW6L7P39CZ4RB37Tk x0x-check-nix-modern-throwaway"

echo "== 1. modern-nix check, hosts/authorized_keys + one throwaway test key"
snapshot "$work/with-key"
echo "$test_key" >>"$work/with-key/hosts/authorized_keys"
recommit "$work/with-key"
echo "  test key: $test_key"
(cd "$work/with-key" && "$mn" check) >"$work/check.out" 2>&1
rc=$?
sed 's/^/  /' "$work/check.out"
if [ $rc = 0 ] && [ "$(grep -c '^PASS nixosConfigurations\.saorsa-' "$work/check.out")" = 6 ]; then
  pass "modern-nix check (lock, crane hash, all outputs, 6 hosts with no failed assertion)"
else
  fail "modern-nix check"
fi

# The stand-in nixpkgs flake, with nixpkgs' lib and the harness next to it.
harness() { # DIR: put scripts/nix/harness into DIR/.x0x-harness (inside the chroot's view)
  local h=$1/.x0x-harness
  rm -rf "$h" && mkdir -p "$h"
  cp -r scripts/nix/harness/. "$h/"
  cp -r "$NIX_ROOT/x0x/inputs/nixpkgs.lib/lib" "$h/lib"
  cp -r "$NIX_ROOT/x0x/inputs/nixos-eval" "$h/nixos-eval"
}
crane_hash=$(python3 -c 'import json;print(json.load(open("flake.lock"))["nodes"]["crane"]["locked"]["narHash"])')
nix_eval() { # DIR ATTR: nix eval --json of ATTR in the snapshot DIR, nixpkgs = its harness
  (cd "$1" && "$mn" run nix eval --json --offline --no-write-lock-file \
    --override-input crane "path:/x0x/inputs/crane?narHash=$crane_hash" \
    --override-input nixpkgs path:/x0x/project/.x0x-harness "$2")
}

echo "== 2. no SSH key: every host refuses to evaluate"
snapshot "$work/no-key"
grep '^#' hosts/authorized_keys >"$work/no-key/hosts/authorized_keys" || true
recommit "$work/no-key"
harness "$work/no-key"
for h in saorsa-2 saorsa-3 saorsa-6 saorsa-7 saorsa-8 saorsa-9; do
  if nix_eval "$work/no-key" ".#nixosConfigurations.$h.failed" >"$work/failed.json" 2>"$work/failed.err" &&
    grep -q "no SSH key for root" "$work/failed.json"; then
    pass "$h without a root key: failed assertion \"no SSH key for root\""
  else
    cat "$work/failed.json" "$work/failed.err" | head -5 | sed 's/^/  /'
    fail "$h without a root key evaluates without the lock-out assertion"
  fi
done

echo "== 3. the VM tests' nodes"
harness "$work/with-key"
if ! command -v pyflakes3 >/dev/null && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pyflakes3 >/dev/null 2>&1 || true
fi
for t in vm-mesh vm-deploy; do
  if ! nix_eval "$work/with-key" ".#checks.x86_64-linux.$t" >"$work/$t.json" 2>"$work/$t.err"; then
    grep -m3 -iE 'error|assert' "$work/$t.err" | sed 's/^/  /'
    fail "$t: does not evaluate"
    continue
  fi
  if python3 - "$t" "$work/$t.json" "$work/$t.py" <<'EOF'; then
import json, re, sys
name, path, script = sys.argv[1:]
t = json.load(open(path))
nodes = t["nodes"]
problems = []
for n, r in sorted(nodes.items()):
    if r["failed"]:
        problems.append(f"{n}: failed assertions: {r['failed']}")
x0x = {n: r for n, r in nodes.items() if r["x0x"] and r["x0x"].get("enable")}
for n, r in sorted(x0x.items()):
    s = r["x0x"]["settings"]
    e = r["unit"]["serviceConfig"]["ExecStart"]
    print(f"  {n}: listen {s['listen']}, {len(s['peers'])} peers {' '.join(s['peers'])}; "
          f"{'identityFile ' + r['x0x']['identityFile'] if r['x0x'].get('identityFile') else 'key in the state dir'}; "
          f"udp {r['firewall']['allowedUDPPorts']} tcp {r['firewall']['allowedTCPPorts']}; tcp relay {s['tcp']['listen']}; "
          f"root keys {len(r['rootKeys'])}")
    if s["tcp"]["listen"] != "[::]:443" or 443 not in r["firewall"]["allowedTCPPorts"]:
        problems.append(f"{n}: no TCP relay on 443")
    if not r["rootKeys"]:
        problems.append(f"{n}: no root key")
    if "--config /nix/store/" not in e:
        problems.append(f"{n}: ExecStart {e}")
    if not all(re.fullmatch(r"192\.168\.1\.\d+:12000", p) for p in s["peers"]):
        problems.append(f"{n}: peers outside the test network: {s['peers']}")
if name == "vm-mesh":
    if sorted(nodes) != ["alice", "bob", "saorsa-2", "saorsa-3", "saorsa-6", "saorsa-7", "saorsa-8", "saorsa-9"]:
        problems.append(f"nodes {sorted(nodes)}")
    if len(x0x) != 6 or any(len(r["x0x"]["settings"]["peers"]) != 5 for r in x0x.values()):
        problems.append("not six nodes with five peers each")
    addrs = {n: r["x0x"]["settings"]["peers"] for n, r in x0x.items()}
    allpeers = set(p for ps in addrs.values() for p in ps)
    if allpeers != {f"192.168.1.{i}:12000" for i in range(3, 9)}:
        problems.append(f"peer addresses {sorted(allpeers)} are not 192.168.1.3-8 (the driver's numbering)")
    if nodes["saorsa-9"]["unit"]["serviceConfig"]["LoadCredential"] != ["node-key:/var/lib/x0x-keys/node.pem"]:
        problems.append("saorsa-9 does not load its identityFile")
else:
    if sorted(nodes) != ["deployer", "target"] or len(x0x) != 1:
        problems.append(f"nodes {sorted(nodes)}")
    if x0x and x0x["target"]["x0x"]["settings"]["peers"] != []:
        problems.append("the target has peers")
open(script, "w").write(t["testScript"])
try:
    compile(t["testScript"], f"{name} testScript", "exec")
except SyntaxError as e:
    problems.append(f"test script: {e}")
for p in problems:
    print(f"  problem: {p}")
sys.exit(1 if problems else 0)
EOF
    pass "$t: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["nodes"]))' "$work/$t.json") nodes evaluate, no failed assertion, settings as above; test script compiles"
  else
    fail "$t: node configurations"
  fi
  if command -v pyflakes3 >/dev/null; then
    # The driver's globals, and one variable per node, as the test driver defines them.
    nodes=$(python3 -c 'import json,sys; print(" ".join(n.replace("-", "_") for n in json.load(open(sys.argv[1]))["nodes"]))' "$work/$t.json")
    { echo "from typing import Any"
      for g in start_all subtest machines driver $nodes; do echo "$g: Any = None"; done
      cat "$work/$t.py"; } >"$work/$t-full.py"
    if out=$(pyflakes3 "$work/$t-full.py" 2>&1); then
      pass "$t: test script is pyflakes-clean (undefined names, unused variables)"
    else
      sed 's/^/  /' <<<"$out"
      fail "$t: pyflakes"
    fi
  else
    fail "$t: pyflakes3 is not installed (apt-get install pyflakes3)"
  fi
done

echo "== 4. the real hosts: TCP relay on 443 and IPv6 from the inventory"
snapshot "$work/ipv6"
echo "$test_key" >>"$work/ipv6/hosts/authorized_keys"
python3 - "$work/ipv6/hosts/inventory.toml" <<'EOF'
import re, sys
p = sys.argv[1]
text = open(p).read()
extra = {"saorsa-6": 'ipv6 = "2001:db8:6::2"\nipv6_prefix_length = 64\nipv6_gateway = "fe80::1"',
         "saorsa-8": 'ipv6 = "2001:db8:8::2"'}
for name, lines in extra.items():
    text, n = re.subn(r'(name = "%s"\n(?:(?!\[\[node\]\]).*\n)*?)# ipv6 = .*\n' % name, lambda m: m.group(1) + lines + "\n", text)
    assert n == 1, name
open(p, "w").write(text)
EOF
recommit "$work/ipv6"
harness "$work/ipv6"
apply='cs: builtins.mapAttrs (_: r: {
  inherit (r) failed firewall;
  settings = r.services.x0x-bootstrap.settings;
  socket = r.systemd.sockets.x0x-bootstrap or null;
  networks = r.systemd.network.networks;
}) cs'
if (cd "$work/ipv6" && "$mn" run nix eval --json --offline --no-write-lock-file \
  --override-input crane "path:/x0x/inputs/crane?narHash=$crane_hash" \
  --override-input nixpkgs path:/x0x/project/.x0x-harness .#nixosConfigurations --apply "$apply") \
  >"$work/hosts.json" 2>"$work/hosts.err"; then
  python3 - "$work/hosts.json" <<'EOF'
import json, sys
hosts = json.load(open(sys.argv[1]))
want_v6 = {"saorsa-6": ("2001:db8:6::2/64", "fe80::1", False), "saorsa-8": ("2001:db8:8::2/64", None, True)}
problems = []
for name in ["saorsa-2", "saorsa-3", "saorsa-6", "saorsa-7", "saorsa-8", "saorsa-9"]:
    r = hosts[name]
    s, fw, sock = r["settings"], r["firewall"], r["socket"] or {}
    net = r["networks"]["10-eth0"]
    v6 = [a for a in net["address"] if ":" in a]
    gws = [x["Gateway"] for x in net.get("routes", [])]
    ra = net["networkConfig"]["IPv6AcceptRA"]
    fd = sock.get("socketConfig", {}).get("FileDescriptorName")
    print(f"  {name}: quic {s['listen']}, tcp relay {s['tcp']['listen']} on socket {sock.get('listenStreams')} fd {fd}; "
          f"udp {fw['allowedUDPPorts']} tcp {fw['allowedTCPPorts']}; eth0 {' '.join(net['address'])} via {' '.join(gws)}, RA {ra}")
    if r["failed"]:
        problems.append(f"{name}: failed assertions {r['failed']}")
    if s["listen"] != "[::]:12000" or s["tcp"]["listen"] != "[::]:443":
        problems.append(f"{name}: listen {s['listen']} / tcp {s['tcp']['listen']}")
    if sock.get("listenStreams") != ["[::]:443"] or fd != "tcp":
        problems.append(f"{name}: relay socket {sock}")
    if 443 not in fw["allowedTCPPorts"] or 12000 not in fw["allowedUDPPorts"]:
        problems.append(f"{name}: firewall tcp {fw['allowedTCPPorts']} udp {fw['allowedUDPPorts']}")
    if name in want_v6:
        addr, gw, want_ra = want_v6[name]
        if v6 != [addr] or ra != want_ra or (gw and gw not in gws) or (not gw and any(":" in g for g in gws)):
            problems.append(f"{name}: IPv6 {v6}, gateways {gws}, RA {ra}; wanted {addr}, {gw}, RA {want_ra}")
    elif v6 or ra or any(":" in g for g in gws):
        problems.append(f"{name}: IPv6 configured without an inventory ipv6: {v6} {gws} RA {ra}")
for p in problems:
    print(f"  problem: {p}")
sys.exit(1 if problems else 0)
EOF
  # shellcheck disable=SC2181
  [ $? = 0 ] && pass "6 hosts: TCP relay on [::]:443 (socket fd 'tcp'; TCP 443 and UDP 12000 open), QUIC on [::]; IPv6 on eth0 exactly where the inventory has it (gateway or RA)" ||
    fail "the real hosts' TCP relay and IPv6"
else
  grep -m3 -iE 'error|assert' "$work/hosts.err" | sed 's/^/  /'
  fail "nixosConfigurations with IPv6 in the inventory do not evaluate"
fi

echo
echo "check-nix-modern: $passes passed, $fails failed ($((SECONDS - started)) s)"
[ $fails = 0 ]
