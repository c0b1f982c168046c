#!/usr/bin/env bash
# Builds the default stages (and the test fixtures) for wasm32-wasip2 with the
# `plugin` profile (opt-level 3, LTO) and places them where the README's command
# expects them: plugins/<stage>.wasm and plugins/fixtures/<fixture>.wasm.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  step "installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
# WebAssembly SIMD (simd128) lets the SDK's byte scanning (memchr) use vector
# instructions; wasmtime's Cranelift compiles them to SSE/AVX.
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="${CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS:--C target-feature=+simd128}"
STAGES=(android_filter enrich categorize anomaly version_counts router)
FIXTURES=(probe hostile)
args=()
for p in "${STAGES[@]}" "${FIXTURES[@]}"; do args+=(-p "$p"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"
out="$CARGO_TARGET_DIR/wasm32-wasip2/plugin"
for p in "${STAGES[@]}"; do cp "$out/$p.wasm" "plugins/$p.wasm"; done
for p in "${FIXTURES[@]}"; do cp "$out/$p.wasm" "plugins/fixtures/$p.wasm"; done
step "plugins built: $(cd plugins && ls *.wasm fixtures/*.wasm | tr '\n' ' ')"
