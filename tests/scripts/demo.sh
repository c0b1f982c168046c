#!/usr/bin/env bash
# The whole pipeline on this machine: builds the plugins and the host, starts
# a local Apache Kafka (one KRaft node, tests/scripts/kafka.sh) on
# 127.0.0.1:9092 unless PIPELINE_BOOTSTRAP points at one,
# then runs the generator, the pipeline (the WebAssembly stages of
# host/pipeline.example.toml) and the viewers of processed-user-login and of
# suspicious-logins (the events anomaly flags, routed there by router). Ctrl-C stops everything (the pipeline
# flushes and commits first: the generator, pipeline and broker run in their
# own sessions so that only the script signals them, once).
#   RATE=2000 events/s by default; MALFORMED / MISSING shares as for `generate`.
#   demo.sh --format avro (or FORMAT=avro|protobuf|json-schema): the events go
#   through a local schema registry (Apicurio, tests/scripts/registry.sh, on
#   127.0.0.1:8081 unless PIPELINE_REGISTRY_URL points at one): the generator
#   registers the seed schema and frames each event, the pipeline decodes them
#   and writes Avro (with --format avro; JSON for the other formats), and the
#   viewer decodes what it prints.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
RATE="${RATE:-2000}"
FORMAT="${FORMAT:-json}"
if [[ "${1:-}" == "--format" && -n "${2:-}" ]]; then FORMAT="$2"; fi
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
generated=() formats=() viewed=()
if [[ "$FORMAT" != json ]]; then
  if [ -z "${PIPELINE_REGISTRY_URL:-}" ]; then
    export PIPELINE_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7
    if (exec 3<>/dev/tcp/127.0.0.1/8081) 2>/dev/null; then
      step "a registry already listens on 127.0.0.1:8081: using it"
    else
      timed "starting Apicurio Registry $REGISTRY_VERSION on 127.0.0.1:8081" \
        tests/scripts/registry.sh start "$PIPELINE_CACHE/demo-registry" 8081 >"$PIPELINE_CACHE/demo-registry.txt"
      pids+=("$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$PIPELINE_CACHE/demo-registry.txt")")
    fi
  fi
  generated=(--format "$FORMAT")
  formats=(--input-format "$FORMAT")
  if [[ "$FORMAT" == avro ]]; then
    formats+=(--output-format avro --output-schema host/schemas/processed-login.avsc)
    viewed=(--format avro)
  fi
fi
step "generator: $RATE $FORMAT events/s into user-login (logs: $PIPELINE_CACHE/generator.log)"
setsid "$PIPELINE_HOST_BIN" generate --topic user-login --rate "$RATE" "${generated[@]}" \
  --malformed "${MALFORMED:-0.01}" --missing "${MISSING:-0.02}" --seed "$RANDOM" \
  >"$PIPELINE_CACHE/generator.log" 2>&1 &
pids+=($!)
step "pipeline: user-login -> 6 stages -> processed-user-login, suspicious-logins (logs: $PIPELINE_CACHE/pipeline.log)"
setsid "$PIPELINE_HOST_BIN" --config host/pipeline.example.toml --stats-interval-ms 5000 \
  "${formats[@]}" >"$PIPELINE_CACHE/pipeline.log" 2>&1 &
pids+=($!)
step "viewers of both topics, each line tagged with its topic (Ctrl-C to stop everything):"
# The route's viewer runs beside the output's, tagging its lines.
"$PIPELINE_HOST_BIN" view --topic suspicious-logins --from latest "${viewed[@]}" 2>/dev/null \
  | sed -u 's/^/[suspicious-logins] /' &
pids+=($!)
"$PIPELINE_HOST_BIN" view --topic processed-user-login --from latest "${viewed[@]}" \
  | sed -u 's/^/[processed-user-login] /'
