#!/usr/bin/env bash
# Validates the deployment files that cannot run here (no Docker engine, no
# Kubernetes cluster): yamllint on docker-compose.yml and the Kubernetes
# manifests, kubernetes-validate (its bundled schemas) on the manifests, and
# that the compose files run the Apache Kafka version and the settings the
# tests run (tests/kafka/*.properties), and the Apicurio Registry version.
# Installs both into the cached venv when missing.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bin="$(dirname "$PIPELINE_PYTHON")"
[[ -x "$PIPELINE_PYTHON" ]] || python3 -m venv "${PIPELINE_PYTHON%/bin/python}"
if [[ ! -x "$bin/yamllint" || ! -x "$bin/kubernetes-validate" ]]; then
  step "installing yamllint and kubernetes-validate into the venv"
  "$PIPELINE_PYTHON" -m pip install --quiet 'yamllint==1.*' 'kubernetes-validate==1.*'
fi
"$bin/yamllint" -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' \
  docker-compose.yml host/deploy/docker-compose.kafka3.yml host/deploy/kubernetes
"$bin/kubernetes-validate" --strict host/deploy/kubernetes/*.yaml
"$PIPELINE_PYTHON" - "$KAFKA_VERSION" "$REGISTRY_VERSION" <<'PY'
import sys, yaml
version, registry_version = sys.argv[1], sys.argv[2]
def props(*files):
    out = {}
    for f in files:
        for line in open(f):
            line = line.strip()
            if line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k] = v
    return out
# The listener names differ on purpose (INTERNAL/EXTERNAL for Docker's network).
skip = {"inter.broker.listener.name"}
checks = [
    ("docker-compose.yml", ["kafka"], "tests/kafka/single.properties"),
    ("host/deploy/docker-compose.kafka3.yml", ["kafka", "kafka-2", "kafka-3"], "tests/kafka/cluster.properties"),
]
base = yaml.safe_load(open("docker-compose.yml"))["services"]
bad = []
for path, services, extra in checks:
    doc = yaml.safe_load(open(path))["services"]
    want = props("tests/kafka/server.properties", extra)
    for name in services:
        svc = dict(base.get(name, {}))
        svc.update(doc.get(name, {}))
        env = dict(base.get(name, {}).get("environment", {}))
        env.update(doc.get(name, {}).get("environment", {}))
        image = svc.get("image", "")
        if image != f"apache/kafka:{version}":
            bad.append(f"{path}: {name} runs {image}, the tests run apache/kafka:{version}")
        for k, v in want.items():
            if k in skip:
                continue
            var = "KAFKA_" + k.upper().replace(".", "_")
            if str(env.get(var)) != v:
                bad.append(f"{path}: {name} sets {var}={env.get(var)}, the tests {k}={v}")
# The schema registry of the formats: the version the tests run.
image = base.get("registry", {}).get("image", "")
if image != f"apicurio/apicurio-registry:{registry_version}":
    bad.append(f"docker-compose.yml: registry runs {image!r}, the tests run Apicurio Registry {registry_version}")
# Static members need stable names: the pods that join with
# --group-instance-id $(POD_NAME) must be a StatefulSet's (a Deployment's
# pods are renamed on every rollout), and the autoscaler must scale it.
import glob
docs = [d for f in sorted(glob.glob("host/deploy/kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
for d in docs:
    if d["kind"] in ("Deployment", "StatefulSet"):
        args = d["spec"]["template"]["spec"]["containers"][0].get("args", [])
        static = "--group-instance-id" in args and "$(POD_NAME)" in args
        if static and d["kind"] != "StatefulSet":
            bad.append(f"{d['metadata']['name']}: a {d['kind']} of static members named after pods that a rollout renames")
        if d["kind"] == "StatefulSet" and not any(
            s["kind"] == "Service" and s["metadata"]["name"] == d["spec"].get("serviceName")
            and s["spec"].get("clusterIP") == "None" for s in docs
        ):
            bad.append(f"{d['metadata']['name']}: no headless Service named by serviceName")
    if d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["kind"] != "StatefulSet":
        bad.append("the autoscaler does not scale the StatefulSet")
if not any(d["kind"] == "StatefulSet" for d in docs):
    bad.append("no StatefulSet of pipeline-host members")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
step "deployment files valid (Apache Kafka $KAFKA_VERSION and Apicurio Registry $REGISTRY_VERSION, same settings as the tests)"
