#!/usr/bin/env bash
# The service stack as local processes on loopback — the same entrypoints the containers use.
#
#   scripts/stack.sh up | down | status
#   scripts/stack.sh start-worker QUEUE | stop-worker QUEUE [SIGNAL] | restart-redis | stop-s3 | start-s3
#   scripts/stack.sh up|down|status|build|kill|start|logs --docker   the same stack in containers
#                                                                    (scripts/docker-stack.sh)
#
# State (pids, logs, data) lives in $GMPI_STACK_DIR (default .stack/); `down` stops only the processes
# whose pid files are there. Redis requires a password: $GMPI_REDIS_PASSWORD, else a random one kept in
# $GMPI_STACK_DIR/redis.password (mode 600; the services get it through $GMPI_STACK_DIR/env). Ports: $GMPI_STACK_REDIS_PORT (6390), $GMPI_STACK_S3_PORT (18333; the other
# SeaweedFS ports are derived from it), $GMPI_PORT (8000). Workers: $GMPI_STACK_QUEUES (all five).
set -euo pipefail

for a in "$@"; do
  if [ "$a" = "--docker" ]; then
    args=(); for b in "$@"; do [ "$b" = "--docker" ] || args+=("$b"); done
    exec "$(dirname "${BASH_SOURCE[0]}")/docker-stack.sh" "${args[@]}"
  fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="$(mkdir -p "${GMPI_STACK_DIR:-$ROOT/.stack}" && cd "${GMPI_STACK_DIR:-$ROOT/.stack}" && pwd)"
PY="${GMPI_PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PY")"
REDIS_PORT="${GMPI_STACK_REDIS_PORT:-6390}"
S3_PORT="${GMPI_STACK_S3_PORT:-18333}"
OFF=$((S3_PORT - 18333))
PORT="${GMPI_PORT:-8000}"
QUEUES="${GMPI_STACK_QUEUES:-landmarks pose train eval render}"
mkdir -p "$D/logs" "$D/redis" "$D/s3" "$D/cache" "$D/run"
if [ -z "${GMPI_REDIS_PASSWORD:-}" ]; then
  [ -s "$D/redis.password" ] || ( umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(16))' > "$D/redis.password" )
  GMPI_REDIS_PASSWORD="$(cat "$D/redis.password")"
fi
export REDISCLI_AUTH="$GMPI_REDIS_PASSWORD"  # this script's redis-cli calls

write_env() {
  ( umask 077 && : > "$D/env" )  # it holds the Redis password and the S3 keys
  cat > "$D/env" <<ENV
export GMPI_HOST=127.0.0.1
export GMPI_EXPOSE_DOCS=${GMPI_EXPOSE_DOCS:-true}   # a loopback dev stack: /docs and /openapi.json on
export GMPI_PORT=$PORT
export GMPI_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export GMPI_REDIS_PASSWORD=$GMPI_REDIS_PASSWORD
export GMPI_STORAGE=s3
export GMPI_S3_ENDPOINT=127.0.0.1:$S3_PORT
export GMPI_S3_ACCESS_KEY=${GMPI_S3_ACCESS_KEY:-gmpi-local}
export GMPI_S3_SECRET_KEY=${GMPI_S3_SECRET_KEY:-gmpi-local-secret}
export GMPI_S3_BUCKET=${GMPI_S3_BUCKET:-gmpi}
export GMPI_API_KEYS=${GMPI_API_KEYS:-dev-key}
export GMPI_CACHE_DIR=$D/cache
export GMPI_ORPHAN_AFTER_S=${GMPI_ORPHAN_AFTER_S:-120}
export GMPI_ORPHAN_CHECK_S=${GMPI_ORPHAN_CHECK_S:-15}
export GMPI_RENDER_RATE_LIMIT=${GMPI_RENDER_RATE_LIMIT:-600}
export GMPI_MAX_UPLOAD_BYTES=${GMPI_MAX_UPLOAD_BYTES:-2147483648}
export GMPI_TASK_TIME_LIMIT_S=${GMPI_TASK_TIME_LIMIT_S:-86400}
export GMPI_VISIBILITY_TIMEOUT_S=${GMPI_VISIBILITY_TIMEOUT_S:-93600}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
ENV
}

alive() { [[ -f "$D/run/$1.pid" ]] && kill -0 "$(cat "$D/run/$1.pid")" 2>/dev/null; }

# start NAME CMD...: a new session (process group = pid), output to logs/NAME.log
start() {
  local name=$1; shift
  if alive "$name"; then echo "$name already running (pid $(cat "$D/run/$name.pid"))"; return; fi
  ( cd "$ROOT" && set -a && . "$D/env" && set +a && exec setsid "$@" >>"$D/logs/$name.log" 2>&1 ) &
  echo $! > "$D/run/$name.pid"
}

# stop NAME [SIGNAL]: signal the process group; wait up to 20 s, then SIGKILL
stop() {
  local name=$1 sig=${2:-TERM}
  [[ -f "$D/run/$name.pid" ]] || return 0
  local pid; pid=$(cat "$D/run/$name.pid")
  kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$D/run/$name.pid"
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "stack: $what did not come up in ${secs}s (logs in $D/logs)" >&2; return 1
}

port_open() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.5)" "$1"; }

start_redis() {
  alive redis && return
  # the password on stdin (`-`): a command-line argument would show in `ps` to every user of the machine
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$D/redis" --appendonly yes --appendfsync everysec \
    --save "" --maxmemory-policy noeviction --daemonize yes --pidfile "$D/run/redis.pid" \
    --logfile "$D/logs/redis.log" - <<CONF
requirepass "$GMPI_REDIS_PASSWORD"
CONF
  wait_for redis 10 redis_ping
}

redis_ping() { redis-cli -p "$REDIS_PORT" ping | grep -q PONG; }  # redis-cli exits 0 on NOAUTH too

start_s3() {
  alive s3 && return
  cat > "$D/s3.json" <<JSON
{"identities":[{"name":"gmpi","credentials":[{"accessKey":"${GMPI_S3_ACCESS_KEY:-gmpi-local}","secretKey":"${GMPI_S3_SECRET_KEY:-gmpi-local-secret}"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  start s3 "$BIN/weed" mini -dir="$D/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=$((19333 + OFF)) \
    -volume.port=$((19340 + OFF)) -filer.port=$((18888 + OFF)) -s3.port="$S3_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
    -admin.port=$((23646 + OFF)) -metricsPort=$((9101 + OFF)) -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.config="$D/s3.json" -volume.max=1000  # not "free disk / 128 MB"
  wait_for "SeaweedFS S3" 30 port_open "$S3_PORT"
}

start_worker() {
  start "worker-$1" "$BIN/celery" -A services.common.celery_app worker -Q "$1" --concurrency 1 \
    --hostname "$1@%h" -l INFO
}

worker_ready() { grep -q "ready\." "$D/logs/worker-$1.log"; }

cmd_up() {
  write_env
  # the fused CPU kernels before any worker starts (a no-op when built; about a minute on first use)
  "$PY" -m gmpi_core.ops.prebuild --cpu-only
  start_redis
  start_s3
  start gateway "$PY" -m services.gateway
  for q in $QUEUES; do : > "$D/logs/worker-$q.log"; start_worker "$q"; done
  wait_for gateway 60 "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/readyz', timeout=2)"
  for q in $QUEUES; do wait_for "worker $q" 60 worker_ready "$q"; done
  # the bucket and the shipped demo model (models/demo), as the containers' one-shot init does
  ( cd "$ROOT" && set -a && . "$D/env" && set +a && "$PY" -m services init ) >>"$D/logs/init.log" 2>&1 \
    || { echo "stack: init failed (logs in $D/logs/init.log)" >&2; return 1; }
  echo "stack up: http://127.0.0.1:$PORT (API key: \$GMPI_API_KEYS from $D/env), state in $D"
}

cmd_down() {
  for q in $QUEUES; do stop "worker-$q"; done
  stop gateway
  stop s3
  if alive redis; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || stop redis; fi
  rm -f "$D/run/redis.pid"
  echo "stack down"
}

cmd_status() {
  local rc=0
  for name in redis s3 gateway $(for q in $QUEUES; do echo "worker-$q"; done); do
    if alive "$name"; then echo "$name: running (pid $(cat "$D/run/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  start-worker) : > "$D/logs/worker-$2.log"; start_worker "$2"; wait_for "worker $2" 60 worker_ready "$2" ;;
  stop-worker) stop "worker-$2" "${3:-TERM}" ;;
  restart-redis)
    redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true  # SHUTDOWN flushes the AOF
    for _ in $(seq 100); do alive redis || break; sleep 0.1; done
    rm -f "$D/run/redis.pid"; start_redis ;;
  stop-s3) stop s3 ;;
  start-s3) start_s3 ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
