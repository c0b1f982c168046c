#!/usr/bin/env bash
# What routing costs (docs/routing.md): the default chain against the
# default chain plus the `router` stage, which sends the events `anomaly`
# flags to a second topic (route suspicious), and against the default chain
# whose `anomaly` routes them itself (its `route` setting: routing with no
# extra stage), on the same events, each run RUNS times interleaved (the
# best is kept). Prints events/s, CPU us per event, peak RSS and the
# records written, and the CPU each adds per input event (aim: under 5%);
# then the router stage's own cost measured in memory, without the broker,
# in time and in instructions (bench-instructions.sh, free of timing noise).
# Knobs: ROUTE_EVENTS (1000000), PARTITIONS (6), RUNS (5). bench.sh runs it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${ROUTE_EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-6}"
RUNS="${RUNS:-5}"
bench_setup bench-routes
step "broker at $BOOT"
"$host" plugin check plugins/router.wasm >/dev/null
step "generating $EVENTS events"
"$host" generate --bootstrap "$BOOT" --topic in --count "$EVENTS" --partitions "$PARTITIONS" \
  --batch 1000 2>/dev/null

for run in $(seq 1 "$RUNS"); do
  for chain in plain routed inline; do
    flags=()
    [[ "$chain" == routed ]] && flags=(--plugin plugins/router.wasm --route "suspicious=sus-$run")
    [[ "$chain" == inline ]] && flags=(--stage-config anomaly.route=suspicious --route "suspicious=inl-$run")
    step "run $run: the default chain, $chain"
    bench_run "$host" "$out" "$chain-$run" in "${flags[@]}"
  done
done

# The router stage's own CPU without a broker's noise: the in-memory chain
# with and without it (one thread, best of 5).
"$host" bench --only "wasm, epoch" --events 300000 --runs 5 >"$out/memory.txt" 2>/dev/null

python3 - "$out" "$EVENTS" "$PARTITIONS" "$RUNS" <<'PY'
import sys
sys.path.insert(0, "tests/scripts")
from bench_runs import best_of, table
out, events, parts, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
best = best_of(out, events, runs, ["plain", "routed", "inline"])
print(f"routes: the default chain on {events:,} events, {parts} partitions, best of {runs} runs")
table("chain", events, best, [("plain", "default chain (one output)"),
                              ("routed", "default chain + router (flagged -> 2nd topic)"),
                              ("inline", "default chain, anomaly routes (no new stage)")])
p = best["plain"][1]
for chain, what in [("routed", "the router stage and its topic"), ("inline", "routing in anomaly and its topic")]:
    r = best[chain][1]
    print(f"{what} add {r - p:.2f} us of CPU per input event ({(r - p) / p * 100:+.1f}%; aim: under 5%)")
ns = {}
for line in open(f"{out}/memory.txt"):
    if line.startswith("wasm, epoch"):
        mode, rest = line[:22].strip(), line[22:].split()
        ns[mode] = float(rest[1])
chain, routed = ns["wasm, epoch"], ns["wasm, epoch, + router"]
print(f"in memory, no broker (pipeline-host bench): the default chain {chain:.0f} ns/event, + router "
      f"{routed:.0f}: the stage itself adds {routed - chain:.0f} ns per input event "
      f"({(routed - chain) / 1000 / p * 100:.1f}% of the end-to-end CPU per event above)")
PY

# The same in instructions (valgrind): no timing noise at all.
tests/scripts/bench-instructions.sh
