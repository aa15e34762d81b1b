# syntax=docker/dockerfile:1
# GMPI gateway: FastAPI REST API (python -m services.gateway). CPU only, slim Python base.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t gmpi/gateway .
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
RUN pip install --no-cache-dir -c /opt/torch-constraint.txt -c constraints.txt ".[services]" \
    && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 'torch was replaced')"

# ---- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gmpi-gateway" org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini reaps zombies and forwards signals; Debian pins its version per release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gmpi \
    && useradd --uid 10001 --gid gmpi --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gmpi \
    && install -d -o gmpi -g gmpi /var/cache/gmpi /var/lib/gmpi/storage
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GMPI_HOST=0.0.0.0 \
    GMPI_PORT=8000 \
    GMPI_CACHE_DIR=/var/cache/gmpi
USER 10001:10001
WORKDIR /var/cache/gmpi
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GMPI_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "services.gateway"]
