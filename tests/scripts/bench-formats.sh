#!/usr/bin/env bash
# What a schema-registry format costs (docs/formats.md): the default chain on
# the same events, once with JSON in and out and once with Avro in and out
# through a local Apicurio Registry, each run RUNS times (the best is
# kept). Prints events/s, CPU us per event and peak RSS per format, and the
# CPU Avro decode + encode adds per input event (aim: at most 0.5 us).
# Knobs: FORMAT_EVENTS (1000000), PARTITIONS (6), RUNS (5). bench.sh runs it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${FORMAT_EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-6}"
RUNS="${RUNS:-5}"
bench_setup bench-formats
rdir="$PIPELINE_CACHE/bench-formats-registry"
rm -rf "$rdir"
url=$(tests/scripts/registry.sh start "$rdir" | sed -n 's/.*url=\([^ ]*\).*/\1/p')
trap 'tests/scripts/kafka.sh kill "$PIPELINE_CACHE/bench-formats-kafka"; tests/scripts/registry.sh kill "$rdir"' EXIT
step "registry at $url, broker at $BOOT"
for format in json avro; do
  step "generating $EVENTS events as $format"
  "$host" generate --bootstrap "$BOOT" --topic "in-$format" --count "$EVENTS" \
    --partitions "$PARTITIONS" --batch 1000 --format "$format" --registry-url "$url" 2>/dev/null
done

avro_flags=(--registry-url "$url" --input-format avro --output-format avro
  --output-schema host/schemas/processed-login.avsc)
for run in $(seq 1 "$RUNS"); do
  for format in json avro; do
    flags=()
    [[ "$format" == avro ]] && flags=("${avro_flags[@]}")
    step "run $run: the default chain, $format in and out"
    bench_run "$host" "$out" "$format-$run" "in-$format" "${flags[@]}"
  done
done

python3 - "$out" "$EVENTS" "$PARTITIONS" "$RUNS" <<'PY'
import sys
sys.path.insert(0, "tests/scripts")
from bench_runs import best_of, table
out, events, parts, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
best = best_of(out, events, runs, ["json", "avro"])
print(f"formats: the default chain on {events:,} events, {parts} partitions, best of {runs} runs")
table("format", events, best, [("json", "JSON in, JSON out"), ("avro", "Avro in, Avro out")])
print(f"Avro decode + encode adds {best['avro'][1] - best['json'][1]:.2f} us of CPU per input event "
      f"(seconds include start-up and reading to the end)")
PY
