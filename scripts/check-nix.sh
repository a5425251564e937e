#!/usr/bin/env bash
# What of the Nix side can be checked on a machine without nixpkgs:
#   1. every tracked .nix file parses (nix-instantiate --parse, Debian's nix-bin);
#   2. they are formatted (nixpkgs-fmt --check) and lint-clean (deadnix, plus a check for
#      impure references that would break the flake's hermeticity);
#   3. the inventory and each node's peers evaluate with plain builtins
#      (scripts/check-inventory.nix), and flake.nix/flake.lock have only nixpkgs+crane;
#   4. the module and the hosts evaluate with nixpkgs' real lib through the nixos-eval
#      harness (scripts/nix/check-module.nix: 50 named checks of options, rendered
#      settings, unit, socket, firewall, sysctl merging, assertions, lock-out check,
#      hosts from inventory and adopted facts);
#   5. the Rust build is hermetic: Cargo.lock tracked, no git dependencies, no OpenSSL;
#   6. reproducible: the release build of this tree (scripts/release-build.sh, the one
#      scripts/check-systemd.sh runs) and a vendored, offline build (`cargo vendor`, empty
#      CARGO_HOME, `--offline`, what crane does in its sandbox) of a copy of the tree in
#      another directory give bit-identical x0x-bootstrap and x0x binaries. (cargo vendor
#      fetches from crates.io only the crates the local cargo cache lacks.)
# Installs what it lacks: nix-bin with apt when root; nixpkgs-fmt and deadnix, pinned,
# with `cargo install --locked --root .tools` (this script's own directory, used by path,
# whatever CARGO_HOME or PATH say). PASS/FAIL lines; exit 1 on any failure.
# X0X_CHECK_NIX_SKIP_REPRO=1 skips 5-6 (local use).
#
# "COND && pass ... || fail ...": pass always succeeds.
# shellcheck disable=SC2015
set -uo pipefail

NIXPKGS_FMT_VERSION=1.3.0
DEADNIX_VERSION=1.3.1

cd "$(git rev-parse --show-toplevel)" || exit 1
top=$PWD
TOOLS=${X0X_TOOLS_DIR:-$top/.tools}

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

# `cargo install --root $TOOLS` of a pinned version, skipped when that version is there.
ensure_crate() { # crate version binary
  local bin=$TOOLS/bin/$3 t0
  # (nixpkgs-fmt --version exits 1 after printing its version.)
  if ! { "$bin" --version 2>/dev/null || true; } | grep -qF "$2"; then
    t0=$(date +%s)
    cargo install --locked --quiet --root "$TOOLS" "$1@$2" || { echo "FAIL cargo install --root $TOOLS $1@$2"; exit 1; }
    echo "installed $1 $2 into $TOOLS in $(elapsed "$t0")"
  fi
  [ -x "$bin" ] || { echo "FAIL $bin missing after cargo install"; exit 1; }
}
ensure_crate nixpkgs-fmt "$NIXPKGS_FMT_VERSION" nixpkgs-fmt
ensure_crate deadnix "$DEADNIX_VERSION" deadnix
NIXPKGS_FMT=$TOOLS/bin/nixpkgs-fmt
DEADNIX=$TOOLS/bin/deadnix
echo "$(nix-instantiate --version), nixpkgs-fmt $NIXPKGS_FMT_VERSION and deadnix $DEADNIX_VERSION in $TOOLS/bin"

mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard '*.nix' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
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
if "$NIXPKGS_FMT" --check "${nix_files[@]}"; then
  pass "nixpkgs-fmt --check"
else
  fail "nixpkgs-fmt --check (run: $NIXPKGS_FMT \$(git ls-files '*.nix'), or nix fmt)"
fi
if "$DEADNIX" --fail "${nix_files[@]}"; then
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
  pass "6 nodes x 5 peers, no self-peer, all distinct, optional fields well formed, facts files; flake inputs nixpkgs+crane, locked"
else
  echo "$out" | grep -E 'error|check-inventory' | head -5
  fail "inventory evaluation"
fi

# --- 4. module and hosts with nixpkgs' lib ---------------------------------------------
step "module and hosts through the nixos-eval harness (nixpkgs' real lib)"
shared=${X0X_SHARED:-}
for d in "$top/../shared" "$top/../../shared"; do
  [ -n "$shared" ] || { [ -f "$d/tools/nixos-eval/eval.nix" ] && shared=$(cd "$d" && pwd); }
done
lib_tgz=''
for f in "$shared"/nix-inputs/nixpkgs.lib-*.tar.gz; do [ -f "$f" ] && lib_tgz=$f; done
if [ -z "$shared" ] || [ -z "$lib_tgz" ]; then
  fail "no ../shared/tools/nixos-eval or ../shared/nix-inputs/nixpkgs.lib-*.tar.gz (set X0X_SHARED)"
else
  libdir=$(mktemp -d /tmp/x0x-nixlib.XXXXXX)
  tar -xzf "$lib_tgz" -C "$libdir"
  if out=$(nix-instantiate --eval --strict --json scripts/nix/check-module.nix \
    --arg lib "import $libdir/nixpkgs.lib/lib" --arg harness "$shared/tools/nixos-eval/eval.nix" 2>&1) &&
    summary=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); [print("  FAILED:", n) for n in d["failed"]]; print(d["total"] - len(d["failed"]), "of", d["total"]); sys.exit(1 if d["failed"] else 0)' "$out"); then
    pass "module and hosts: $summary checks hold ($(basename "$lib_tgz" .tar.gz))"
  else
    echo "${summary:-$out}" | head -20
    fail "module and hosts evaluation"
  fi
  rm -rf "$libdir"
fi

# --- 5./6. hermetic, reproducible Rust build -------------------------------------------
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

  step "reproducible: this tree's release build vs a vendored offline build elsewhere"
  work=$(mktemp -d /tmp/x0x-repro.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  t0=$(date +%s)
  if a=$(scripts/release-build.sh); then
    echo "  A: this tree ($top), $(elapsed "$t0")"
  else
    a=''
    fail "release build of this tree"
  fi
  # B: the same files (tracked and new, not ignored), copied into a directory of another
  # name and length, crates vendored from the local cache, built offline with an empty
  # CARGO_HOME so that only ./vendor can supply a crate.
  b_tree=$work/b-in-another-longer-directory/src-tree
  mkdir -p "$b_tree"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && cp --parents -P -t "$b_tree" "$f"
  done
  t0=$(date +%s)
  # cargo vendor takes every crate of Cargo.lock (Windows- and macOS-only ones too) from
  # the local cache; what the cache lacks it fetches from crates.io, once.
  if (cd "$b_tree" && { cargo vendor --locked --offline --versioned-dirs "$b_tree/vendor" >vendor.toml 2>"$work/vendor.log" ||
    cargo vendor --locked --versioned-dirs "$b_tree/vendor" >vendor.toml 2>>"$work/vendor.log"; }) &&
    grep -q '^directory = ' "$b_tree/vendor.toml"; then
    echo "  B: cargo vendor: $(elapsed "$t0")"
    t0=$(date +%s)
    if b=$(scripts/release-build.sh --in "$b_tree"); then
      echo "  B: offline build in $b_tree, $(elapsed "$t0")"
      pass "cargo vendor + cargo build --offline --locked --release, empty CARGO_HOME"
    else
      b=''
      fail "vendored offline build"
    fi
  else
    tail -3 "$work/vendor.log"
    b=''
    fail "cargo vendor"
  fi
  if [ -n "$a" ] && [ -n "$b" ]; then
    for bin in x0x-bootstrap x0x; do
      if cmp -s "$a/$bin" "$b/$bin"; then
        pass "reproducible: both $bin binaries are identical ($(sha256sum <"$a/$bin" | cut -c1-16)...)"
      else
        cmp "$a/$bin" "$b/$bin" | head -1
        echo "  paths and other strings in one binary only (first 10):"
        diff <(strings -n 12 "$a/$bin" | sort -u) <(strings -n 12 "$b/$bin" | sort -u) | grep '^[<>]' | head -10 | sed 's/^/    /'
        fail "the two $bin binaries differ"
      fi
    done
  fi
fi

echo
echo "check-nix took $(elapsed "$started")"
echo "check-nix: $passes passed, $failures failed"
[ $failures = 0 ]
