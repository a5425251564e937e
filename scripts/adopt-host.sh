#!/usr/bin/env bash
# Read a node's real facts off the machine and write them into hosts/facts/NAME.json, which
# hosts/hardware.nix and hosts/network.nix build the node's configuration from:
#
#   scripts/adopt-host.sh [OPTIONS] NAME
#
# Over one SSH connection it runs a read-only collector (scripts/adopt_facts.py collector:
# uname, /sys/firmware/efi, ip -j link/addr/route (v4 and v6), lsblk -J, findmnt -J,
# /proc/swaps, /dev/disk/by-id, the resolvers, /etc/os-release, the stateVersion in
# /etc/nixos, MemTotal), keeps that raw capture as hosts/facts/NAME.capture.txt, and turns
# it into facts with scripts/adopt_facts.py (firmware mode; root and EFI file systems by
# UUID or label; the GRUB disk; every NIC by MAC with its static addresses, the default
# routes (on-link where the gateway lies outside the prefix), router advertisements where
# the provider uses them; resolvers; stateVersion). It refuses a machine it cannot describe
# safely (root without UUID or label, no IPv4 default route, a capture cut short) and then
# compares the facts with the node's hosts/inventory.toml entry.
#
# Options:
#   --target USER@ADDR    SSH destination (default root@<inventory ipv4>)
#   --capture FILE        parse this capture instead of connecting (tests, re-parsing)
#   --out DIR             where to write NAME.json and NAME.capture.txt (default hosts/facts)
#   --print-plan          say what would be run; connect to nothing
#   --ssh-option OPT      extra `ssh -o OPT` (repeatable)
#
# Exit codes: 0 adopted, inventory agrees; 1 refused (nothing written); 2 usage or no SSH;
# 3 adopted, but the inventory disagrees with the machine (fix hosts/inventory.toml: the
# NixOS evaluation fails until it matches).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

name='' target='' capture='' out=$repo/hosts/facts plan=0
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10)
while [ $# -gt 0 ]; do
  case $1 in
    --target) target=$2; shift ;;
    --capture) capture=$2; shift ;;
    --out) out=$2; shift ;;
    --print-plan) plan=1 ;;
    --ssh-option) ssh_opts+=(-o "$2"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "adopt: unknown option $1" >&2; exit 2 ;;
    *) name=$1 ;;
  esac
  shift
done
[ -n "$name" ] || { echo "adopt: which node? (a name from hosts/inventory.toml)" >&2; exit 2; }
python3 "$here/fleet.py" get "$name" name >/dev/null || exit 2
[ -n "$target" ] || target=$(python3 "$here/fleet.py" target "$name")

facts=$out/$name.json
raw=$out/$name.capture.txt
if [ $plan = 1 ]; then
  echo "adopt $name from $target:"
  echo "  ssh ${ssh_opts[*]} $target sh -s < (scripts/adopt_facts.py collector)   # read-only"
  echo "  -> $raw (raw capture), $facts (facts), then compare with hosts/inventory.toml"
  exit 0
fi

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$capture" ]; then
  cp "$capture" "$tmp/capture.txt"
else
  echo "adopt: reading $name's facts from $target (read-only)" >&2
  python3 "$here/adopt_facts.py" collector | ssh "${ssh_opts[@]}" "$target" sh -s >"$tmp/capture.txt" ||
    { echo "adopt: the collector failed on $target" >&2; exit 2; }
fi

at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
python3 "$here/adopt_facts.py" parse --name "$name" --capture "$tmp/capture.txt" --from "$target" --at "$at" \
  --previous "$facts" >"$tmp/facts.json" || exit 1
cp "$tmp/capture.txt" "$raw"
cp "$tmp/facts.json" "$facts"
echo "adopt: wrote $facts (and the raw capture $raw)" >&2
python3 - "$facts" <<'EOF' >&2
import json, sys
f = json.load(open(sys.argv[1]))
print(f"  {f['adopted']['os']}, {f['system']}, {f['firmware']} boot, root {f['root']['fstype']} "
      f"uuid={f['root']['uuid']} label={f['root']['label']}, stateVersion {f['state_version']}")
for i in f["interfaces"]:
    print(f"  {i['name']} {i['mac']}: {' '.join(i['addresses'] + i['dynamic_addresses'])}"
          + (" (IPv6 by RA)" if i["ipv6_accept_ra"] else ""))
for r in f["routes"]:
    print(f"  default via {r['gateway']} dev {r['interface']}" + (" onlink" if r["onlink"] else ""))
print(f"  resolvers {' '.join(f['resolvers'])}; {f['note']}")
EOF
if ! python3 "$here/adopt_facts.py" check-inventory --facts "$facts" --inventory "${X0X_INVENTORY:-$repo/hosts/inventory.toml}" >&2; then
  echo "adopt: hosts/inventory.toml disagrees with the machine (above): correct it; the NixOS evaluation of $name fails until it does" >&2
  exit 3
fi
echo "adopt: $name agrees with hosts/inventory.toml" >&2
