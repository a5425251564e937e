#!/usr/bin/env bash
# What of the Nix side can be checked on a machine without nixpkgs (issue #3, item 5):
#   1. every tracked .nix file parses (nix-instantiate --parse, Debian's nix-bin);
#   2. they are formatted (nixpkgs-fmt --check) and lint-clean (deadnix, plus a check
#      for impure references that would break the flake's hermeticity);
#   3. the inventory and each node's peers evaluate with plain builtins
#      (scripts/check-inventory.nix), and flake.nix/flake.lock have only nixpkgs+crane;
#   4. the Rust build is hermetic: Cargo.lock tracked, no git dependencies, no OpenSSL,
#      and `cargo vendor` + `cargo build --offline --locked --release` succeeds, which
#      is what crane does in the sandbox;
#   5. two such builds from different directories give bit-identical binaries.
# Installs what it lacks (nix-bin with apt when root; the formatter and linter with
# `cargo install --locked`, pinned, cached in ~/.cargo/bin). Prints PASS/FAIL lines and
# exits non-zero on any failure. X0X_CHECK_NIX_SKIP_REPRO=1 skips steps 4-5 (local use).
set -uo pipefail

NIXPKGS_FMT_VERSION=1.3.0
DEADNIX_VERSION=1.3.1

cd "$(git rev-parse --show-toplevel)" || exit 1
export PATH="$HOME/.cargo/bin:$PATH"

failures=0
passes=0
pass() { printf 'PASS %s\n' "$*"; passes=$((passes + 1)); }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
step() { printf '\n== %s\n' "$*"; }
elapsed() { printf '%ss' $(($(date +%s) - $1)); }
started=$(date +%s)

# --- tools ---------------------------------------------------------------------------
step "tools"
if ! command -v nix-instantiate >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin) >/dev/null 2>&1
  fi
fi
command -v nix-instantiate >/dev/null || { echo "FAIL nix-instantiate missing (apt-get install nix-bin)"; exit 1; }

# `cargo install` of a pinned version, skipped when that version is already installed.
ensure_crate() { # crate version binary
  # (nixpkgs-fmt --version exits 1 after printing its version.)
  if ! { "$3" --version 2>/dev/null || true; } | grep -qF "$2"; then
    local t0
    t0=$(date +%s)
    cargo install --locked --quiet "$1@$2" || { echo "FAIL cargo install $1@$2"; exit 1; }
    echo "installed $1 $2 in $(elapsed "$t0")"
  fi
}
ensure_crate nixpkgs-fmt "$NIXPKGS_FMT_VERSION" nixpkgs-fmt
ensure_crate deadnix "$DEADNIX_VERSION" deadnix
echo "$(nix-instantiate --version), nixpkgs-fmt $NIXPKGS_FMT_VERSION, deadnix $DEADNIX_VERSION"

mapfile -t nix_files < <(git ls-files '*.nix')
[ "${#nix_files[@]}" -gt 0 ] || { echo "FAIL no tracked .nix files"; exit 1; }

# --- 1. parse --------------------------------------------------------------------------
step "parse ${#nix_files[@]} .nix files"
bad=0
for f in "${nix_files[@]}"; do
  nix-instantiate --parse "$f" >/dev/null || { echo "  does not parse: $f"; bad=1; }
done
[ $bad = 0 ] && pass "every .nix file parses" || fail "some .nix file does not parse"

# --- 2. format and lint ----------------------------------------------------------------
step "format and lint"
if nixpkgs-fmt --check "${nix_files[@]}"; then
  pass "nixpkgs-fmt --check"
else
  fail "nixpkgs-fmt --check (run: nixpkgs-fmt \$(git ls-files '*.nix'), or nix fmt)"
fi
if deadnix --fail "${nix_files[@]}"; then
  pass "deadnix: no unused bindings"
else
  fail "deadnix"
fi
# The flake must not reach outside its locked inputs.
impure='<nixpkgs>|builtins\.(fetchTarball|fetchGit|fetchurl|fetchTree|getEnv|currentSystem|currentTime)|(^|[^.[:alnum:]_])(fetchTarball|fetchGit|getFlake)[[:space:]]'
if hits=$(git grep -nE "$impure" -- '*.nix'); then
  echo "$hits"
  fail "impure references in .nix files"
else
  pass "no impure references (<nixpkgs>, fetchTarball, getEnv, currentSystem, ...)"
fi

# --- 3. inventory ----------------------------------------------------------------------
step "inventory with plain builtins"
if out=$(nix-instantiate --eval --strict --json scripts/check-inventory.nix 2>&1); then
  echo "$out"
  pass "6 nodes x 5 peers, no self-peer, all distinct; flake inputs nixpkgs+crane, locked"
else
  echo "$out" | grep -E 'error|check-inventory' | head -5
  fail "inventory evaluation"
fi

# --- 4./5. hermetic, reproducible Rust build -------------------------------------------
if [ "${X0X_CHECK_NIX_SKIP_REPRO:-0}" = 1 ]; then
  step "Rust build: skipped (X0X_CHECK_NIX_SKIP_REPRO=1)"
else
  step "hermetic Rust build"
  git ls-files --error-unmatch Cargo.lock >/dev/null 2>&1 && pass "Cargo.lock is tracked" || fail "Cargo.lock is not tracked"
  if grep -q '^source = "git+' Cargo.lock; then fail "Cargo.lock has git dependencies"; else pass "no git dependencies"; fi
  if grep -qE '^name = "(openssl|openssl-sys|native-tls)"$' Cargo.lock; then
    fail "Cargo.lock pulls in OpenSSL"
  else
    pass "no OpenSSL in Cargo.lock (rustls only)"
  fi

  work=$(mktemp -d /tmp/x0x-repro.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # The tracked tree, including uncommitted edits to tracked files, as one commit id,
  # so that both builds get the same sources even if HEAD moves meanwhile.
  snapshot=$(git stash create 2>/dev/null)
  snapshot=${snapshot:-$(git rev-parse HEAD)}
  echo "  sources: $snapshot"

  # One clean build: fresh copy, vendored sources, then an offline build with an empty
  # CARGO_HOME, so nothing but ./vendor can supply a crate (as in crane's sandbox).
  # Paths that differ between the two directories are remapped, as crane's fixed
  # sandbox path (/build) makes them equal there.
  build_in() { # dir
    local dir=$1 t0
    mkdir -p "$dir/src-tree" "$dir/fetch-home" "$dir/cargo-home"
    git archive "$snapshot" | tar -x -C "$dir/src-tree"
    (
      cd "$dir/src-tree" || exit 1
      t0=$(date +%s)
      # cargo vendor prints the source replacement that points cargo at the vendor
      # directory; it is passed with --config rather than written into .cargo/.
      CARGO_HOME="$dir/fetch-home" cargo vendor --locked "$dir/src-tree/vendor" >"$dir/vendor.toml" 2>"$dir/vendor.log" ||
        { cat "$dir/vendor.log"; exit 2; }
      grep -q '^directory = ' "$dir/vendor.toml" || { echo "  cargo vendor printed no source replacement"; exit 2; }
      echo "  vendor in $dir: $(elapsed "$t0")"
      t0=$(date +%s)
      local map="--remap-path-prefix=$dir/src-tree=/build/source --remap-path-prefix=$dir/cargo-home=/build/cargo-home"
      CARGO_HOME="$dir/cargo-home" \
        RUSTFLAGS="$map" \
        CFLAGS="-ffile-prefix-map=$dir/src-tree=/build/source" \
        CXXFLAGS="-ffile-prefix-map=$dir/src-tree=/build/source" \
        SOURCE_DATE_EPOCH=0 \
        cargo build --config "$dir/vendor.toml" --offline --locked --release --quiet --bin x0x-bootstrap || exit 3
      echo "  build in $dir: $(elapsed "$t0")"
    )
  }

  t_build=$(date +%s)
  if build_in "$work/a" && build_in "$work/b-in-a-longer-directory"; then
    pass "cargo vendor + cargo build --offline --locked --release, twice ($(elapsed "$t_build"))"
    bin_a="$work/a/src-tree/target/release/x0x-bootstrap"
    bin_b="$work/b-in-a-longer-directory/src-tree/target/release/x0x-bootstrap"
    if cmp -s "$bin_a" "$bin_b"; then
      pass "reproducible: both x0x-bootstrap binaries are identical ($(sha256sum <"$bin_a" | cut -c1-16)...)"
    else
      cmp "$bin_a" "$bin_b" | head -1
      fail "the two x0x-bootstrap binaries differ"
    fi
  else
    fail "cargo vendor / offline build"
  fi
fi

echo
echo "check-nix took $(elapsed "$started")"
echo "check-nix: $passes passed, $failures failed"
[ $failures = 0 ]
