#!/usr/bin/env bash
# Static validation of the deployment files (no Docker engine or cluster needed):
#   hadolint on docker/Dockerfile and docker/local/Dockerfile; the Compose v2 binary's `config -q` on compose.yaml (+ the CPU
#   override); `kubectl kustomize` of each k8s overlay through `kubernetes-validate --strict`, with the
#   custom resources (KEDA ScaledObject and TriggerAuthentication, Kubeflow PyTorchJob) checked against
#   tests/deploy/schemas.
# tests/deploy runs the same checks (and more) under pytest. Usage: scripts/ci/validate_deploy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${GMPI_VENV:-.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
BIN="$(dirname "$PY")"
K8S_VERSION=1.32.0
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
fail=0

echo "== hadolint"
"$BIN/hadolint" docker/Dockerfile docker/local/Dockerfile && echo "ok: docker/Dockerfile, docker/local/Dockerfile" || fail=1

echo "== compose"
DC="$("$PY" -m tests.deploy.tools compose-bin)"
(
  # validate with the defaults in the files, not with this shell's GMPI_*/IMAGE_* values
  for v in $(env | grep -oE '^(GMPI_|IMAGE_|COMPOSE_|GATEWAY_|S3_ROOT_|S3_GATEWAY_|S3_WORKER_|BUILD_)[A-Za-z0-9_]*' || true); do unset "$v"; done
  "$DC" -f compose.yaml config -q && echo "ok: compose.yaml"
  "$DC" -f compose.yaml -f compose.cpu.yaml config -q && echo "ok: compose.yaml + compose.cpu.yaml"
  "$DC" -f compose.yaml -f compose.cpu.yaml -f compose.local.yaml config -q && echo "ok: + compose.local.yaml"
) || fail=1

for overlay in cpu-dev gpu; do
  echo "== k8s/overlays/$overlay"
  if kubectl kustomize "k8s/overlays/$overlay" > "$tmp/$overlay.yaml"; then
    "$PY" -m tests.deploy.tools split-crds "$tmp/$overlay.core.yaml" < "$tmp/$overlay.yaml" > "$tmp/$overlay.crds.yaml"
    out="$("$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" "$tmp/$overlay.core.yaml" 2>&1)" || { echo "$out"; fail=1; }
    if grep -qE "Couldn't find schema|ERROR|FAIL" <<<"$out"; then echo "$out" | grep -vE "passed for resource"; fail=1; fi
    echo "ok: $(grep -c 'passed for resource' <<<"$out") resources pass kubernetes-validate --strict ($K8S_VERSION)"
    "$PY" -m tests.deploy.tools check-crds < "$tmp/$overlay.crds.yaml" || fail=1
  else
    fail=1
  fi
done
echo "== k8s/templates/pytorchjob.yaml"
"$PY" -m tests.deploy.tools check-crds < k8s/templates/pytorchjob.yaml || fail=1

if [ "$fail" != 0 ]; then echo "validate_deploy: FAILED" >&2; exit 1; fi
echo "validate_deploy: all checks passed"
