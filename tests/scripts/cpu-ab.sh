#!/usr/bin/env bash
# Host CPU per input event of two (or more) pipeline-host binaries on one
# Apache Kafka node, alternating on the same input, so a change's effect
# stands out from this machine's noise: COUNT events (1% not JSON, 2%
# missing a field) generated once on PARTITIONS partitions, then ROUNDS
# rounds in which each binary reads them all (--until-end, default chain)
# into its own output topic. Prints events/s, CPU us/event (user + sys)
# and peak RSS per run, and the mean CPU per binary.
#   tests/scripts/cpu-ab.sh /path/to/old/pipeline-host /path/to/new/pipeline-host
# (COUNT=3000000 ROUNDS=4 PARTITIONS=6). Figures, not a test.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
COUNT="${COUNT:-3000000}"; ROUNDS="${ROUNDS:-4}"; PARTITIONS="${PARTITIONS:-6}"
[[ $# -ge 2 ]] || { echo "usage: $0 BINARY BINARY..." >&2; exit 2; }
tests/scripts/build-plugins.sh >&2
start_kafka cpu-ab
boot="$BOOT"
out="$PIPELINE_CACHE/cpu-ab"
mkdir -p "$out"
"$1" generate --bootstrap "$boot" --topic ab-in --count "$COUNT" --partitions "$PARTITIONS" \
  --malformed 0.01 --missing 0.02 --batch 1000 2>/dev/null
# As deployed: stages from a compile cache filled beforehand.
export XDG_CACHE_HOME="$out/xdg"
warm_default_chain "$1"
stages=("${DEFAULT_CHAIN[@]}")
run=0
for round in $(seq "$ROUNDS"); do
  b=0
  for bin in "$@"; do
    b=$((b + 1)); run=$((run + 1))
    /usr/bin/time -f '%e %U %S %M' -o "$out/run.rusage" "$bin" --bootstrap "$boot" \
      --input ab-in --output "ab-out-$run" --partitions "$PARTITIONS" --until-end \
      "${stages[@]}" >/dev/null 2>"$out/run-$run.log"
    echo "$b $(cat "$out/run.rusage")"
  done
done | python3 -c '
import sys, statistics
count, bins = int(sys.argv[1]), sys.argv[2:]
cpu = {}
for line in sys.stdin:
    b, wall, user, sys_, rss = line.split()
    us = (float(user) + float(sys_)) / count * 1e6
    cpu.setdefault(int(b), []).append(us)
    print(f"{bins[int(b)-1]}: {count/float(wall):>9.0f} events/s  {us:.3f} us/event  {float(rss)/1024:.1f} MB", flush=True)
for b, runs in sorted(cpu.items()):
    print(f"mean {bins[b-1]}: {statistics.mean(runs):.3f} us/event over {len(runs)} runs")
' "$COUNT" "$@"
