#!/usr/bin/env bash
# Runs each cargo fuzz target of tests/fuzz (value validation, fetch-response
# record decoding, stage outcome checking) for SECONDS seconds each (default
# 60) and prints how many inputs each ran. Installs the nightly toolchain and
# cargo-fuzz when missing; the build, the corpus and any crashing input live
# in the cache, outside the checkout. A crash fails the script and names
# the input to replay (`cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET FILE`);
# once fixed, keep it in tests/fuzz/regressions/TARGET, which every run replays.
#
#   tests/scripts/fuzz.sh [SECONDS] [TARGET...]
source "$(dirname "$0")/env.sh"
cd "$ROOT"
each="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(value_validation fetch_records outcomes)

if ! rustup toolchain list | grep -q '^nightly'; then
  timed "installing the nightly toolchain" rustup toolchain install nightly --profile minimal
fi
tools="$PIPELINE_CACHE/tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  timed "installing cargo-fuzz" cargo install --quiet --locked cargo-fuzz --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# Its own target directory: sanitizer builds share nothing with the others.
export CARGO_TARGET_DIR="$PIPELINE_CACHE/fuzz-target"
timed "building the fuzz targets" cargo +nightly fuzz build --fuzz-dir tests/fuzz

status=0
for t in "${targets[@]}"; do
  corpus="$PIPELINE_CACHE/fuzz/corpus/$t"
  artifacts="$PIPELINE_CACHE/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$PIPELINE_CACHE/fuzz/$t.log"
  # Inputs that once crashed a target (tests/fuzz/regressions/TARGET) are
  # read first, as a second corpus: every run replays them.
  seeds=()
  [ -d "tests/fuzz/regressions/$t" ] && seeds=("tests/fuzz/regressions/$t")
  step "fuzzing $t for $each s"
  if cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "$corpus" "${seeds[@]}" -- \
      -max_total_time="$each" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    corpus_size=$(find "$corpus" -type f | wc -l)
    echo "fuzz $t: $runs executions in $each s, corpus $corpus_size inputs, no crash"
  else
    status=1
    echo "fuzz $t: FAILED, see $log"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 8
  fi
done
exit $status
