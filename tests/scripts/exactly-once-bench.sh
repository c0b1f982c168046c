#!/usr/bin/env bash
# Exactly-once against at-least-once (issue 14) on one Apache Kafka node,
# default chain, one group member:
#  1. throughput: COUNT events generated beforehand on PARTITIONS partitions
#     (1% not JSON, so dead letters are in the transactions too), read to
#     the end (--until-end) once per mode, each with its own group and
#     output; events/s, CPU us per input event (user + sys), peak RSS;
#  2. latency: the generator offers RATE events/s for SECONDS s per mode and
#     `pipeline-host latency` (which reads read_committed) measures produce
#     timestamp -> readable on the output, p50/p99.
# Modes: at-least-once (commit whenever delivered offsets move) and
# exactly-once with transactions of 100 ms and of 1000 ms
# (--commit-interval-ms). Figures, not a test: nothing here fails on a
# slow machine.
#   tests/scripts/exactly-once-bench.sh   (COUNT=1000000 RATE=20000 SECONDS=20)
source "$(dirname "$0")/env.sh"
cd "$ROOT"
COUNT="${COUNT:-1000000}"; PARTITIONS="${PARTITIONS:-6}"
RATE="${RATE:-20000}"; RUN="${SECONDS_PER_RUN:-20}"
BIN="${BIN:-$PIPELINE_HOST_BIN}"
out="$PIPELINE_CACHE/exactly-once-bench"
mkdir -p "$out"
tests/scripts/build-plugins.sh >&2
[[ -x "$BIN" ]] || cargo build --quiet --release -p pipeline-host
start_kafka exactly-once-bench
boot="$BOOT"
stages=("${DEFAULT_CHAIN[@]}")
export XDG_CACHE_HOME="$out/xdg"
warm_default_chain "$BIN"
modes=("alo:--guarantee at-least-once" "eos100:--guarantee exactly-once --commit-interval-ms 100"
       "eos1000:--guarantee exactly-once --commit-interval-ms 1000")

step "generating $COUNT events on $PARTITIONS partitions"
"$BIN" generate --bootstrap "$boot" --topic eo-in --partitions "$PARTITIONS" --count "$COUNT" \
  --malformed 0.01 --batch 1000 2>/dev/null
for m in "${modes[@]}"; do
  name="${m%%:*}"; read -r -a flags <<<"${m#*:}"
  step "throughput: $name"
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$out/$name.rusage" "$BIN" --bootstrap "$boot" --input eo-in \
    --output "eo-out-$name" --group "eo-$name" "${flags[@]}" --until-end "${stages[@]}" \
    2>"$out/$name.log"
  t1=$(date +%s.%N)
  echo "$t0 $t1 $(cat "$out/$name.rusage")" >"$out/$name.time"
  grep -q "pipeline stopped" "$out/$name.log" || { echo "$name did not finish; see $out/$name.log" >&2; exit 1; }
done
for m in "${modes[@]}"; do
  name="${m%%:*}"; read -r -a flags <<<"${m#*:}"
  step "latency: $name at $RATE events/s for $RUN s"
  "$BIN" --bootstrap "$boot" --input "lat-in-$name" --output "lat-out-$name" \
    --partitions "$PARTITIONS" --group "lat-$name" "${flags[@]}" "${stages[@]}" \
    2>"$out/lat-$name.log" &
  pipeline=$!
  "$BIN" latency --bootstrap "$boot" --topic "lat-out-$name" --warmup-secs 5 --seconds "$RUN" \
    >"$out/lat-$name.json" 2>/dev/null &
  probe=$!
  "$BIN" generate --bootstrap "$boot" --topic "lat-in-$name" --partitions "$PARTITIONS" \
    --rate "$RATE" --batch 50 --count $(( RATE * (RUN + 8) )) 2>/dev/null &
  generator=$!
  wait $probe
  kill $generator $pipeline 2>/dev/null || true
  wait $generator $pipeline 2>/dev/null || true
done
python3 - "$out" "$COUNT" "$PARTITIONS" "$RATE" "$RUN" <<'PY'
import json, os, sys
out, count, parts, rate, run = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
labels = {"alo": "at-least-once", "eos100": "exactly-once, 100 ms txns", "eos1000": "exactly-once, 1000 ms txns"}
print(f"exactly-once vs at-least-once: {count:,} events on {parts} partitions, default chain, one member")
print(f"{'mode':<28} {'seconds':>8} {'events/s':>10} {'vs ALO':>7} {'CPU us/event':>13} {'peak RSS MB':>12} {'p50 ms':>7} {'p99 ms':>7}")
base = None
for name, label in labels.items():
    t0, t1, user, sys_, rss = open(os.path.join(out, name + ".time")).read().split()
    wall = float(t1) - float(t0)
    eps = count / wall
    base = base or eps
    cpu = (float(user) + float(sys_)) * 1e6 / count
    lat = json.load(open(os.path.join(out, f"lat-{name}.json")))
    print(f"{label:<28} {wall:>8.1f} {eps:>10,.0f} {eps / base:>6.0%} {cpu:>13.2f} {int(rss) / 1024:>12.1f} {lat['p50_ms']:>7.0f} {lat['p99_ms']:>7.0f}")
print(f"(latency at {rate:,} events/s offered for {run} s: produce timestamp -> readable read_committed on the output)")
PY
