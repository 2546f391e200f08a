# comfy-vast-worker: one image for Vast.ai serverless and for `docker run --gpus all`.
#
#   docker build -t comfy-worker .                                  # CUDA base, ComfyUI + custom nodes baked in
#   docker build --build-arg BAKE_MODELS=1 -t comfy-worker .         # models baked in too (bigger image, faster cold start)
#   docker build --build-arg BASE_IMAGE=my-debian --build-arg SKIP_EXTERNAL=1 .   # no GitHub / CUDA wheels (CI)
#
# Two Python environments: ComfyUI's own (/opt/ComfyUI/.venv, made by comfy-cli, PyTorch
# and the custom nodes' requirements) and the worker's (/opt/comfy-worker/.venv: the
# PyWorker framework pins pillow and cryptography, which must not fight ComfyUI's).
# Layers go from what changes least to what changes most; each one depends only on the
# part of models_manifest.toml it installs (see docker/manifest_sections.py).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python, venv and git, unless the base image has them (the CI base made with debootstrap).
# hadolint ignore=DL3008
RUN if command -v git >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; then exit 0; fi; \
    apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS sections
COPY models_manifest.toml docker/manifest_sections.py /tmp/
RUN python3 /tmp/manifest_sections.py /tmp/models_manifest.toml /sections

FROM base
# 1 skips what needs GitHub or the PyTorch CUDA index (ComfyUI, custom nodes, models):
# the worker then runs against a ComfyUI elsewhere (COMFYUI_URL).
ARG SKIP_EXTERNAL=0
ARG GPU=nvidia
ARG CUDA_VERSION=12.8
ARG BAKE_MODELS=0
# How pip reaches its index where the build runs (unset: pip's defaults).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ENV COMFY_WORKER_HOME=/opt/comfy-worker \
    COMFYUI_PATH=/opt/ComfyUI \
    COMFY_WORKER_MANIFEST=/opt/comfy-worker/models_manifest.toml \
    COMFY_WORKER_STATE_DIR=/var/lib/comfy-worker \
    COMFY_WORKER_LOG_DIR=/var/log/comfy-worker
WORKDIR /opt/comfy-worker

# The worker's environment: dependencies first (pyproject only), the code last.
COPY pyproject.toml README.md ./
RUN python3 -m venv .venv \
    && mkdir -p comfy_bridge worker \
    && touch comfy_bridge/__init__.py worker/__init__.py \
    && extras=$([ "$SKIP_EXTERNAL" = 1 ] && echo "" || echo "[provision]") \
    && .venv/bin/pip install -q ".${extras}" \
    && rm -rf comfy_bridge worker build ./*.egg-info

# The provisioner alone, so editing the worker does not rebuild the layers below.
COPY comfy_bridge/__init__.py comfy_bridge/errors.py comfy_bridge/logs.py /opt/provision/comfy_bridge/
COPY comfy_bridge/provision /opt/provision/comfy_bridge/provision
# ComfyUI's runtime libraries (opencv-based custom nodes need libGL and glib), then ComfyUI.
# hadolint ignore=DL3008
RUN if [ "$SKIP_EXTERNAL" = 1 ]; then exit 0; fi; \
    apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=sections /sections/comfyui.toml /opt/provision/comfyui.toml
RUN if [ "$SKIP_EXTERNAL" = 1 ]; then exit 0; fi; \
    PYTHONPATH=/opt/provision .venv/bin/python -m comfy_bridge.provision --manifest /opt/provision/comfyui.toml --comfyui-path "$COMFYUI_PATH" --only comfyui \
        --gpu "$GPU" --cuda-version "$CUDA_VERSION" \
    && rm -rf /root/.cache

COPY --from=sections /sections/nodes.toml /opt/provision/nodes.toml
RUN if [ "$SKIP_EXTERNAL" = 1 ]; then exit 0; fi; \
    PYTHONPATH=/opt/provision .venv/bin/python -m comfy_bridge.provision --manifest /opt/provision/nodes.toml --comfyui-path "$COMFYUI_PATH" --only custom_nodes \
    && rm -rf /root/.cache

COPY --from=sections /sections/models.toml /opt/provision/models.toml
RUN if [ "$SKIP_EXTERNAL" = 1 ] || [ "$BAKE_MODELS" != 1 ]; then exit 0; fi; \
    PYTHONPATH=/opt/provision .venv/bin/python -m comfy_bridge.provision --manifest /opt/provision/models.toml --comfyui-path "$COMFYUI_PATH" --only models

# The worker itself.
COPY comfy_bridge ./comfy_bridge
COPY worker ./worker
COPY workflows ./workflows
COPY docker ./docker
COPY models_manifest.toml start_server.sh ./
RUN .venv/bin/pip install -q --no-deps . \
    && rm -rf build ./*.egg-info \
    && chmod +x start_server.sh \
    && mkdir -p "$COMFY_WORKER_STATE_DIR" "$COMFY_WORKER_LOG_DIR"

ENV PATH=/opt/comfy-worker/.venv/bin:$PATH \
    COMFY_WORKER_PYTHON=/opt/comfy-worker/.venv/bin/python \
    WORKER_PORT=3000
EXPOSE 3000
ENTRYPOINT ["/opt/comfy-worker/start_server.sh"]
