#!/usr/bin/env bash
# How the default of fetch_max_wait_ms was chosen (figures, not a test): on
# one local Apache Kafka node, for each WAITS value, the CPU that
# pipeline-host and the broker spend while 6 input partitions are idle, and
# the end-to-end latency (produce timestamp -> readable on the output,
# `pipeline-host latency`) at each of RATES events/s.
# Knobs: WAITS ("20 100 500"), RATES ("2000 20000"), RUN_SECONDS (15).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
WAITS="${WAITS:-20 100 500}"
RATES="${RATES:-2000 20000}"
RUN="${RUN_SECONDS:-15}"
tests/scripts/build-plugins.sh >&2
cargo build --quiet --release -p pipeline-host
host="$PIPELINE_HOST_BIN"
stages=("${DEFAULT_CHAIN[@]}")
kdir="$PIPELINE_CACHE/fetch-wait-kafka"
rm -rf "$kdir"
tests/scripts/kafka.sh start "$kdir" >"$kdir.txt"
trap 'tests/scripts/kafka.sh kill "$kdir"; kill $(jobs -p) 2>/dev/null || true' EXIT
boot="$(sed -n 's/.*bootstrap=\([^ ]*\).*/\1/p' "$kdir.txt")"
kpid="$(cat "$kdir/pid")"
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$1/stat"; }   # clock ticks are 10 ms

printf '%-18s %22s %22s' "fetch_max_wait_ms" "idle host CPU ms/s" "idle broker CPU ms/s"
for r in $RATES; do printf ' %24s' "p50/p99/max ms @ $r/s"; done
echo
for w in $WAITS; do
  "$host" --bootstrap "$boot" --input "idle-$w" --output "idle-$w-out" --partitions 6 \
    --fetch-max-wait-ms "$w" "${stages[@]}" 2>/dev/null &
  p=$!
  sleep 5
  h0=$(cpu_ms "$p"); k0=$(cpu_ms "$kpid")
  sleep "$RUN"
  h1=$(cpu_ms "$p"); k1=$(cpu_ms "$kpid")
  kill "$p"; wait "$p" 2>/dev/null || true
  printf '%-18s %22s %22s' "$w" "$(( (h1 - h0) / RUN ))" "$(( (k1 - k0) / RUN ))"
  for r in $RATES; do
    t="lat-$w-$r"
    "$host" --bootstrap "$boot" --input "$t" --output "$t-out" --partitions 6 \
      --fetch-max-wait-ms "$w" "${stages[@]}" 2>/dev/null &
    p=$!
    "$host" latency --bootstrap "$boot" --topic "$t-out" --warmup-secs 3 --seconds "$RUN" \
      >"$kdir/$t.json" 2>/dev/null &
    q=$!
    "$host" generate --bootstrap "$boot" --topic "$t" --partitions 6 --rate "$r" --batch 50 \
      --count $(( r * (RUN + 5) )) 2>/dev/null &
    g=$!
    wait "$q"
    kill "$g" "$p" 2>/dev/null || true
    wait 2>/dev/null || true
    printf ' %24s' "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(f"{d[\"p50_ms\"]:.0f} / {d[\"p99_ms\"]:.0f} / {d[\"max_ms\"]:.0f}")' "$kdir/$t.json")"
  done
  echo
done
