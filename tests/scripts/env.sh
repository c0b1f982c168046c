# Sourced by the other scripts: where caches live (outside the checkout) and
# small helpers. Override any of these from the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PIPELINE_CACHE="${PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasm-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PIPELINE_CACHE/target}"
NISSHI_VERSION=0.8.1
NISSHI_FEATURES="${NISSHI_FEATURES:-dynostore,libsql}"
export NISSHI_BIN="${NISSHI_BIN:-$PIPELINE_CACHE/nisshi-$NISSHI_VERSION-${NISSHI_FEATURES//,/-}/bin/nisshi}"
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
