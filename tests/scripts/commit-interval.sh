#!/usr/bin/env bash
# Throughput against the commit interval (issue 13, item 4): one Apache
# Kafka node, COUNT events generated beforehand on 6 partitions, then one
# group member with the default chain reads them all (--until-end) with
# --commit-interval-ms 0, 1000 and 5000, each with its own group. Prints
# events/s per interval; they should be about equal, since deliveries never
# wait for a commit that an interval delays.
#   tests/scripts/commit-interval.sh            (COUNT=300000 by default)
source "$(dirname "$0")/env.sh"
cd "$ROOT"
COUNT="${COUNT:-300000}"; PARTITIONS="${PARTITIONS:-6}"; INTERVALS="${INTERVALS:-0 1000 5000}"
BIN="${BIN:-$PIPELINE_HOST_BIN}"
tests/scripts/build-plugins.sh >&2
[[ -x "$BIN" ]] || cargo build --quiet --release -p pipeline-host
start_kafka commit-interval
boot="$BOOT"
"$BIN" generate --bootstrap "$boot" --topic ci-in --partitions "$PARTITIONS" --count "$COUNT" \
  --batch 500 2>/dev/null
stages=("${DEFAULT_CHAIN[@]}")
echo "commit interval -> events/s ($COUNT events, $PARTITIONS partitions, default chain, one member)"
for ms in $INTERVALS; do
  log="$PIPELINE_CACHE/commit-interval-$ms.log"
  t0=$(date +%s.%N)
  "$BIN" --bootstrap "$boot" --input ci-in --output "ci-out-$ms" --group "ci-$ms" \
    --commit-interval-ms "$ms" --until-end "${stages[@]}" 2>"$log"
  t1=$(date +%s.%N)
  python3 -c "import sys; c,a,b=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'  --commit-interval-ms {sys.argv[4]:>5}: {c/(b-a):>9,.0f} events/s ({b-a:.1f} s)')" \
    "$COUNT" "$t0" "$t1" "$ms"
done
