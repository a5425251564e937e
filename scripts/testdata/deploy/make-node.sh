#!/usr/bin/env bash
# Build one simulated node for scripts/check-deploy.sh (see fake-ssh):
#   make-node.sh NODE_DIR PEER_ID SYSTEM:BEHAVIOUR[:nokey]...
# The first system is the running one and the boot default.
set -euo pipefail
node=$1 peer=$2
shift 2
mkdir -p "$node/store" "$node/run" "$node/bin"
: >"$node/log"

for spec in "$@"; do
  IFS=: read -r name behaviour flag <<<"$spec"
  sys=$node/store/$name
  mkdir -p "$sys/bin" "$sys/sw/bin" "$sys/etc/ssh/authorized_keys.d"
  echo "$behaviour" >"$sys/behaviour"
  [ "$flag" = nokey ] || echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheDeployTestOnly x0x-test" >"$sys/etc/ssh/authorized_keys.d/root"
  ln -sf /bin/sh "$sys/sw/bin/sh"
  # switch-to-configuration: activate (test) or activate and install the boot loader (switch).
  cat >"$sys/bin/switch-to-configuration" <<EOF
#!/bin/sh
node=$node sys=$sys
ln -sfn "\$sys" "\$node/run/current-system"
echo "switch-to-configuration \$1: $name" >>"\$node/log"
[ "\$1" != switch ] || [ "\$(readlink -f "\$node/profiles/system")" = "\$sys" ] || { echo "boot default is not $name" >&2; exit 1; }
EOF
  # nix-env -p PROFILE --set PATH
  cat >"$sys/sw/bin/nix-env" <<'EOF'
#!/bin/sh
[ "$1" = -p ] && [ "$3" = --set ] || { echo "fake nix-env: $*" >&2; exit 1; }
ln -sfn "$4" "$2"
EOF
  chmod +x "$sys/bin/switch-to-configuration" "$sys/sw/bin/nix-env"
done
first=${1%%:*}
ln -sfn "$node/store/$first" "$node/run/current-system"
ln -sfn "$node/store/$first" "$node/profiles/system" 2>/dev/null || { mkdir -p "$node/profiles"; ln -sfn "$node/store/$first" "$node/profiles/system"; }
ln -sfn "$node/store/$first/sw/bin/nix-env" "$node/bin/nix-env"

# curl http://127.0.0.1:PORT/health: what the active system's node would answer.
cat >"$node/bin/curl" <<EOF
#!/bin/sh
sys=\$(readlink -f "$node/run/current-system")
case \$(cat "\$sys/behaviour") in
  healthy | cutoff) echo '{"status":"healthy","peers":5,"expected_peers":5,"peer_id":"$peer"}' ;;
  unhealthy) echo '{"status":"degraded","peers":2,"expected_peers":5,"peer_id":"$peer"}' ;;
  newkey) echo '{"status":"healthy","peers":5,"expected_peers":5,"peer_id":"ffff$peer"}' ;;
esac
EOF

# systemd-run --unit=U ... --on-active=Ns ... CMD...: one transient timer, kept in $node/timer.
cat >"$node/bin/systemd-run" <<EOF
#!/bin/sh
after='' unit=''
while [ \$# -gt 0 ]; do
  case \$1 in
    --on-active=*) after=\${1#--on-active=}; after=\${after%s} ;;
    --unit=*) unit=\${1#--unit=} ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
[ -n "\$after" ] || { echo "fake systemd-run: no --on-active" >&2; exit 1; }
echo "\$((\$(date +%s) + after)) \$*" >"$node/timer"
echo "armed \$unit in \${after}s" >>"$node/log"
EOF

# systemctl is-active/stop/start/reset-failed/show for that one timer.
cat >"$node/bin/systemctl" <<EOF
#!/bin/sh
cmd=\$1
shift
[ "\${1:-}" != --quiet ] || shift
case \$cmd in
  is-active) [ -f "$node/timer" ] ;;
  stop) rm -f "$node/timer"; echo "timer stopped" >>"$node/log" ;;
  start) read -r _ cmd <"$node/timer" 2>/dev/null || cmd=''
    [ -n "\$cmd" ] || { echo "no rollback armed" >&2; exit 1; }
    echo "rollback started: \$cmd" >>"$node/log"; sh -c "\$cmd" >>"$node/log" 2>&1 ;;
  reset-failed) ;;
  show) echo 0 ;;
  *) echo "fake systemctl: \$cmd \$*" >&2; exit 1 ;;
esac
EOF
chmod +x "$node/bin/"*
