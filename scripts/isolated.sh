# Sourced by scripts/*.sh. `isolated CMD` runs the shell command CMD in a
# network namespace of its own with only `lo` (up): `unshare -n` as root, a
# user namespace (`unshare -rn`) otherwise. Returns 125 if neither is possible,
# so callers decide whether that is fatal.
isolated() {
  local inner="ip link set lo up && $1"
  if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    unshare -n -- bash -c "$inner"
  elif unshare -rn true 2>/dev/null; then
    unshare -rn -- bash -c "$inner"
  else
    echo "cannot create a network namespace (need root or unprivileged user namespaces)" >&2
    return 125
  fi
}
