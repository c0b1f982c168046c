#!/usr/bin/env bash
# End-to-end latency of two (or more) pipeline-host binaries on one Apache
# Kafka node, alternating: each runs the default chain while the generator
# offers RATE events/s and `latency` measures for SECONDS after a 5 s warm-up.
# Use it to tell a regression from this machine's noise:
#   tests/scripts/latency-ab.sh /path/to/old/pipeline-host /path/to/new/pipeline-host old new
# Prints one JSON line per run, prefixed with the binary.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
RATE="${RATE:-50000}"; SECONDS_PER_RUN="${SECONDS_PER_RUN:-30}"; PARTITIONS="${PARTITIONS:-6}"
[[ $# -ge 1 ]] || { echo "usage: $0 BINARY..." >&2; exit 2; }
tests/scripts/build-plugins.sh >&2
start_kafka latency-ab
boot="$BOOT"
stages=("${DEFAULT_CHAIN[@]}")
n=0
for bin in "$@"; do
  n=$((n + 1))
  "$bin" --bootstrap "$boot" --input "lat-in-$n" --output "lat-out-$n" --partitions "$PARTITIONS" \
    "${stages[@]}" 2>"$PIPELINE_CACHE/latency-ab-$n.log" &
  pipeline=$!
  "$bin" latency --bootstrap "$boot" --topic "lat-out-$n" --warmup-secs 5 --seconds "$SECONDS_PER_RUN" \
    >"$PIPELINE_CACHE/latency-ab-$n.json" 2>/dev/null &
  probe=$!
  "$1" generate --bootstrap "$boot" --topic "lat-in-$n" --partitions "$PARTITIONS" --rate "$RATE" \
    --batch 50 --count $(( RATE * (SECONDS_PER_RUN + 8) )) 2>/dev/null &
  generator=$!
  wait $probe
  kill $generator $pipeline 2>/dev/null || true
  wait $generator $pipeline 2>/dev/null || true
  echo "$bin $(cat "$PIPELINE_CACHE/latency-ab-$n.json")"
done
