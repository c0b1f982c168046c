#!/usr/bin/env bash
# Runs every test: builds the plugins and the host, makes sure the test broker
# (nisshi) and Python confluent-kafka are installed (cached outside the
# checkout), then runs the workspace's tests. Each test starts its own broker.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
timed "installing the test broker" tests/scripts/broker.sh install
if ! "$PIPELINE_PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
  step "installing Python confluent-kafka into $PIPELINE_CACHE/venv"
  python3 -m venv "$PIPELINE_CACHE/venv"
  "$PIPELINE_CACHE/venv/bin/pip" install --quiet 'confluent-kafka==2.*'
fi
if ! command -v "${PIPELINE_CHROMIUM:-chromium}" >/dev/null; then
  # The status page's test renders it in a real browser.
  timed "installing chromium" bash -c 'apt-get update -qq && apt-get install -y -qq chromium'
fi
timed "building the plugins" tests/scripts/build-plugins.sh
timed "building the Python stage" tests/scripts/build-python-stage.sh
timed "building pipeline-host" cargo build --quiet --release -p pipeline-host
timed "running the tests" cargo test --release --workspace "$@"
