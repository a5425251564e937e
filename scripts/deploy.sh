#!/usr/bin/env bash
# Deploy the NixOS configuration of one bootstrap node, or of the whole fleet one node at a
# time, so that a bad configuration cannot lock anyone out:
#
#   scripts/deploy.sh [OPTIONS] HOST        one node of hosts/inventory.toml
#   scripts/deploy.sh [OPTIONS] --all       every node, in inventory order; stops at the first failure
#
# For each node:
#   1. preflight, here: the node is in the inventory, hosts/authorized_keys has a key, its
#      facts were adopted from the machine and it runs NixOS (scripts/first-install.sh);
#   2. build nixosConfigurations.HOST (here, or on --build-host: a Linux builder);
#   3. read the running generation and the node's /health (its peer_id);
#   4. copy the closure to the node; check that the new system has root's SSH key;
#   5. arm the rollback: a transient systemd timer on the node that puts the running
#      generation back (profile and boot loader) after --rollback-after seconds unless
#      this script confirms, so that losing contact reverts by itself (deploy-rs's
#      "magic rollback");
#   6. activate without touching the boot default (switch-to-configuration test, what
#      `nixos-rebuild test` runs);
#   7. reconnect over a NEW SSH connection (sshd, firewall and network of the new
#      generation must let us in) and wait for /health: status healthy, peers ==
#      expected_peers, the same peer_id as before (the node key survived);
#   8. make it the boot default (nix-env --set + switch-to-configuration switch, what
#      `nixos-rebuild switch` runs), reconnect, check /health again;
#   9. confirm: stop the rollback timer.
#   Any failure after 5 reverts at once if the node is reachable, else waits for the timer
#   and checks that the node came back on its previous generation.
#
# Options:
#   --print-plan          print every step and command; connect to nothing, build nothing
#   --target USER@ADDR    SSH destination (default root@<inventory ipv4>)
#   --build-host HOST     build on this Linux machine (ssh-ng store); default: here
#   --flake REF           the flake (default: this repository)
#   --attr NAME           nixosConfigurations.NAME (default HOST)
#   --toplevel PATH       deploy this already built system instead of building (VM test)
#   --rollback-after S    seconds before the node reverts by itself (default 600)
#   --health-timeout S    seconds to wait for a healthy /health (default 180)
#   --min-peers N         accept N connected peers instead of all (first roll-out of a fleet
#                         whose other nodes are not up yet)
#   --authorized-keys F   the keys file the preflight checks (default hosts/authorized_keys)
#   --facts-dir DIR       where the adopted facts are (default hosts/facts)
#   --allow-unadopted     deploy a node whose facts were never read off the machine (not
#                         for the fleet: its disks and network would be guesses)
#   --health-port P       default: the inventory's health_port, else 12600
#   --ssh-option OPT      extra `ssh -o OPT` (repeatable)
#
# Exit codes: 0 deployed and confirmed; 1 failed and reverted (or reverting by itself);
# 2 refused before touching the node; 3 failed and the revert could not be confirmed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
fleet() { python3 "$here/fleet.py" "$@"; }

plan=0 all=0 host='' target='' build_host='' flake=$repo attr='' toplevel=''
rollback_after=600 health_timeout=180 min_peers='' keys_file=$repo/hosts/authorized_keys
facts_dir=$repo/hosts/facts allow_unadopted=0 health_port_opt='' health_port='' current='' dest='' prev='' armed_at=0
# Test seams (scripts/check-deploy.sh drives this script against simulated nodes):
# X0X_DEPLOY_SSH / X0X_DEPLOY_NIX replace ssh / nix, X0X_DEPLOY_POLL the polling interval,
# X0X_DEPLOY_MIN_ROLLBACK the lowest accepted --rollback-after, X0X_DEPLOY_GRACE how long
# past the node's own deadline to wait for it to come back.
ssh_cmd=${X0X_DEPLOY_SSH:-ssh} nix_cmd=${X0X_DEPLOY_NIX:-nix}
poll=${X0X_DEPLOY_POLL:-3} min_rollback=${X0X_DEPLOY_MIN_ROLLBACK:-60} grace=${X0X_DEPLOY_GRACE:-90}
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3)
while [ $# -gt 0 ]; do
  case $1 in
    --print-plan) plan=1 ;;
    --all) all=1 ;;
    --target) target=$2; shift ;;
    --build-host) build_host=$2; shift ;;
    --flake) flake=$2; shift ;;
    --attr) attr=$2; shift ;;
    --toplevel) toplevel=$2; shift ;;
    --rollback-after) rollback_after=$2; shift ;;
    --health-timeout) health_timeout=$2; shift ;;
    --min-peers) min_peers=$2; shift ;;
    --authorized-keys) keys_file=$2; shift ;;
    --facts-dir) facts_dir=$2; shift ;;
    --allow-unadopted) allow_unadopted=1 ;;
    --health-port) health_port_opt=$2; shift ;;
    --ssh-option) ssh_opts+=(-o "$2"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "deploy: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$host" ] || { echo "deploy: one HOST, or --all" >&2; exit 2; }; host=$1 ;;
  esac
  shift
done
if [ $all = 1 ]; then
  [ -z "$host$target$attr$toplevel" ] || { echo "deploy: --all takes no HOST, --target, --attr or --toplevel" >&2; exit 2; }
else
  [ -n "$host" ] || { echo "deploy: which HOST? (or --all)" >&2; exit 2; }
fi
for v in "$rollback_after" "$health_timeout"; do case $v in "" | *[!0-9]*) echo "deploy: --rollback-after and --health-timeout want seconds" >&2; exit 2 ;; esac; done
# The node must not revert by itself while this script still waits for /health (twice).
[ "$rollback_after" -ge $((2 * health_timeout + min_rollback)) ] || {
  echo "deploy: --rollback-after must be at least 2 x --health-timeout + $min_rollback s ($((2 * health_timeout + min_rollback)))" >&2
  exit 2
}

say() { printf '[%s] %s\n' "${current:-deploy}" "$*" >&2; }
# In --print-plan mode every command is printed, not run.
step() { say "step $*"; }
run() { if [ $plan = 1 ]; then printf '    $ %s\n' "$*" >&2; else "$@"; fi; }
ssh_fresh() { "$ssh_cmd" "${ssh_opts[@]}" -o ControlPath=none "$@"; }
remote() { # SCRIPT ARGS...: run a POSIX sh script on the node, over a new SSH connection
  local script=$1; shift
  if [ $plan = 1 ]; then
    printf '    $ ssh %s sh -s -- %s <<< %s\n' "$dest" "$*" "$(printf '%s' "$script" | head -1)" >&2
    return 0
  fi
  ssh_fresh "$dest" sh -s -- "$@" <<<"$script"
}

# --- the scripts run on the node ---------------------------------------------------------
# Current generation, and /health (empty if the node does not answer).
read -r -d '' R_STATE <<'EOF' || true
# state: print the running system and the node's /health
set -u
readlink -f /run/current-system
curl -s --max-time 3 "http://127.0.0.1:$1/health" || true
EOF

# Arm the rollback. $1 = the generation to return to, $2 = seconds.
read -r -d '' R_ARM <<'EOF' || true
# arm: the node returns to $1 by itself after $2 s unless the deploy confirms
set -eu
prev=$1 after=$2 unit=x0x-deploy-rollback
if systemctl is-active --quiet "$unit.timer"; then
  echo "a rollback armed by an earlier deploy is still pending ($(systemctl show -P NextElapseUSecMonotonic "$unit.timer")): let it fire or stop it first" >&2
  exit 3
fi
systemctl reset-failed "$unit.service" "$unit.timer" 2>/dev/null || true
mkdir -p /run/x0x-deploy
cat >/run/x0x-deploy/rollback <<ROLLBACK
# Written by scripts/deploy.sh: back to $prev (profile, boot loader, running system).
set -eu
p=$prev
if [ "\$(readlink -f /nix/var/nix/profiles/system)" != "\$p" ]; then
  "\$p/sw/bin/nix-env" -p /nix/var/nix/profiles/system --set "\$p"
fi
"\$p/bin/switch-to-configuration" switch || true
echo "x0x deploy: rolled back to \$p"
ROLLBACK
systemd-run --unit="$unit" --description="x0x deploy: return to $prev unless confirmed" \
  --on-active="${after}s" --timer-property=AccuracySec=1s \
  --property=Type=oneshot --property=TimeoutStartSec=600 \
  "$prev/sw/bin/sh" /run/x0x-deploy/rollback
systemctl is-active --quiet "$unit.timer"
echo "armed: $unit.timer fires in ${after}s"
EOF

# Activate $1 without making it the boot default (nixos-rebuild test).
read -r -d '' R_TEST <<'EOF' || true
# test: activate $1, boot default unchanged
set -eu
"$1/bin/switch-to-configuration" test
EOF

# Make $1 the boot default and activate it (nixos-rebuild switch).
read -r -d '' R_SWITCH <<'EOF' || true
# switch: $1 becomes the boot default
set -eu
nix-env -p /nix/var/nix/profiles/system --set "$1"
"$1/bin/switch-to-configuration" switch
EOF

# Revert now: start the armed unit (it keeps running if this SSH session dies; if it is
# gone, run its script here), then disarm. Stopping the timer first would let systemd
# garbage-collect the transient service before it could be started.
read -r -d '' R_REVERT <<'EOF' || true
# revert: run the armed rollback now
set -u
systemctl start x0x-deploy-rollback.service || sh /run/x0x-deploy/rollback
systemctl stop x0x-deploy-rollback.timer 2>/dev/null || true
readlink -f /run/current-system
EOF

read -r -d '' R_CONFIRM <<'EOF' || true
# confirm: disarm the rollback
set -eu
systemctl stop x0x-deploy-rollback.timer
systemctl reset-failed x0x-deploy-rollback.service x0x-deploy-rollback.timer 2>/dev/null || true
! systemctl is-active --quiet x0x-deploy-rollback.timer
EOF

read -r -d '' R_HASKEY <<'EOF' || true
# haskey: the new system gives root an SSH key
test -s "$1/etc/ssh/authorized_keys.d/root"
EOF

# --- one node ------------------------------------------------------------------------
wait_health() { # SYSTEM PEER_ID(may be empty): poll until the node runs SYSTEM and /health is good
  local system=$1 deadline=$((SECONDS + health_timeout)) state running out verdict args=()
  [ -z "$2" ] || args+=(--peer-id "$2")
  [ -z "$min_peers" ] || args+=(--min-peers "$min_peers")
  if [ $plan = 1 ]; then
    remote "$R_STATE" "$health_port"
    printf '    until fleet.py health %s says healthy, at most %ss\n' "${args[*]}" "$health_timeout" >&2
    return 0
  fi
  while :; do
    state=$(remote "$R_STATE" "$health_port" 2>/dev/null) || state=''
    running=$(head -1 <<<"$state") out=$(tail -n +2 <<<"$state")
    if [ -n "$running" ] && [ "$running" != "$system" ]; then
      say "the node no longer runs $system but $running (its rollback fired?)"
      return 1
    fi
    if [ -n "$running" ] && verdict=$(fleet health "${args[@]}" - <<<"$out"); then say "$verdict"; return 0; fi
    [ -n "$running" ] || verdict="no SSH connection"
    [ $SECONDS -lt "$deadline" ] || { say "$verdict; giving up after ${health_timeout}s"; return 1; }
    sleep "$poll"
  done
}

# After a failure once the rollback is armed: revert now if we can reach the node, else
# let its timer do it, then check it is back on $prev.
revert() {
  local got
  say "reverting to $prev"
  if got=$(remote "$R_REVERT" | tail -1) && [ "$got" = "$prev" ]; then
    remote "$R_CONFIRM" >/dev/null 2>&1 || true
    say "reverted: the node runs $prev again"
    return 1
  fi
  local wait_until=$((armed_at + rollback_after + grace))
  local left=$((armed_at + rollback_after - SECONDS))
  [ $left -ge 0 ] || left=0
  say "cannot revert over SSH; the node reverts by itself when its timer fires (in ${left} s)"
  while [ $SECONDS -lt $wait_until ]; do
    sleep "$poll"
    if got=$(remote "$R_STATE" "$health_port" 2>/dev/null | head -1) && [ "$got" = "$prev" ]; then
      say "the node reverted by itself and is reachable again on $prev"
      return 1
    fi
  done
  say "the node did not come back on $prev within $((rollback_after + grace)) s: use the provider's console"
  return 3
}

deploy_one() { # HOST
  current=$1
  local in_inventory=1 facts state new before_id pinned_id keys
  dest=$target prev='' armed_at=0 health_port=$health_port_opt
  fleet get "$current" name >/dev/null 2>&1 || in_inventory=0

  step "1/9 preflight"
  if [ $in_inventory = 1 ]; then
    [ -n "$dest" ] || dest=$(fleet target "$current")
    [ -n "$health_port" ] || health_port=$(fleet get "$current" health_port)
  else
    [ -n "$dest" ] || { say "not in hosts/inventory.toml: give --target"; return 2; }
    [ -n "$health_port" ] || health_port=12600
  fi
  keys=$(fleet keys "$keys_file") || { say "REFUSED: $keys_file has lines that are not public keys"; return 2; }
  if [ "$keys" = 0 ]; then
    say "REFUSED: no SSH authorized key configured ($keys_file lists none). Password logins"
    say "are off on the nodes, so this deploy would lock everyone out. Add the operators' keys."
    return 2
  fi
  say "$keys SSH key(s) in $keys_file"
  if [ $in_inventory = 1 ]; then
    facts=$(fleet facts "$facts_dir/$current.json" 2>/dev/null) || facts=missing
    case $facts in
      "adopted nixos") say "facts adopted from the machine (NixOS)" ;;
      adopted*)
        say "REFUSED: $current is adopted but runs ${facts#adopted }, not NixOS: install it first (scripts/first-install.sh $current)"
        return 2 ;;
      *)
        if [ $allow_unadopted = 1 ]; then
          say "WARNING: deploying with unadopted facts (--allow-unadopted)"
        else
          say "REFUSED: hosts/facts/$current.json was never read off the machine (its disk and network"
          say "values are guesses that could leave it unbootable or unreachable): run scripts/adopt-host.sh $current"
          return 2
        fi ;;
    esac
  fi
  pinned_id=''
  [ $in_inventory = 0 ] || pinned_id=$(fleet get "$current" peer_id 2>/dev/null) || pinned_id=''
  say "target $dest, health port $health_port, rollback after ${rollback_after}s"

  step "2/9 build"
  if [ -n "$toplevel" ]; then
    new=$toplevel
    [ $plan = 1 ] || new=$(readlink -f "$toplevel")
    say "prebuilt system $new"
  else
    local store_args=()
    [ -z "$build_host" ] || store_args=(--eval-store auto --store "ssh-ng://$build_host")
    local ref="$flake#nixosConfigurations.${attr:-$current}.config.system.build.toplevel"
    if [ $plan = 1 ]; then
      run nix build --extra-experimental-features 'nix-command flakes' --no-link --print-out-paths "${store_args[@]}" "$ref"
      new=/nix/store/NEW-nixos-system
    else
      new=$("$nix_cmd" build --extra-experimental-features 'nix-command flakes' --no-link --print-out-paths "${store_args[@]}" "$ref") || { say "build failed"; return 2; }
      say "built $new"
    fi
  fi

  step "3/9 read the running generation and /health"
  if [ $plan = 1 ]; then
    remote "$R_STATE" "$health_port"
    prev=/nix/store/PREV-nixos-system before_id='(peer_id from /health, if it answers)'
  else
    state=$(remote "$R_STATE" "$health_port") || { say "cannot reach $dest over SSH"; return 2; }
    prev=$(head -1 <<<"$state")
    before_id=$(tail -n +2 <<<"$state" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("peer_id", ""))
except Exception: print("")')
    case $prev in /nix/store/*) ;; *) say "REFUSED: $dest did not report a NixOS system ($prev)"; return 2 ;; esac
    say "running $prev; node key ${before_id:-(no /health answer yet)}"
  fi
  if [ -n "$pinned_id" ]; then
    if [ $plan = 0 ] && [ -n "$before_id" ] && [ "$before_id" != "$pinned_id" ]; then
      say "REFUSED: the node's peer_id $before_id is not the inventory's $pinned_id"
      return 2
    fi
    before_id=$pinned_id
  fi

  step "4/9 copy the closure"
  local copy_from=()
  [ -z "$build_host" ] || [ -n "$toplevel" ] || copy_from=(--from "ssh-ng://$build_host")
  if [ $plan = 1 ]; then
    run env NIX_SSHOPTS="${ssh_opts[*]}" nix copy --extra-experimental-features nix-command --no-check-sigs "${copy_from[@]}" --to "ssh-ng://$dest" "$new"
  else
    NIX_SSHOPTS="${ssh_opts[*]}" "$nix_cmd" copy --extra-experimental-features nix-command --no-check-sigs "${copy_from[@]}" --to "ssh-ng://$dest" "$new" ||
      { say "copy failed"; return 2; }
  fi
  remote "$R_HASKEY" "$new" || { say "REFUSED: $new has no SSH key for root: it would lock us out"; return 2; }
  if [ $plan = 0 ] && [ "$new" = "$prev" ]; then
    say "already running $new: checking health only"
    wait_health "$new" "$before_id" || return 1
    return 0
  fi

  step "5/9 arm the rollback (${rollback_after}s)"
  remote "$R_ARM" "$prev" "$rollback_after" || { say "could not arm the rollback: not activating"; return 2; }
  armed_at=$SECONDS

  step "6/9 activate (switch-to-configuration test; the boot default stays $prev)"
  if ! remote "$R_TEST" "$new"; then
    say "activation reported failures"
    revert; return $?
  fi

  step "7/9 new SSH connection, then /health"
  if [ $plan = 0 ]; then
    local now
    now=$(remote "$R_STATE" "$health_port" | head -1) || now=''
    if [ "$now" != "$new" ]; then
      say "no new SSH connection to $dest after activation (or it runs ${now:-nothing we could read})"
      revert; return $?
    fi
  else
    remote "$R_STATE" "$health_port"
  fi
  wait_health "$new" "$before_id" || { revert; return $?; }

  step "8/9 make it the boot default (nix-env --set + switch-to-configuration switch)"
  remote "$R_SWITCH" "$new" || { say "switch failed"; revert; return $?; }
  wait_health "$new" "$before_id" || { revert; return $?; }

  step "9/9 confirm (disarm the rollback)"
  remote "$R_CONFIRM" || { say "could not disarm the rollback: it will revert a good deploy"; revert; return $?; }
  say "deployed $new"
}

# Ctrl-C after arming: the node's timer still reverts; say so.
trap 'say "interrupted: if the rollback was armed, the node reverts by itself within ${rollback_after}s"; exit 130' INT TERM

rc=0
if [ $all = 1 ]; then
  mapfile -t hosts < <(fleet names)
  say "rolling ${#hosts[@]} nodes one at a time: ${hosts[*]}"
  for h in "${hosts[@]}"; do
    deploy_one "$h" || { rc=$?; say "stopping: $h failed (exit $rc); the nodes after it were not touched"; break; }
  done
else
  deploy_one "$host" || rc=$?
fi
[ $plan = 0 ] || say "plan only: nothing was built, copied or activated"
exit $rc
