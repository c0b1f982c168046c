#!/usr/bin/env bash
# The test broker, nisshi (a Kafka-compatible broker in Rust).
#   broker.sh install            build it once into the cache (nightly toolchain)
#   broker.sh start [PORT]       start it on 127.0.0.1:PORT (default 9092) in the
#                                background with in-memory storage; prints its pid
source "$(dirname "$0")/env.sh"

install() {
  if [ -x "$NISSHI_BIN" ]; then return; fi
  if ! rustup toolchain list | grep -q '^nightly'; then
    step "installing the nightly toolchain (nisshi needs rustc >= 1.96)"
    rustup toolchain install nightly --profile minimal
  fi
  step "building nisshi $NISSHI_VERSION (features $NISSHI_FEATURES) into $NISSHI_BIN; 15-25 minutes on 2 cores, once"
  CARGO_TARGET_DIR="$PIPELINE_CACHE/nisshi-build" cargo +nightly install nisshi \
    --version "$NISSHI_VERSION" --locked --no-default-features --features "$NISSHI_FEATURES" \
    --root "$(dirname "$(dirname "$NISSHI_BIN")")"
}

start() {
  local port="${1:-9092}"
  local log="$PIPELINE_CACHE/nisshi-$port.log"
  install
  setsid "$NISSHI_BIN" broker --storage-engine "memory://pipeline-$port/" \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$pid"; return; fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "nisshi did not listen on $port; log: $log" >&2
  exit 1
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  *) echo "usage: $0 install | start [PORT]" >&2; exit 2 ;;
esac
