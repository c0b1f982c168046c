#!/usr/bin/env bash
# What a stage costs in instructions, free of the timing noise of a shared
# machine: the in-memory chain of `pipeline-host bench` run under valgrind
# (cachegrind, instruction counts only) at two event counts; the slope
# between them is the instructions per input event, without the one-off
# work (compiling the stages, loading). Prints the default chain, the
# default chain plus `router`, and what the router adds (docs/routing.md).
# Takes about 5 minutes. Knobs: FEW (20000), MANY (60000) events.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
command -v valgrind >/dev/null || { step "installing valgrind"; apt-get install -y -qq valgrind >/dev/null; }
[[ -x "$PIPELINE_HOST_BIN" ]] || cargo build --quiet --release -p pipeline-host
tests/scripts/build-plugins.sh >&2
FEW="${FEW:-20000}"
MANY="${MANY:-60000}"
out="$PIPELINE_CACHE/bench-instructions"
mkdir -p "$out"

# instructions MODE EVENTS: the instructions of one run of bench mode MODE
# (`--only` is a prefix: "wasm, epoch" runs the router row too).
instructions() {
  valgrind --tool=cachegrind --cache-sim=no --smc-check=all-non-file --cachegrind-out-file=/dev/null \
    "$PIPELINE_HOST_BIN" bench --only "$1" --events "$2" --runs 1 >/dev/null 2>"$out/valgrind.log"
  sed -n 's/.*I *refs: *//p' "$out/valgrind.log" | tr -d ,
}
declare -A per_event
for mode in "wasm, epoch" "wasm, epoch, + router" "none"; do
  step "counting $mode at $FEW and $MANY events"
  few=$(instructions "$mode" "$FEW")
  many=$(instructions "$mode" "$MANY")
  per_event[$mode]=$(( (many - few) / (MANY - FEW) ))
done
# "none" runs no row: what generating the input costs per event.
gen=${per_event[none]}
routed=$(( ${per_event["wasm, epoch, + router"]} - gen ))
chain=$(( ${per_event["wasm, epoch"]} - gen - routed ))
router=$(( routed - chain ))
echo "instructions per input event, in memory (valgrind, slope between $FEW and $MANY events):"
echo "  default chain:            $chain"
echo "  default chain + router:   $routed"
awk -v r="$router" -v c="$chain" 'BEGIN { printf "  the router stage adds:    %d (%.1f%% of the chain)\n", r, r / c * 100 }'
