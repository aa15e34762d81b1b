#!/bin/bash
# SeaweedFS as a single-node S3 server on 127.0.0.1 (host networking): the S3 port is $S3_PORT, the
# other SeaweedFS ports are derived from it like scripts/stack.sh does; credentials from
# GMPI_S3_ACCESS_KEY / GMPI_S3_SECRET_KEY. Data in /data (a volume). A fixed volume limit: weed's default,
# free disk / 128 MB, refused writes (500) after a few buckets on a disk full of images.
set -euo pipefail
S3_PORT="${S3_PORT:-18333}"
if (( S3_PORT < 10000 || S3_PORT > 40000 )); then
  echo "seaweedfs: S3_PORT must lie in 10000-40000 (the other ports are derived from it)" >&2; exit 2
fi
OFF=$((S3_PORT - 18333))
cat > /tmp/s3.json <<JSON
{"identities":[{"name":"gmpi","credentials":[{"accessKey":"${GMPI_S3_ACCESS_KEY:?}","secretKey":"${GMPI_S3_SECRET_KEY:?}"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
exec weed mini -dir=/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=$((19333 + OFF)) \
  -volume.port=$((19340 + OFF)) -filer.port=$((18888 + OFF)) -s3.port="$S3_PORT" -s3.port.iceberg=0 \
  -s3.port.lance=0 -admin.port=$((23646 + OFF)) -metricsPort=$((9101 + OFF)) -master.telemetry=false \
  -webdav=false -admin.ui=false -s3.config=/tmp/s3.json -volume.max=1000 "$@"
