# Sourced by the other scripts: where caches live (outside the checkout) and
# small helpers. Override any of these from the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PIPELINE_CACHE="${PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasm-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PIPELINE_CACHE/target}"
# Apache Kafka, the broker of every test (tests/scripts/kafka.sh); the same
# version as the image in docker-compose.yml.
export KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
export KAFKA_LIBS="${KAFKA_LIBS:-$PIPELINE_CACHE/kafka-$KAFKA_VERSION/libs}"
export PIPELINE_HOST_BIN="${PIPELINE_HOST_BIN:-$CARGO_TARGET_DIR/release/pipeline-host}"
export PIPELINE_PYTHON="${PIPELINE_PYTHON:-$PIPELINE_CACHE/venv/bin/python}"
mkdir -p "$PIPELINE_CACHE"

step() { echo "==> $*" >&2; }

# Runs a command and prints how long it took.
timed() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@"
  echo "==> $name took $((SECONDS - t0)) s" >&2
}
