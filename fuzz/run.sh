#!/usr/bin/env bash
# A bounded fuzz campaign over the policy (what `make fuzz` runs).
#
#   fuzz/run.sh                       every target, FUZZ_RUNS executions each
#   FUZZ_RUNS=5000000 fuzz/run.sh policy_request
#
# Installs what it needs when missing (the nightly toolchain of fuzz/rust-toolchain.toml,
# cargo-fuzz from crates.io), starts each target from its seeds plus a scratch corpus under
# the cache dir, and prints libFuzzer's own figures. Seeds: policy_bytes starts from the
# policy's golden fixtures (tests/fixtures/<case>/), each written here as the `validate`
# payload a host sends ({"request": ..., "settings": ...}), so the requests live in one
# place; policy_request from fuzz/seeds/policy_request (its own structured inputs). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run: make it a named
# regression case (crates/dask-worker-spec/tests or tests/) before fixing it.
set -euo pipefail

FUZZ_DIR=$(cd "$(dirname "$0")" && pwd)
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/dask-on-k8s}
FUZZ_RUNS=${FUZZ_RUNS:-1000000}
CARGO_FUZZ_VERSION=0.13.2
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(policy_bytes policy_request)

cd "$FUZZ_DIR" # rustup reads fuzz/rust-toolchain.toml from here
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "installing the $toolchain toolchain (libFuzzer needs it)"
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The validate payload of each golden fixture: {"request": <the AdmissionRequest>,
# "settings": <settings.json or {}>}, compact, one file per case.
fixture_seeds() {
  local out="$1" case_dir settings
  rm -rf "$out"
  mkdir -p "$out"
  for case_dir in "$FUZZ_DIR"/../tests/fixtures/*/; do
    settings='{}'
    [ -f "$case_dir/settings.json" ] && settings=$(cat "$case_dir/settings.json")
    jq -cj --argjson settings "$settings" '{request: (.request // .), settings: $settings}' \
      "$case_dir/request.json" >"$out/$(basename "$case_dir").json"
  done
}

target_dir=$CACHE_DIR/target-fuzz
for target in "${TARGETS[@]}"; do
  scratch=$CACHE_DIR/fuzz-corpus/$target
  mkdir -p "$scratch" "$FUZZ_DIR/artifacts/$target"
  case "$target" in
    policy_bytes)
      seeds=$CACHE_DIR/fuzz-seeds/$target
      fixture_seeds "$seeds" ;;
    *) seeds=$FUZZ_DIR/seeds/$target ;;
  esac
  echo "== $target: $FUZZ_RUNS runs (seeds: $seeds, $(ls "$seeds" | wc -l) files)"
  # -a: debug assertions, so integer overflow is a crash too. -s none: the policy is safe
  # Rust (unsafe_code is denied), so AddressSanitizer finds nothing a panic would not, and
  # libFuzzer runs about three times faster without it.
  set +e
  cargo fuzz run --fuzz-dir "$FUZZ_DIR" --target-dir "$target_dir" -a -s none "$target" \
    "$scratch" "$seeds" -- \
    -runs="$FUZZ_RUNS" \
    -dict="$FUZZ_DIR/policy.dict" -max_len=4096 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$FUZZ_DIR/artifacts/$target/" 2>&1 | tee "$CACHE_DIR/fuzz-$target.log" \
    | grep -E '^(#[0-9]+\s+(INITED|DONE)|Done [0-9]+ runs|stat::|==[0-9]+==|thread .* panicked|SUMMARY|INFO: seed|Test unit written)'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "$target: crash or error; full log: $CACHE_DIR/fuzz-$target.log" >&2
    exit 1
  fi
done
