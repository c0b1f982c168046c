#!/usr/bin/env bash
# Scaling figures (printed, never asserted), through a local broker:
#  1. one process, the default chain, EVENTS events on 1, 3 and 6 partitions;
#  2. 1, 2 and 3 processes in one consumer group over 6 partitions;
#  3. the glibc build beside the static musl build (mimalloc), 6 partitions,
#     when target/x86_64-unknown-linux-musl/release/pipeline-host exists
#     (cargo build --release --target x86_64-unknown-linux-musl -p pipeline-host).
# Knobs: EVENTS (2000000).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
# The broker gets more heap than in the tests: it holds millions of events.
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${EVENTS:-2000000}"
tests/scripts/build-plugins.sh >&2
cargo build --quiet --release -p pipeline-host
glibc="$PIPELINE_HOST_BIN"
musl="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/pipeline-host"
stages=("${DEFAULT_CHAIN[@]}")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
kdir="$PIPELINE_CACHE/scaling-kafka"
rm -rf "$kdir"
step "starting Apache Kafka $KAFKA_VERSION (heap $KAFKA_HEAP) on 127.0.0.1:$port"
tests/scripts/kafka.sh start "$kdir" "$port" >/dev/null
trap 'tests/scripts/kafka.sh kill "$kdir"' EXIT
boot="127.0.0.1:$port"

# events/s of `$1` processes of binary `$2` reading topic `$3` to its end.
run() {
  local procs="$1" bin="$2" topic="$3" group=() pids=() t0 t1
  [[ "$procs" -gt 1 ]] && group=(--group "scale-$topic-$procs-$RANDOM" --session-timeout-ms 6000)
  t0=$(date +%s.%N)
  for ((i = 0; i < procs; i++)); do
    "$bin" --bootstrap "$boot" --input "$topic" --output "$topic-out-$procs-$RANDOM" \
      --until-end --no-compile-cache "${group[@]}" "${stages[@]}" 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$(date +%s.%N)
  python3 -c "print(f'{$EVENTS / ($t1 - $t0):,.0f}')"
}

echo "scaling through the local broker (Apache Kafka $KAFKA_VERSION on loopback, same 2 cores), $EVENTS events, default chain"
printf '%-44s %14s\n' "setup" "input events/s"
for p in 1 3 6; do
  "$glibc" generate --bootstrap "$boot" --topic "scale-$p" --count "$EVENTS" --partitions "$p" \
    --batch 1000 2>/dev/null
  printf '%-44s %14s\n' "1 process, $p partition(s)" "$(run 1 "$glibc" "scale-$p")"
done
for n in 2 3; do
  printf '%-44s %14s\n' "$n processes in one group, 6 partitions" "$(run "$n" "$glibc" scale-6)"
done
if [[ -x "$musl" ]]; then
  printf '%-44s %14s\n' "static musl + mimalloc, 1 process, 6 parts" "$(run 1 "$musl" scale-6)"
  printf '%-44s %14s\n' "glibc, 1 process, 6 parts (again)" "$(run 1 "$glibc" scale-6)"
else
  echo "(no musl build at $musl: skipped the musl row)"
fi
