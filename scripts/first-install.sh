#!/usr/bin/env bash
# First install of NixOS on one of the existing bootstrap VPS, with nixos-infect (why not
# nixos-anywhere: docs/NIX.md, "First install"):
#
#   scripts/first-install.sh [OPTIONS] NAME
#
#   1. preflight: NAME is in the inventory, hosts/authorized_keys has a key;
#   2. adopt the machine as it is (scripts/adopt-host.sh): it must not be NixOS yet, and
#      the inventory must agree with it;
#   3. add the operators' keys to root's authorized_keys on the machine (nixos-infect
#      copies that file into the NixOS it installs);
#   4. back up the node key (/var/lib/x0x-bootstrap/node.key, if there) to --key-backup,
#      and compare checksums;
#   5. download nixos-infect at a pinned commit, check its sha256, upload it;
#   6. phase 1, nothing installed yet: nixos-infect with NO_INFECT=1 writes only
#      /etc/nixos/{configuration,hardware-configuration,networking}.nix; set
#      system.stateVersion to the release the flake pins (nixos-infect writes "23.11");
#      keep /var/lib/x0x-bootstrap across the switch (NIXOS_LUSTRATE); copy the generated
#      files back and check them against the adopted facts (addresses, gateway, disk).
#      A mismatch stops here, with the machine unchanged except for /etc/nixos;
#   7. phase 2: nixos-infect installs Nix and that NixOS, and stages the switch;
#   8. reboot, wait for SSH;
#   9. adopt again: now NixOS, with its stateVersion; the node key is still there.
#   Then `scripts/deploy.sh NAME` replaces nixos-infect's configuration with the node's,
#   with the rollback armed (--min-peers 0 for the first nodes of a fleet).
#
# Options:
#   --print-plan          print the steps and commands; connect to nothing
#   --yes                 really do it (without it, stop after the preflight and adoption)
#   --target USER@ADDR    SSH destination (default root@<inventory ipv4>)
#   --authorized-keys F   default hosts/authorized_keys
#   --key-backup DIR      where the node key is backed up (default ~/x0x-node-keys, mode 0700)
#   --ssh-option OPT      extra `ssh -o OPT` (repeatable)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
fleet() { python3 "$here/fleet.py" "$@"; }

# nixos-infect, pinned: commit and sha256 of its `nixos-infect` file at that commit
# (computed from a clone of github.com/elitak/nixos-infect).
INFECT_COMMIT=7563801d3ae68c975e4027f4e31a3906dca95f30
INFECT_SHA256=4cc3b5f8e4333ab4f02906d80a836c1b36e2887a51abf4eba4d9113b33934393
INFECT_URL=https://raw.githubusercontent.com/elitak/nixos-infect/$INFECT_COMMIT/nixos-infect

plan=0 yes=0 name='' target='' keys_file=$repo/hosts/authorized_keys key_backup=${HOME:-/root}/x0x-node-keys
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10)
while [ $# -gt 0 ]; do
  case $1 in
    --print-plan) plan=1 ;;
    --yes) yes=1 ;;
    --target) target=$2; shift ;;
    --authorized-keys) keys_file=$2; shift ;;
    --key-backup) key_backup=$2; shift ;;
    --ssh-option) ssh_opts+=(-o "$2"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "first-install: unknown option $1" >&2; exit 2 ;;
    *) name=$1 ;;
  esac
  shift
done
[ -n "$name" ] || { echo "first-install: which node?" >&2; exit 2; }
fleet get "$name" name >/dev/null || exit 2
[ -n "$target" ] || target=$(fleet target "$name")

# The release the flake pins: nixos-26.05 -> channel nixos-26.05, stateVersion 26.05.
channel=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"]["nixpkgs"]["original"]["ref"])' "$repo/flake.lock")
release=${channel#nixos-}
case $(fleet get "$name" provider) in
  DigitalOcean) provider=digitalocean ;;
  Hetzner) provider=hetznercloud ;;
  *) provider='' ;; # Vultr: nixos-infect's default (DHCP), replaced by the adopted facts at deploy
esac
infect_env="NIX_CHANNEL=$channel NO_REBOOT=1${provider:+ PROVIDER=$provider}"

say() { printf '[%s] %s\n' "$name" "$*" >&2; }
step() { say "step $*"; }
on_host() { # CMD: run a shell command line on the machine
  if [ $plan = 1 ]; then printf '    $ ssh %s %s\n' "$target" "$1" >&2; return 0; fi
  # shellcheck disable=SC2029 # the command line is meant to run on the machine
  ssh "${ssh_opts[@]}" "$target" "$1"
}
local_run() { if [ $plan = 1 ]; then printf '    $ %s\n' "$*" >&2; else "$@"; fi; }

step "1/9 preflight"
keys=$(fleet keys "$keys_file") || { say "REFUSED: $keys_file has lines that are not public keys"; exit 2; }
if [ "$keys" = 0 ]; then
  say "REFUSED: no SSH authorized key configured ($keys_file lists none): the installed NixOS"
  say "would let nobody in. Add the operators' public keys first."
  exit 2
fi
say "target $target, $keys operator key(s), nixos-infect $INFECT_COMMIT, $channel (stateVersion $release)"

step "2/9 adopt the machine as it is"
if [ $plan = 1 ]; then
  "$here/adopt-host.sh" --print-plan --target "$target" "$name" | sed 's/^/    /' >&2
else
  "$here/adopt-host.sh" --target "$target" "$name" || { say "adoption failed or the inventory disagrees: stopping"; exit 2; }
  case $(fleet facts "$repo/hosts/facts/$name.json") in
    "adopted nixos") say "already NixOS: use scripts/deploy.sh $name"; exit 2 ;;
  esac
fi
if [ $plan = 0 ] && [ $yes = 0 ]; then
  say "adopted; nothing was changed on the machine. Run again with --yes to install NixOS."
  exit 0
fi

step "3/9 the operators' keys in root's authorized_keys"
if [ $plan = 1 ]; then
  on_host "umask 077; mkdir -p /root/.ssh; cat >>/root/.ssh/authorized_keys  # the keys not there yet"
else
  grep -vE '^\s*(#|$)' "$keys_file" | ssh "${ssh_opts[@]}" "$target" \
    'umask 077; mkdir -p /root/.ssh; touch /root/.ssh/authorized_keys; while read -r k; do grep -qxF "$k" /root/.ssh/authorized_keys || echo "$k" >>/root/.ssh/authorized_keys; done'
fi

step "4/9 back up the node key"
if [ $plan = 1 ]; then
  on_host "test -f /var/lib/x0x-bootstrap/node.key && cat /var/lib/x0x-bootstrap/node.key  # > $key_backup/$name.node.key (0600), sha256 compared"
elif on_host "test -f /var/lib/x0x-bootstrap/node.key"; then
  (umask 077; mkdir -p "$key_backup"; on_host "cat /var/lib/x0x-bootstrap/node.key" >"$key_backup/$name.node.key")
  remote_sum=$(on_host "sha256sum /var/lib/x0x-bootstrap/node.key" | cut -d' ' -f1)
  [ "$remote_sum" = "$(sha256sum <"$key_backup/$name.node.key" | cut -d' ' -f1)" ] ||
    { say "the key backup does not match the node's key: stopping"; exit 2; }
  say "node key backed up to $key_backup/$name.node.key"
else
  say "no /var/lib/x0x-bootstrap/node.key on the machine: the node gets a new key (and peer_id) on first start"
fi

step "5/9 nixos-infect $INFECT_COMMIT (sha256 $INFECT_SHA256)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
local_run curl -fsSL -o "$tmp/nixos-infect" "$INFECT_URL"
if [ $plan = 0 ]; then
  [ "$(sha256sum <"$tmp/nixos-infect" | cut -d' ' -f1)" = "$INFECT_SHA256" ] ||
    { say "nixos-infect does not have the pinned sha256: stopping"; exit 2; }
  scp "${ssh_opts[@]}" -q "$tmp/nixos-infect" "$target:/root/nixos-infect"
else
  printf '    $ scp nixos-infect %s:/root/nixos-infect   # after checking its sha256\n' "$target" >&2
fi

step "6/9 phase 1: generate /etc/nixos only (NO_INFECT=1), set stateVersion $release, keep the node key"
on_host "test ! -e /etc/nixos/configuration.nix || { echo '/etc/nixos/configuration.nix exists: a previous attempt? remove it to start over' >&2; exit 1; }"
on_host "$infect_env NO_INFECT=1 NO_SWAP=1 bash /root/nixos-infect >/root/nixos-infect-phase1.log 2>&1"
on_host "sed -i 's/system.stateVersion = \"[0-9.]*\";/system.stateVersion = \"$release\";/' /etc/nixos/configuration.nix && grep -q 'system.stateVersion = \"$release\";' /etc/nixos/configuration.nix"
on_host "echo var/lib/x0x-bootstrap >>/etc/NIXOS_LUSTRATE"
mkdir -p "$tmp/generated"
if [ $plan = 0 ]; then
  for f in configuration hardware-configuration networking; do
    on_host "cat /etc/nixos/$f.nix 2>/dev/null" >"$tmp/generated/$f.nix" || true
  done
  mkdir -p "$key_backup" && cp -r "$tmp/generated" "$key_backup/$name-nixos-infect"
  python3 - "$repo/hosts/facts/$name.json" "$tmp/generated" <<'EOF' || { say "nixos-infect's configuration disagrees with the adopted facts (above): stopping before anything is installed; remove /etc/nixos on the machine to undo"; exit 2; }
import json, pathlib, re, sys
facts = json.load(open(sys.argv[1]))
gen = "\n".join(p.read_text() for p in pathlib.Path(sys.argv[2]).glob("*.nix"))
# nixos-infect's networking.nix (DigitalOcean, Hetzner) lists the first NIC's addresses
# and the gateway; its hardware-configuration.nix the root device and, on BIOS, the disk.
want = [facts["root"]["device"]]
if facts["firmware"] == "bios":
    want.append(re.sub(r"p?[0-9]+$", "", facts["root"]["device"]))
if "networking.nix" in {p.name for p in pathlib.Path(sys.argv[2]).glob("*.nix") if p.stat().st_size}:
    want += [a.split("/")[0] for a in facts["interfaces"][0]["addresses"] if "." in a]
    want += [r["gateway"] for r in facts["routes"] if "." in r["gateway"]]
missing = [w for w in want if w and w not in gen]
for w in missing:
    print(f"  not in nixos-infect's files: {w}", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF
  say "nixos-infect's files agree with the adopted facts (copies in $key_backup/$name-nixos-infect)"
else
  printf '    $ ssh %s cat /etc/nixos/{configuration,hardware-configuration,networking}.nix   # compared with the adopted facts\n' "$target" >&2
fi

step "7/9 phase 2: install Nix and NixOS $release, stage the switch (this takes a while)"
on_host "$infect_env bash -x /root/nixos-infect >/root/nixos-infect.log 2>&1 || { tail -20 /root/nixos-infect.log >&2; exit 1; }"

step "8/9 reboot into NixOS, wait for SSH"
on_host "systemctl reboot || reboot" || true
if [ $plan = 0 ]; then
  sleep 20
  deadline=$((SECONDS + 900))
  until ssh "${ssh_opts[@]}" "$target" 'grep -q "^ID=nixos" /etc/os-release' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { say "no SSH to a NixOS on $target after 15 minutes: use the provider's console"; exit 3; }
    sleep 10
  done
  say "$target is up and runs NixOS"
else
  printf '    until ssh %s grep -q ^ID=nixos /etc/os-release (at most 15 min)\n' "$target" >&2
fi

step "9/9 adopt again (NixOS, stateVersion $release), check the node key"
if [ $plan = 1 ]; then
  "$here/adopt-host.sh" --print-plan --target "$target" "$name" | sed 's/^/    /' >&2
  on_host "sha256sum /var/lib/x0x-bootstrap/node.key   # = the backup's, when there was one"
else
  "$here/adopt-host.sh" --target "$target" "$name" || exit 2
  if [ -f "$key_backup/$name.node.key" ]; then
    remote_sum=$(on_host "sha256sum /var/lib/x0x-bootstrap/node.key 2>/dev/null" | cut -d' ' -f1) || remote_sum=''
    if [ "$remote_sum" != "$(sha256sum <"$key_backup/$name.node.key" | cut -d' ' -f1)" ]; then
      say "the node key did not survive: restoring it from the backup"
      on_host "install -d -m 0700 /var/lib/x0x-bootstrap && umask 077 && cat >/var/lib/x0x-bootstrap/node.key" <"$key_backup/$name.node.key"
    fi
  fi
fi
say "installed. Next: scripts/deploy.sh $name   (add --min-peers 0 while the other nodes are not on NixOS yet)"
[ $plan = 0 ] || say "plan only: nothing was run"
