#!/usr/bin/env bash
# Validates the deployment files that cannot run here (no Docker engine, no
# Kubernetes cluster): yamllint on docker-compose.yml and the Kubernetes
# manifests, and kubernetes-validate (its bundled schemas) on the manifests.
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
step "deployment files valid"
