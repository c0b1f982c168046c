# Sourced by the other scripts: where caches live (outside the checkout) and
# small helpers. Override any of these from the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PIPELINE_CACHE="${PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasm-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PIPELINE_CACHE/target}"
# Apache Kafka, the broker of every test (tests/scripts/kafka.sh); the same
# version as the image in docker-compose.yml.
export KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
export KAFKA_LIBS="${KAFKA_LIBS:-$PIPELINE_CACHE/kafka-$KAFKA_VERSION/libs}"
# Apicurio Registry, the Schema Registry of the tests (tests/scripts/registry.sh);
# the same version as the image in docker-compose.yml.
export REGISTRY_VERSION="${REGISTRY_VERSION:-3.3.3}"
export REGISTRY_HOME="${REGISTRY_HOME:-$PIPELINE_CACHE/apicurio-$REGISTRY_VERSION}"
export PIPELINE_HOST_BIN="${PIPELINE_HOST_BIN:-$CARGO_TARGET_DIR/release/pipeline-host}"
export PIPELINE_PYTHON="${PIPELINE_PYTHON:-$PIPELINE_CACHE/venv/bin/python}"
mkdir -p "$PIPELINE_CACHE"

step() { echo "==> $*" >&2; }

# The default chain's stages, in order, and the same as `pipeline-host`
# flags, for the benchmark scripts.
DEFAULT_STAGES=(android_filter enrich categorize anomaly)
DEFAULT_CHAIN=()
for s in "${DEFAULT_STAGES[@]}"; do DEFAULT_CHAIN+=(--plugin "plugins/$s.wasm"); done
unset s

# Compiles the default chain into the compile cache under $XDG_CACHE_HOME with
# binary $1, so a timed run starts as a deployment does.
warm_default_chain() {
  local s
  for s in "${DEFAULT_STAGES[@]}"; do
    "$1" plugin check "plugins/$s.wasm" >/dev/null
  done
}

# bench_setup NAME: the common start of benchmark NAME: a fresh folder
# $out ($PIPELINE_CACHE/NAME), the release binary $host and the plugins
# built, one Kafka node (start_kafka NAME: $BOOT), and the default chain
# compiled into $out's compile cache, as a deployment starts.
bench_setup() {
  out="$PIPELINE_CACHE/$1"
  rm -rf "$out"
  mkdir -p "$out"
  host="$PIPELINE_HOST_BIN"
  [[ -x "$host" ]] || cargo build --quiet --release -p pipeline-host
  "$ROOT/tests/scripts/build-plugins.sh" >&2
  start_kafka "$1"
  export XDG_CACHE_HOME="$out/xdg"
  warm_default_chain "$host"
}

# bench_run HOST OUT NAME INPUT [FLAGS..]: one timed run of the default chain
# (plus FLAGS) with binary HOST from topic INPUT to the end ($BOOT,
# $PARTITIONS), into out-NAME and dlq-NAME; writes OUT/NAME.time (start,
# end, user and system seconds, peak RSS KB) and OUT/NAME.records for
# tests/scripts/bench_runs.py.
bench_run() {
  local host="$1" out="$2" name="$3" input="$4"; shift 4
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$out/$name.rusage" "$host" --bootstrap "$BOOT" \
    --input "$input" --output "out-$name" --dlq "dlq-$name" --partitions "$PARTITIONS" \
    --until-end "${DEFAULT_CHAIN[@]}" "$@" >/dev/null 2>"$out/$name.log"
  t1=$(date +%s.%N)
  grep -q "pipeline stopped" "$out/$name.log" || { echo "the $name run did not finish; see $out/$name.log" >&2; return 1; }
  echo "$t0 $t1 $(cat "$out/$name.rusage")" >"$out/$name.time"
  grep -o 'records_out=[0-9]*' "$out/$name.log" | tail -1 >"$out/$name.records"
}

# supervise PID DETACHED READY CHECK..: the rest of a `run` command once its
# server PID is started in the background: unless DETACHED is non-empty,
# standard input closing (the test process ended) kills PID; SIGTERM and
# SIGINT are passed on; "ready READY" is printed once the command CHECK..
# succeeds; then it waits for PID and exits with its status.
supervise() {
  local pid="$1" detached="$2" ready="$3"; shift 3
  local watch=""
  if [[ -z "$detached" ]]; then
    exec 3<&0
    ( cat <&3 >/dev/null; kill -9 "$pid" 2>/dev/null ) &
    watch=$!
    exec 3<&-
  fi
  # shellcheck disable=SC2064
  trap "kill -TERM $pid 2>/dev/null" TERM INT
  if "$@"; then
    echo "ready $ready"
  fi
  { wait "$pid"; } 2>/dev/null
  local rc=$?
  [[ -n "$watch" ]] && kill "$watch" 2>/dev/null
  exit "$rc"
}

# Runs a command and prints how long it took.
timed() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@"
  echo "==> $name took $((SECONDS - t0)) s" >&2
}

# Starts a throwaway Apache Kafka node for a script, in $PIPELINE_CACHE/$1-kafka
# on a free port, killed when the script exits; sets BOOT to its address.
start_kafka() {
  local port kdir="$PIPELINE_CACHE/$1-kafka"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$kdir"
  KAFKA_HEAP="${KAFKA_HEAP:-1g}" "$ROOT/tests/scripts/kafka.sh" start "$kdir" "$port" >/dev/null
  trap "\"$ROOT/tests/scripts/kafka.sh\" kill \"$kdir\"" EXIT
  BOOT="127.0.0.1:$port"
}
