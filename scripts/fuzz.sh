#!/usr/bin/env bash
# Fuzzing x0x's parsers (docs/FUZZING.md).
#
#   scripts/fuzz.sh replay                 replay every committed input through its target
#                                          on the stable toolchain (what scripts/test.sh runs)
#   scripts/fuzz.sh run [TARGET] [SECONDS] a fixed-time libFuzzer campaign (nightly + cargo-fuzz),
#                                          one target after the other; default: all, 300 s each
#   scripts/fuzz.sh gen                    regenerate the generated seeds fuzz/seeds/*/sample-*
#                                          (every message kind, by the real encoder)
#   scripts/fuzz.sh cmin TARGET            minimize the working corpus fuzz/corpus/TARGET
#   scripts/fuzz.sh list                   the targets
#
# Targets: frame decode message relay config pem (fuzz/src/lib.rs says what each checks).
# Campaigns run under `nice -n 10` with one libFuzzer process (the machines have 2 cores),
# built with debug assertions and overflow checks (-a) and, by default, without a
# sanitizer: the targets are safe Rust, and AddressSanitizer costs 2-3x the executions.
# X0X_FUZZ_SANITIZER=address (or leak, memory, thread) builds with one.
# Crashes land in fuzz/artifacts/TARGET/; see docs/FUZZING.md for what to do with one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fuzz=$root/fuzz
targets=(frame decode message relay config pem)
sanitizer=${X0X_FUZZ_SANITIZER:-none}

# Per-target input size limit for campaigns: the frame and decode targets see
# whole directory snapshots (tens of KiB); the others stay small.
max_len() {
  case "$1" in
    frame | decode) echo 70000 ;;
    relay) echo 2048 ;;
    *) echo 4096 ;;
  esac
}

cargo_fuzz() {
  # cargo-fuzz installed by this script lives in fuzz/.tools (git-ignored).
  export PATH="$fuzz/.tools/bin:$HOME/.cargo/bin:$PATH"
  if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz into fuzz/.tools"
    nice -n 10 cargo install cargo-fuzz --locked --root "$fuzz/.tools"
  fi
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: campaigns need the nightly toolchain (cargo +nightly fuzz); replay works on stable" >&2
    exit 1
  fi
}

known() {
  local t
  for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done
  echo "error: unknown target '$1' (targets: ${targets[*]})" >&2
  exit 2
}

cmd=${1:-replay}
case "$cmd" in
  list)
    printf '%s\n' "${targets[@]}"
    ;;

  replay)
    # Stable toolchain, no libFuzzer: tests/replay.rs feeds every file of
    # seeds/, regressions/ and (if present) corpus/ to the target functions.
    # Shares the workspace's target directory so the x0x crates and their
    # dependencies built by the main test run are reused.
    started=$(date +%s)
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
      cargo clippy --manifest-path fuzz/Cargo.toml --no-default-features --all-targets -- -D warnings
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
      cargo test --manifest-path fuzz/Cargo.toml --no-default-features --test replay -- --nocapture
    echo "fuzz replay: $(( $(date +%s) - started )) s"
    ;;

  run)
    target=${2:-all}
    secs=${3:-300}
    [ "$target" = all ] || known "$target"
    cargo_fuzz
    list=("${targets[@]}")
    [ "$target" = all ] || list=("$target")
    mkdir -p "$fuzz/artifacts/logs"
    for t in "${list[@]}"; do
      mkdir -p "$fuzz/corpus/$t" "$fuzz/regressions/$t" "$fuzz/artifacts/$t"
      log="$fuzz/artifacts/logs/$t-$(date +%Y%m%d-%H%M%S).log"
      echo "==> $t for ${secs}s (log: ${log#"$root"/})"
      set +e
      (cd "$fuzz" && nice -n 10 cargo +nightly fuzz run -a -s "$sanitizer" "$t" \
        "corpus/$t" "seeds/$t" "regressions/$t" -- \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/") >"$log" 2>&1
      rc=$?
      set -e
      execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
      rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
      crashes=$(find "$fuzz/artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
      printf '%s\t%s\texecs=%s\texec/s=%s\tsecs=%s\tartifacts=%s\texit=%s\n' \
        "$(date -u +%FT%TZ)" "$t" "${execs:-?}" "${rate:-?}" "$secs" "$crashes" "$rc" |
        tee -a "$fuzz/artifacts/logs/campaigns.tsv"
      if [ "$rc" != 0 ]; then
        echo "!! $t stopped with exit $rc: see $log and fuzz/artifacts/$t/" >&2
        tail -40 "$log" >&2
      fi
    done
    ;;

  cmin)
    t=${2:?usage: scripts/fuzz.sh cmin TARGET}
    known "$t"
    cargo_fuzz
    (cd "$fuzz" && nice -n 10 cargo +nightly fuzz cmin -a -s "$sanitizer" "$t" "corpus/$t" -- -max_len="$(max_len "$t")")
    ;;

  gen)
    # The generated seeds (fuzz/src/lib.rs, seed_files): one sample of every
    # message kind by the real encoder, streams of them, relay packets. No
    # network. The replay test seeds_are_current_and_cover_every_message_kind
    # fails until the committed seeds match.
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
      cargo run --manifest-path fuzz/Cargo.toml --no-default-features --features gen --bin seed-gen -- "$fuzz/seeds"
    ;;

  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
