#!/usr/bin/env bash
# The whole pipeline on this machine: builds the plugins and the host, starts
# a local broker on 127.0.0.1:9092 unless PIPELINE_BOOTSTRAP points at one,
# then runs the generator, the pipeline (four WebAssembly stages) and the
# viewer of processed-user-login. Ctrl-C stops everything.
#   RATE=2000 events/s by default; MALFORMED / MISSING shares as for `generate`.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
RATE="${RATE:-2000}"
timed "building the plugins" tests/scripts/build-plugins.sh
timed "building pipeline-host" cargo build --quiet --release -p pipeline-host
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if [ -z "${PIPELINE_BOOTSTRAP:-}" ]; then
  export PIPELINE_BOOTSTRAP=127.0.0.1:9092
  if (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    step "a broker already listens on 127.0.0.1:9092: using it"
  else
    pids+=("$(tests/scripts/broker.sh start 9092)")
  fi
fi
step "generator: $RATE events/s into user-login (logs: $PIPELINE_CACHE/generator.log)"
"$PIPELINE_HOST_BIN" generate --topic user-login --rate "$RATE" \
  --malformed "${MALFORMED:-0.01}" --missing "${MISSING:-0.02}" --seed "$RANDOM" \
  >"$PIPELINE_CACHE/generator.log" 2>&1 &
pids+=($!)
step "pipeline: user-login -> 4 stages -> processed-user-login (logs: $PIPELINE_CACHE/pipeline.log)"
"$PIPELINE_HOST_BIN" --config host/pipeline.example.toml --stats-interval-ms 5000 \
  >"$PIPELINE_CACHE/pipeline.log" 2>&1 &
pids+=($!)
step "viewer (Ctrl-C to stop everything):"
"$PIPELINE_HOST_BIN" view --topic processed-user-login --from latest
