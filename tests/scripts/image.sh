#!/usr/bin/env bash
# Assembles the FROM-scratch image of host/Containerfile.static without a
# container engine: a rootfs tarball and an OCI image layout (load it with
# `skopeo copy oci:DIR docker-daemon:pipeline-host:static`, or push it with
# any OCI tool). Then checks the image by running its binary from the
# unpacked rootfs: `--version` and `plugin check` of every stage it carries.
# Output: $PIPELINE_CACHE/image/{rootfs.tar,oci/}.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/pipeline-host"
if rustup target list --installed | grep -qx x86_64-unknown-linux-musl && command -v musl-gcc >/dev/null; then
  cargo build --quiet --release --target x86_64-unknown-linux-musl -p pipeline-host
else
  tests/scripts/musl.sh
fi
tests/scripts/build-plugins.sh >&2
out="$PIPELINE_CACHE/image"
rm -rf "$out" && mkdir -p "$out"
python3 - "$bin" "$out" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile, time
bin_path, out = sys.argv[1], sys.argv[2]
stages = ["android_filter", "enrich", "categorize", "anomaly", "version_counts"]
files = [(bin_path, "usr/local/bin/pipeline-host", 0o755, True)]
files += [(f"plugins/{s}.wasm", f"opt/pipeline/plugins/{s}.wasm", 0o644, False) for s in stages]
files += [("host/pipeline.example.toml", "opt/pipeline/config/pipeline.toml", 0o644, False)]

def add(tar, path, data, mode):
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for d in ["usr", "usr/local", "usr/local/bin", "opt", "opt/pipeline", "opt/pipeline/plugins",
              "opt/pipeline/config", "tmp"]:
        info = tarfile.TarInfo(d)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 0
        tar.addfile(info)
    for src, dst, mode, strip in files:
        data = open(src, "rb").read()
        if strip:  # the stripped binary: debug info is not shipped
            os.system(f"strip -o {out}/pipeline-host.stripped {src}")
            data = open(f"{out}/pipeline-host.stripped", "rb").read()
        add(tar, dst, data, mode)
raw = layer.getvalue()
open(os.path.join(out, "rootfs.tar"), "wb").write(raw)

oci = os.path.join(out, "oci")
blobs = os.path.join(oci, "blobs", "sha256")
os.makedirs(blobs)
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, digest), "wb").write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}
gz = gzip.compress(raw, mtime=0)
layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(gz)}
config = {
    "architecture": "amd64", "os": "linux",
    "config": {"User": "65534:65534", "Env": ["XDG_CACHE_HOME=/tmp"],
               "Entrypoint": ["/usr/local/bin/pipeline-host"],
               "Cmd": ["--config", "/opt/pipeline/config/pipeline.toml"]},
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]},
    "history": [{"created_by": "tests/scripts/image.sh (host/Containerfile.static)"}],
}
config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
               **blob(json.dumps(config, sort_keys=True).encode())}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc, "layers": [layer_desc]}
manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 **blob(json.dumps(manifest, sort_keys=True).encode()),
                 "annotations": {"org.opencontainers.image.ref.name": "static"}}
json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, open(os.path.join(oci, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(oci, "oci-layout"), "w"))
print(f"image: rootfs {len(raw) / 1e6:.1f} MB uncompressed, layer {len(gz) / 1e6:.1f} MB compressed")
PY
rm -f "$out/pipeline-host.stripped"
# Run the image's own binary from the unpacked rootfs.
root="$out/rootfs"
mkdir -p "$root" && tar -xf "$out/rootfs.tar" -C "$root"
"$root/usr/local/bin/pipeline-host" --version
for stage in "$root"/opt/pipeline/plugins/*.wasm; do
  "$root/usr/local/bin/pipeline-host" plugin check "$stage"
done
step "OCI image layout in $out/oci, rootfs tarball $out/rootfs.tar"
