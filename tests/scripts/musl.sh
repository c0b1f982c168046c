#!/usr/bin/env bash
# The static build: installs what it needs (musl-tools, the
# x86_64-unknown-linux-musl target), builds pipeline-host as one static
# binary (mimalloc as allocator), checks it has no dynamic dependencies,
# and runs the end-to-end, interop (lz4 and zstd input), TLS/SASL and
# schema-registry format tests with it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if ! command -v musl-gcc >/dev/null; then
  timed "installing musl-tools" bash -c 'apt-get update -qq && apt-get install -y -qq musl-tools'
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  timed "installing the musl target" rustup target add x86_64-unknown-linux-musl
fi
timed "building the static pipeline-host" \
  cargo build --quiet --release --target x86_64-unknown-linux-musl -p pipeline-host
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/pipeline-host"
file "$bin" | grep -q 'static' || { echo "$bin is not statically linked: $(file "$bin")" >&2; exit 1; }
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "$bin loads shared libraries: $(ldd "$bin")" >&2
  exit 1
fi
step "static binary: $(du -h "$bin" | cut -f1) with debug info, $(strip -o /tmp/pipeline-host.stripped "$bin" && du -h /tmp/pipeline-host.stripped | cut -f1) stripped"
# end_to_end: the default chain; interop: confluent-kafka produces the input
# uncompressed, lz4 and zstd, and reads the output back; security: TLS
# (rustls, ring) and SCRAM end to end; formats: Avro, Protobuf and JSON
# Schema through a schema registry (its HTTP client is hyper + rustls too).
timed "end-to-end, interop, security and format tests with the static binary" \
  env PIPELINE_HOST_BIN="$bin" cargo test --quiet --release -p pipeline-tests --test end_to_end --test interop --test security --test formats
