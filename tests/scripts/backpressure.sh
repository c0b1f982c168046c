#!/usr/bin/env bash
# Memory under back-pressure (a figure, not a test): the output is slower
# than the input, and pipeline-host must wait (bounded read-ahead) rather
# than buffer. Apache Kafka advertises a throttling proxy
# (tests/bench/throttle_proxy.py) that passes client -> broker bytes (produce
# requests: the output) at THROTTLE bytes/s and everything else at full
# speed. EVENTS events are generated first (unthrottled), then the pipeline
# runs for SECONDS seconds while its RSS is sampled every second.
# Knobs: EVENTS (2000000), THROTTLE (4000000), RUN_SECONDS (60).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${EVENTS:-2000000}"
THROTTLE="${THROTTLE:-4000000}"
RUN="${RUN_SECONDS:-60}"
tests/scripts/build-plugins.sh >&2
cargo build --quiet --release -p pipeline-host
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport=$(free); pport=$(free)
kdir="$PIPELINE_CACHE/backpressure-kafka"
rm -rf "$kdir"; mkdir -p "$kdir"
# Clients are sent to the proxy's port, which forwards to the broker's.
echo "advertised.listeners=PLAINTEXT://127.0.0.1:$pport" >"$kdir.properties"
python3 tests/bench/throttle_proxy.py --listen "$pport" --upstream "$bport" --bytes-per-sec "$THROTTLE" &
proxy=$!
trap 'tests/scripts/kafka.sh kill "$kdir"; kill $proxy ${pipeline:-} 2>/dev/null || true' EXIT
step "starting Apache Kafka $KAFKA_VERSION behind the throttling proxy"
tests/scripts/kafka.sh start "$kdir" "$bport" "$kdir.properties" >/dev/null
boot="127.0.0.1:$pport"
"$PIPELINE_HOST_BIN" generate --bootstrap "$boot" --topic bp-in --count "$EVENTS" --partitions 6 \
  --batch 1000 2>/dev/null
kill -USR1 "$proxy"
"$PIPELINE_HOST_BIN" --bootstrap "$boot" --input bp-in --output bp-out --partitions 6 \
  --plugin plugins/android_filter.wasm --plugin plugins/enrich.wasm \
  --plugin plugins/categorize.wasm --plugin plugins/anomaly.wasm \
  --stats-interval-ms 5000 2>"$PIPELINE_CACHE/backpressure-pipeline.log" &
pipeline=$!
samples=()
for ((i = 0; i < RUN; i++)); do
  sleep 1
  samples+=("$(awk '/VmRSS/ {print $2}' "/proc/$pipeline/status")")
done
out=$("$PIPELINE_HOST_BIN" view --bootstrap "$boot" --topic bp-out --no-follow --pretty never 2>/dev/null | wc -l)
python3 - "$RUN" "$THROTTLE" "$EVENTS" "$out" "${samples[@]}" <<'PY'
import sys
run, throttle, events, out = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss = [int(s) / 1024 for s in sys.argv[5:]]
print(f"back-pressure: output throttled to {throttle / 1e6:.1f} MB/s, {events:,} events waiting, {run} s")
print(f"  output records written: {out:,} ({out / run:,.0f}/s; the input could go far faster)")
print(f"  pipeline RSS MB: first {rss[0]:.1f}  min {min(rss):.1f}  max {max(rss):.1f}  last {rss[-1]:.1f}")
half = rss[len(rss) // 2:]
print(f"  growth over the second half: {max(half) - min(half):+.1f} MB (flat = back-pressure, not buffering)")
PY
