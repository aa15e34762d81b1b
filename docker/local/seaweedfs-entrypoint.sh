#!/bin/bash
# SeaweedFS as a single-node S3 server on 127.0.0.1 (host networking): the S3 port is $S3_PORT, the
# other SeaweedFS ports are derived from it like scripts/stack.sh does. Data in /data (a volume). A fixed
# volume limit: weed's default, free disk / 128 MB, refused writes (500) after a few buckets on a disk
# full of images.
# Identities, as compose.yaml's store-init makes them in MinIO: the root account (S3_ROOT_USER /
# S3_ROOT_PASSWORD: Admin, for creating the bucket only), and the gateway's and the workers' users
# (S3_GATEWAY_* / S3_WORKER_*), which may only read, write and list the bucket $GMPI_S3_BUCKET.
set -euo pipefail
S3_PORT="${S3_PORT:-18333}"
if (( S3_PORT < 10000 || S3_PORT > 40000 )); then
  echo "seaweedfs: S3_PORT must lie in 10000-40000 (the other ports are derived from it)" >&2; exit 2
fi
OFF=$((S3_PORT - 18333))
BUCKET="${GMPI_S3_BUCKET:-gmpi}"
for v in S3_ROOT_USER S3_ROOT_PASSWORD S3_GATEWAY_ACCESS_KEY S3_GATEWAY_SECRET_KEY S3_WORKER_ACCESS_KEY \
         S3_WORKER_SECRET_KEY; do
  val="${!v:?seaweedfs: $v is not set}"
  if [[ "$val" == *[\"\\]* ]]; then echo "seaweedfs: $v must not contain \" or \\" >&2; exit 2; fi
done
if [[ ! "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
  echo "seaweedfs: GMPI_S3_BUCKET is not a bucket name: $BUCKET" >&2; exit 2
fi
S3_CONFIG="${S3_CONFIG:-/tmp/s3.json}"
umask 077
bucket_only="\"Read:$BUCKET\", \"Write:$BUCKET\", \"List:$BUCKET\""
cat > "$S3_CONFIG" <<JSON
{"identities": [
  {"name": "root", "credentials": [{"accessKey": "$S3_ROOT_USER", "secretKey": "$S3_ROOT_PASSWORD"}],
   "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
  {"name": "gateway", "credentials": [{"accessKey": "$S3_GATEWAY_ACCESS_KEY", "secretKey": "$S3_GATEWAY_SECRET_KEY"}],
   "actions": [$bucket_only]},
  {"name": "worker", "credentials": [{"accessKey": "$S3_WORKER_ACCESS_KEY", "secretKey": "$S3_WORKER_SECRET_KEY"}],
   "actions": [$bucket_only]}
]}
JSON
exec weed mini -dir=/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=$((19333 + OFF)) \
  -volume.port=$((19340 + OFF)) -filer.port=$((18888 + OFF)) -s3.port="$S3_PORT" -s3.port.iceberg=0 \
  -s3.port.lance=0 -admin.port=$((23646 + OFF)) -metricsPort=$((9101 + OFF)) -master.telemetry=false \
  -webdav=false -admin.ui=false -s3.config="$S3_CONFIG" -volume.max=1000 "$@"
