#!/usr/bin/env bash
# The release binaries x0x-bootstrap and x0x, built the way crane's sandbox builds them:
# every build-specific path (the source tree, the crate sources, CARGO_HOME) remapped to a
# fixed /build/... prefix, SOURCE_DATE_EPOCH=0. Two such builds of the same sources give
# the same bytes wherever they run, which scripts/check-nix.sh checks by comparing this
# build with a vendored, offline one from another directory.
#
#   scripts/release-build.sh              build in this tree (target/repro), print that directory
#   scripts/release-build.sh --in DIR     DIR holds a copy of the tree with ./vendor (cargo vendor
#                                         --versioned-dirs) and vendor.toml (its source
#                                         replacement): build there offline, with an empty
#                                         CARGO_HOME, so only ./vendor can supply a crate
#
# scripts/check-systemd.sh runs the binaries of the first form under systemd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/.." && pwd)
vendored=0
if [ "${1:-}" = --in ]; then
  tree=$(cd "$2" && pwd)
  vendored=1
fi
cd "$tree"

crates=(-p x0x-bootstrap -p x0x-cli)
target=$tree/target/repro
# rustc and gcc apply the LAST matching prefix: the most specific mappings go last.
maps=("$tree=/build/source")
if [ $vendored = 1 ]; then
  home=$tree/.cargo-home-empty
  mkdir -p "$home"
  maps+=("$home=/build/cargo-home" "$tree/vendor=/build/vendor")
else
  home=${CARGO_HOME:-$HOME/.cargo}
  maps+=("$home=/build/cargo-home")
  # Crates from the registry live in $CARGO_HOME/registry/src/<index>/<name>-<version>,
  # vendored ones in vendor/<name>-<version>: both become /build/vendor/<name>-<version>.
  # Only the index directories this build's crates are in (others come and go with other
  # cargo versions, and would change RUSTFLAGS, hence every fingerprint).
  while IFS= read -r src; do maps+=("$src=/build/vendor"); done < <(
    CARGO_HOME=$home cargo metadata --locked --format-version 1 | python3 -c '
import json, os, sys
home = os.path.realpath(sys.argv[1]) + "/registry/src/"
dirs = {os.path.dirname(os.path.dirname(p["manifest_path"])) for p in json.load(sys.stdin)["packages"]}
print("\n".join(sorted(d for d in dirs if d.startswith(home))))' "$home")
fi

rustflags='' cflags=''
for m in "${maps[@]}"; do
  rustflags+=" --remap-path-prefix=$m"
  cflags+=" -ffile-prefix-map=$m"
done

args=(build --locked --release --quiet "${crates[@]}" --target-dir "$target")
[ $vendored = 0 ] || args+=(--offline --config "$tree/vendor.toml")
CARGO_HOME=$home RUSTFLAGS="${rustflags# }" CFLAGS="${cflags# }" CXXFLAGS="${cflags# }" SOURCE_DATE_EPOCH=0 \
  nice -n 10 cargo "${args[@]}"
echo "$target/release"
