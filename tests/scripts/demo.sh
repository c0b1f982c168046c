#!/usr/bin/env bash
# The whole pipeline on this machine: builds the plugins and the host, starts
# a local Apache Kafka (one KRaft node, tests/scripts/kafka.sh) on
# 127.0.0.1:9092 unless PIPELINE_BOOTSTRAP points at one,
# then runs the generator, the pipeline (four WebAssembly stages) and the
# viewer of processed-user-login. Ctrl-C stops everything (the pipeline
# flushes and commits first: the generator, pipeline and broker run in their
# own sessions so that only the script signals them, once).
#   RATE=2000 events/s by default; MALFORMED / MISSING shares as for `generate`.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
RATE="${RATE:-2000}"
timed "building the plugins" tests/scripts/build-plugins.sh
timed "building pipeline-host" cargo build --quiet --release -p pipeline-host
pids=()
cleanup() {
  trap - EXIT INT TERM
  # Stop the generator and the pipeline first (it flushes and commits), then the broker.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; sleep 1; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
if [ -z "${PIPELINE_BOOTSTRAP:-}" ]; then
  export PIPELINE_BOOTSTRAP=127.0.0.1:9092
  if (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    step "a broker already listens on 127.0.0.1:9092: using it"
  else
    node="$PIPELINE_CACHE/demo-kafka"
    timed "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:9092 (log: $node/server.log)" \
      tests/scripts/kafka.sh start "$node" 9092 >"$PIPELINE_CACHE/demo-kafka.txt"
    pids+=("$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$PIPELINE_CACHE/demo-kafka.txt")")
  fi
fi
step "generator: $RATE events/s into user-login (logs: $PIPELINE_CACHE/generator.log)"
setsid "$PIPELINE_HOST_BIN" generate --topic user-login --rate "$RATE" \
  --malformed "${MALFORMED:-0.01}" --missing "${MISSING:-0.02}" --seed "$RANDOM" \
  >"$PIPELINE_CACHE/generator.log" 2>&1 &
pids+=($!)
step "pipeline: user-login -> 4 stages -> processed-user-login (logs: $PIPELINE_CACHE/pipeline.log)"
setsid "$PIPELINE_HOST_BIN" --config host/pipeline.example.toml --stats-interval-ms 5000 \
  >"$PIPELINE_CACHE/pipeline.log" 2>&1 &
pids+=($!)
step "viewer (Ctrl-C to stop everything):"
"$PIPELINE_HOST_BIN" view --topic processed-user-login --from latest
