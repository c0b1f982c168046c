#!/usr/bin/env bash
# What a schema-registry format costs (docs/formats.md): the default chain on
# the same events, once with JSON in and out and once with Avro in and out
# through a local Apicurio Registry, each run RUNS times (the best is
# kept). Prints events/s, CPU us per event and peak RSS per format, and the
# CPU Avro decode + encode adds per input event (aim: at most 0.5 us).
# Knobs: FORMAT_EVENTS (1000000), PARTITIONS (6), RUNS (2). bench.sh runs it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${FORMAT_EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-6}"
RUNS="${RUNS:-2}"
out="$PIPELINE_CACHE/bench-formats"
rm -rf "$out"
mkdir -p "$out"
host="$PIPELINE_HOST_BIN"
[[ -x "$host" ]] || cargo build --quiet --release -p pipeline-host
tests/scripts/build-plugins.sh >&2

start_kafka bench-formats
rdir="$PIPELINE_CACHE/bench-formats-registry"
rm -rf "$rdir"
url=$(tests/scripts/registry.sh start "$rdir" | sed -n 's/.*url=\([^ ]*\).*/\1/p')
trap 'tests/scripts/kafka.sh kill "$PIPELINE_CACHE/bench-formats-kafka"; tests/scripts/registry.sh kill "$rdir"' EXIT
step "registry at $url, broker at $BOOT"

export XDG_CACHE_HOME="$out/xdg"
warm_default_chain "$host"
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
    name="$format-$run"
    step "run $run: the default chain, $format in and out"
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S %M' -o "$out/$name.rusage" "$host" --bootstrap "$BOOT" \
      --input "in-$format" --output "out-$name" --dlq "dlq-$name" --partitions "$PARTITIONS" \
      --until-end "${DEFAULT_CHAIN[@]}" "${flags[@]}" >/dev/null 2>"$out/$name.log"
    t1=$(date +%s.%N)
    grep -q "pipeline stopped" "$out/$name.log" || { echo "the $format run did not finish; see $out/$name.log" >&2; exit 1; }
    echo "$t0 $t1 $(cat "$out/$name.rusage")" >"$out/$name.time"
    grep -o 'records_out=[0-9]*' "$out/$name.log" | tail -1 >"$out/$name.records"
  done
done

python3 - "$out" "$EVENTS" "$PARTITIONS" "$RUNS" <<'PY'
import os, sys
out, events, parts, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
best = {}
for fmt in ["json", "avro"]:
    rows = []
    for run in range(1, runs + 1):
        t0, t1, user, sys_, rss = open(os.path.join(out, f"{fmt}-{run}.time")).read().split()
        records = int(open(os.path.join(out, f"{fmt}-{run}.records")).read().split("=")[1])
        wall = float(t1) - float(t0)
        rows.append((wall, (float(user) + float(sys_)) * 1e6 / events, int(rss) / 1024, records))
    best[fmt] = min(rows, key=lambda r: r[1])
print(f"formats: the default chain on {events:,} events, {parts} partitions, best of {runs} runs")
print(f"{'format':<26} {'events/s':>10} {'CPU us/event':>13} {'peak RSS MB':>12} {'outputs':>9}")
for fmt, label in [("json", "JSON in, JSON out"), ("avro", "Avro in, Avro out")]:
    wall, cpu, rss, records = best[fmt]
    print(f"{label:<26} {events / wall:>10,.0f} {cpu:>13.2f} {rss:>12.1f} {records:>9,}")
print(f"Avro decode + encode adds {best['avro'][1] - best['json'][1]:.2f} us of CPU per input event "
      f"(seconds include start-up and reading to the end)")
PY
