#!/usr/bin/env bash
# Builds the Python port of the `anomaly` stage (plugins/python/anomaly/app.py)
# into plugins/anomaly_py.wasm with componentize-py, installed on demand into
# the venv of env.sh ($PIPELINE_PYTHON). Skips the build when the component
# is newer than app.py and wit/stage.wit.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
COMPONENTIZE_PY_VERSION=0.25.1
APP_DIR=plugins/python/anomaly
WIT=wit/stage.wit
OUT=plugins/anomaly_py.wasm

if [[ -f "$OUT" && "$OUT" -nt "$APP_DIR/app.py" && "$OUT" -nt "$WIT" ]]; then
  step "$OUT is up to date"
  exit 0
fi

if [[ ! -x "$PIPELINE_PYTHON" ]]; then
  step "creating the venv ${PIPELINE_PYTHON%/bin/python}"
  python3 -m venv "${PIPELINE_PYTHON%/bin/python}"
fi
installed="$("$PIPELINE_PYTHON" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)"
if [[ "$installed" != "$COMPONENTIZE_PY_VERSION" ]]; then
  step "installing componentize-py $COMPONENTIZE_PY_VERSION into ${PIPELINE_PYTHON%/bin/python}"
  "$PIPELINE_PYTHON" -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# Written beside the output and renamed, so a failed build never leaves a
# fresh-looking component behind.
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
timed "building $OUT (componentize-py $COMPONENTIZE_PY_VERSION)" \
  "$(dirname "$PIPELINE_PYTHON")/componentize-py" --quiet -d wit -w stage \
  componentize app -p "$APP_DIR" -o "$tmp"
mv "$tmp" "$OUT"
# componentize-py byte-compiles the app in place; keep the source tree clean.
rm -rf "$APP_DIR/__pycache__"
step "built $OUT ($(( $(stat -c %s "$OUT") / 1024 )) KiB)"
