#!/usr/bin/env bash
# Benchmarks that print figures (never timed tests):
#  1. in memory: the default chain over generated events, WebAssembly vs
#     native, events/s on one core (`pipeline-host bench`);
#  2. end to end through a local broker: EVENTS events (default 1,000,000) on
#     PARTITIONS partitions (default 6) are generated first, then
#     `pipeline-host --until-end` processes them; prints input events/s, and
#     the host's CPU time per event (user+sys) and peak RSS.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
EVENTS="${EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-6}"
tests/scripts/build-plugins.sh
cargo build --quiet --release -p pipeline-host
echo
"$PIPELINE_HOST_BIN" bench --events "${BENCH_EVENTS:-200000}"
echo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker=$(tests/scripts/broker.sh start "$port")
trap 'kill $broker 2>/dev/null || true' EXIT
boot="127.0.0.1:$port"
"$PIPELINE_HOST_BIN" generate --bootstrap "$boot" --topic bench-in --count "$EVENTS" --partitions "$PARTITIONS" \
  --malformed 0.01 --missing 0.02 --batch 1000 2>/dev/null
log="$PIPELINE_CACHE/bench-pipeline.log"
t0=$(date +%s.%N)
/usr/bin/time -f '%U %S %M' -o "$PIPELINE_CACHE/bench-time" "$PIPELINE_HOST_BIN" --bootstrap "$boot" \
  --input bench-in --output bench-out --partitions "$PARTITIONS" --until-end \
  --plugin plugins/android_filter.wasm --plugin plugins/enrich.wasm \
  --plugin plugins/categorize.wasm --plugin plugins/anomaly.wasm 2>"$log"
t1=$(date +%s.%N)
read -r user sys rss_kb <"$PIPELINE_CACHE/bench-time"
python3 - "$EVENTS" "$t0" "$t1" "$user" "$sys" "$rss_kb" "$PARTITIONS" <<'PY'
import sys
n, t0, t1, user, sys_, rss, parts = int(sys.argv[1]), *map(float, sys.argv[2:7]), sys.argv[7]
wall = t1 - t0
print(f"end to end through the local broker (nisshi, loopback), {n} events on {parts} partitions, default chain")
print(f"{'input events/s':>16} {'wall s':>8} {'host CPU us/event':>18} {'peak RSS MB':>12}")
print(f"{n / wall:>16.0f} {wall:>8.2f} {(user + sys_) * 1e6 / n:>18.2f} {rss / 1024:>12.1f}")
PY
grep -q "pipeline stopped" "$log" || { echo "pipeline did not finish cleanly; log: $log" >&2; exit 1; }
