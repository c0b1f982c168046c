#!/usr/bin/env bash
# The benchmark suite (figures, never timed tests). Prints one report:
#  1. in memory, no broker (`pipeline-host bench`): the default chain with
#     WebAssembly stages (epoch, fuel, unbounded) against native, and one
#     stage reading one field lazily against parsing the whole event;
#  2. the broker alone: produce and fetch rates of a local Apache Kafka with a
#     plain client (the ceiling for everything below);
#  3. end to end through that broker, on the same EVENTS events: pipeline-host
#     (the default chain); the same chain on Confluent's native Rust client
#     (tests/bench/confluent-rust, its output first checked record for record
#     against pipeline-host's on 100,000 events); the seed's consumer in
#     Python on kafka-python and on confluent-kafka
#     (tests/bench/seed_consumer.py); each peer for at most RUN_SECONDS
#     seconds; input events/s, CPU us per event, peak RSS;
#  4. growth: pipeline-host on 1,000,000 events on 1, 3 and 6 partitions and
#     on 10,000,000 events on 6 (events/s, CPU us per event, peak RSS);
#  5. latency at a fixed offered rate (RATE events/s for RUN_SECONDS s):
#     event timestamp at produce -> record readable on the output, p50/p99;
#  6. formats (tests/scripts/bench-formats.sh): the default chain on Avro in
#     and out against JSON, same events: events/s, CPU us/event, peak RSS;
#  7. routes (tests/scripts/bench-routes.sh): the default chain plus the
#     router (flagged events to a second topic) against the chain alone.
# Knobs: EVENTS (5000000), PARTITIONS (6), RUN_SECONDS (30), RATE (50000),
# BENCH_EVENTS (200000, in-memory), SKIP_PYTHON=1 (no Python peer runs),
# SKIP_GROWTH=1, SKIP_FORMATS=1, FORMAT_EVENTS (1000000), SKIP_ROUTES=1,
# ROUTE_EVENTS (1000000).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
# The broker gets more heap than in the tests: it holds millions of events.
export KAFKA_HEAP="${KAFKA_HEAP:-1g}"
EVENTS="${EVENTS:-5000000}"
PARTITIONS="${PARTITIONS:-6}"
SECONDS_PER_RUN="${RUN_SECONDS:-30}"
RATE="${RATE:-50000}"
out="$PIPELINE_CACHE/bench"
mkdir -p "$out"
# The report reads every row from these files: none may be left from an
# earlier run (SKIP_PYTHON=1 would print its Python rows).
rm -f "$out"/*.out "$out"/*.time "$out"/*.rusage "$out"/*.json
tests/scripts/build-plugins.sh >&2
cargo build --quiet --release -p pipeline-host --features native-stages
# The native Rust peer is a crate of its own (its dependencies stay out of the
# workspace) with a target folder of its own outside the checkout.
peer_target="$PIPELINE_CACHE/target-peer"
cargo build --quiet --release --manifest-path tests/bench/confluent-rust/Cargo.toml \
  --target-dir "$peer_target"
peer="$peer_target/release/seed-confluent-rust"
# confluent-kafka (Python) also checks the native peer's output, so it is
# installed even with SKIP_PYTHON=1.
if ! "$PIPELINE_PYTHON" -c 'import kafka, confluent_kafka' 2>/dev/null; then
  step "installing kafka-python and confluent-kafka into the venv"
  [[ -x "$PIPELINE_PYTHON" ]] || python3 -m venv "${PIPELINE_PYTHON%/bin/python}"
  "$PIPELINE_PYTHON" -m pip install --quiet 'kafka-python==2.*' 'confluent-kafka==2.*'
fi
host="$PIPELINE_HOST_BIN"
stages=("${DEFAULT_CHAIN[@]}")

step "in-memory chain"
"$host" bench --events "${BENCH_EVENTS:-200000}" --runs 3 >"$out/memory.txt"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
kdir="$PIPELINE_CACHE/bench-kafka"
rm -rf "$kdir"
step "starting Apache Kafka $KAFKA_VERSION (heap $KAFKA_HEAP) on 127.0.0.1:$port"
tests/scripts/kafka.sh start "$kdir" "$port" >/dev/null
trap 'tests/scripts/kafka.sh kill "$kdir"' EXIT
boot="127.0.0.1:$port"

step "broker alone (1,000,000 events)"
"$host" bench --broker "$boot" --events 1000000 --partitions "$PARTITIONS" 2>/dev/null >"$out/broker.json"

# generate_input TOPIC COUNT PARTITIONS: the benchmark's input mix, 1%
# undecodable and 2% missing a field.
generate_input() {
  "$host" generate --bootstrap "$boot" --topic "$1" --count "$2" --partitions "$3" \
    --malformed 0.01 --missing 0.02 --batch 1000 2>/dev/null
}

step "generating $EVENTS events"
generate_input bench-in "$EVENTS" "$PARTITIONS"

# Runs "$@" under /usr/bin/time; writes NAME.time (wall user sys rss_kb).
measure() {
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$out/$name.rusage" "$@" >"$out/$name.out" 2>"$out/$name.log"
  t1=$(date +%s.%N)
  echo "$t0 $t1 $(cat "$out/$name.rusage")" >"$out/$name.time"
}

step "end to end: pipeline-host"
# As deployed: the stages come from a compile cache, filled beforehand by
# `plugin check` (a first start without it compiles them; docs/benchmarks.md).
export XDG_CACHE_HOME="$out/xdg"   # the default cache, kept apart
rm -rf "$XDG_CACHE_HOME"
warm_default_chain "$host"
measure pipeline "$host" --bootstrap "$boot" --input bench-in --output bench-out \
  --partitions "$PARTITIONS" --until-end "${stages[@]}"
grep -q "pipeline stopped" "$out/pipeline.log" || { echo "pipeline did not finish; see $out/pipeline.log" >&2; exit 1; }

# Creates the topics "$@" (the broker creates none by itself).
create_topics() {
  for t in "$@"; do
    tests/scripts/kafka.sh tool topics --bootstrap-server "$boot" --create --if-not-exists \
      --topic "$t" --partitions "$PARTITIONS" >/dev/null
  done
}

step "same output: pipeline-host and the native Rust peer on 100,000 events"
generate_input check-in 100000 "$PARTITIONS"
create_topics check-peer
"$host" --bootstrap "$boot" --input check-in --output check-host --partitions "$PARTITIONS" \
  --group check-host --until-end "${stages[@]}" 2>"$out/check-host.log"
"$peer" --bootstrap "$boot" --input check-in --output check-peer --group check-peer \
  --count 100000 --seconds 120 >"$out/check-peer.out"
"$PIPELINE_PYTHON" tests/bench/same_output.py --bootstrap "$boot" check-host check-peer \
  >"$out/same-output.json" || { cat "$out/same-output.json" >&2; echo "the peer's output differs from pipeline-host's" >&2; exit 1; }

step "end to end: the default chain on confluent-kafka (Rust) (at most $SECONDS_PER_RUN s)"
create_topics bench-out-confluent-rust
measure confluent-rust "$peer" --bootstrap "$boot" --input bench-in --output bench-out-confluent-rust \
  --group bench-confluent-rust --count "$EVENTS" --seconds "$SECONDS_PER_RUN"

if [[ -z "${SKIP_PYTHON:-}" ]]; then
  for client in kafka-python confluent; do
    step "end to end: seed consumer on $client (at most $SECONDS_PER_RUN s)"
    create_topics "bench-out-$client"
    measure "$client" "$PIPELINE_PYTHON" tests/bench/seed_consumer.py --client "$client" \
      --bootstrap "$boot" --input bench-in --output "bench-out-$client" --group "bench-$client" \
      --count "$EVENTS" --seconds "$SECONDS_PER_RUN"
  done
fi

growth=()
if [[ -z "${SKIP_GROWTH:-}" ]]; then
  for spec in "1000000 1" "1000000 3" "1000000 6" "10000000 6"; do
    read -r n p <<<"$spec"
    name="grow-$n-$p"
    step "growth: pipeline-host on $n events, $p partitions"
    generate_input "$name-in" "$n" "$p"
    measure "$name" "$host" --bootstrap "$boot" --input "$name-in" --output "$name-out" \
      --partitions "$p" --until-end "${stages[@]}"
    growth+=("$name")
    # The input is read; its disk goes back before the next, larger run.
    tests/scripts/kafka.sh tool topics --bootstrap-server "$boot" --delete --topic "$name-in" >/dev/null
  done
fi

step "latency at $RATE events/s offered for $SECONDS_PER_RUN s"
"$host" --bootstrap "$boot" --input lat-in --output lat-out --partitions "$PARTITIONS" \
  "${stages[@]}" 2>"$out/latency-pipeline.log" &
pipeline=$!
"$host" latency --bootstrap "$boot" --topic lat-out --warmup-secs 5 --seconds "$SECONDS_PER_RUN" \
  >"$out/latency.json" 2>/dev/null &
probe=$!
"$host" generate --bootstrap "$boot" --topic lat-in --partitions "$PARTITIONS" --rate "$RATE" \
  --batch 50 --count $(( RATE * (SECONDS_PER_RUN + 8) )) 2>/dev/null &
generator=$!
wait $probe
kill $generator $pipeline 2>/dev/null || true
wait 2>/dev/null || true

python3 - "$out" "$EVENTS" "$PARTITIONS" "$RATE" "$SECONDS_PER_RUN" "${growth[@]}" <<'PY'
import json, os, sys
out, events, parts, rate, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
growth = sys.argv[6:]
print(open(os.path.join(out, "memory.txt")).read())
b = json.load(open(os.path.join(out, "broker.json")))
print(f"broker alone (Apache Kafka {os.environ['KAFKA_VERSION']} on loopback, plain rskafka client, {parts} partitions)")
print(f"  produce {b['produce_per_sec']:,.0f} events/s   fetch {b['fetch_per_sec']:,.0f} events/s\n")

def row(name, events_read):
    t0, t1, user, sys_, rss = open(os.path.join(out, name + ".time")).read().split()
    wall = float(t1) - float(t0)
    return events_read, wall, (float(user) + float(sys_)) * 1e6 / max(events_read, 1), int(rss) / 1024

rows = [("pipeline-host (wasm stages)", *row("pipeline", events))]
peers = [("confluent-rust", "chain on confluent-kafka Rust"), ("kafka-python", "seed on kafka-python"),
         ("confluent", "seed on confluent-kafka Py")]
for client, label in peers:
    path = os.path.join(out, client + ".out")
    if os.path.exists(path):
        r = json.loads(open(path).read().strip().splitlines()[-1])
        n, wall, cpu, rss = row(client, r["events"])
        rows.append((label, n, r["seconds"], cpu, rss))
same = json.load(open(os.path.join(out, "same-output.json")))
print(f"same output: pipeline-host {same['check-host']:,} records, the native Rust peer {same['check-peer']:,}, "
      f"{same['only_check-host'] + same['only_check-peer']} differ (100,000 events, processed_timestamp aside)\n")
print(f"end to end through the broker, {events:,} events on {parts} partitions, default chain")
print(f"{'implementation':<30} {'events':>10} {'seconds':>8} {'events/s':>10} {'CPU us/event':>13} {'peak RSS MB':>12} {'vs pipeline-host':>17}")
base = rows[0][1] / rows[0][2]
for name, n, wall, cpu, rss in rows:
    rate_ = n / wall
    print(f"{name:<30} {n:>10,} {wall:>8.1f} {rate_:>10,.0f} {cpu:>13.2f} {rss:>12.1f} {base / rate_:>16.1f}x")
if growth:
    print(f"\ngrowth, pipeline-host, default chain (seconds include start-up)")
    print(f"{'events':>10} {'partitions':>10} {'seconds':>8} {'events/s':>10} {'CPU us/event':>13} {'peak RSS MB':>12}")
    for name in growth:
        _, n, p = name.split("-")
        n_, wall, cpu, rss = row(name, int(n))
        print(f"{n_:>10,} {p:>10} {wall:>8.1f} {n_ / wall:>10,.0f} {cpu:>13.2f} {rss:>12.1f}")
lat = json.load(open(os.path.join(out, "latency.json")))
print(f"\nlatency, pipeline-host at {int(rate):,} events/s offered for {secs} s (produce timestamp -> readable on the output)")
print(f"  records {lat['records']:,}   p50 {lat['p50_ms']:.0f} ms   p99 {lat['p99_ms']:.0f} ms   max {lat['max_ms']:.0f} ms")
print("\n(pipeline-host's seconds include start-up and reading to the end; the peers are timed from their first message)")
PY

if [[ -z "${SKIP_FORMATS:-}" ]]; then
  echo
  tests/scripts/bench-formats.sh 2>/dev/null
fi

if [[ -z "${SKIP_ROUTES:-}" ]]; then
  echo
  tests/scripts/bench-routes.sh 2>/dev/null
fi
