# syntax=docker/dockerfile:1
#
# cellserve: the gRPC server with the shipped models, on a CUDA-enabled PyTorch runtime.
#
#   docker build -t cellserve:0.1.0 .
#   docker run --gpus all --read-only --tmpfs /tmp -p 50051:50051 -p 9090:9090 \
#       -e CELLSERVE_SNAPSHOT_KEY="$(openssl rand -base64 48)" cellserve:0.1.0
#
# Two stages on the same base (one Python ABI): `build` installs cellserve and
# cellserve-client into a virtual environment that sees the base image's torch (so the CUDA
# build of torch is reused, never downloaded again); `runtime` copies that environment and the
# models, adds nothing else, and runs as a non-root user. Every dependency is installed from a
# wheel (--only-binary); the build stage has a C compiler for cellserve's two extensions (the
# session memory's loops, server/cellserve/memory/_window.c, and the keystroke answer's
# serialization, server/cellserve/api/_wire.c), and the runtime stage checks it has none.
#
# The root filesystem can be read-only: the only writable path is the /tmp volume.

ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

# ---- build: a virtual environment holding cellserve, cellserve-client and their deps ----------
FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# --system-site-packages: the base image's torch satisfies cellserve's `torch` requirement.
RUN python -m venv --system-site-packages /opt/venv

WORKDIR /src
# A C compiler for the extensions, in this stage only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml setup.py README.md ./
COPY client/ client/
COPY server/ server/

# Not editable: the image must not depend on /src. --only-binary: every dependency a wheel.
# The import check fails the build if an extension was not compiled (setup.py lets a build
# without a compiler fall back to the Python paths; the image must not).
RUN /opt/venv/bin/pip install --only-binary=:all: ./client . \
    && /opt/venv/bin/python -c "import torch, cellserve.serve, cellserve_client, cellserve.memory._window, cellserve.api._wire; print('torch', torch.__version__)"

# ---- runtime ---------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

# No compilers in the final stage: fail the build if the base image ever ships one.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN for c in gcc cc g++ c++ clang; do \
        if command -v "$c" >/dev/null; then echo "compiler '$c' in the runtime stage" >&2; exit 1; fi; \
    done \
    && groupadd --system --gid "${GID}" cellserve \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin cellserve

COPY --from=build /opt/venv /opt/venv
# Owned by root and not writable by the server user: models are data, never modified at runtime.
COPY models/ /opt/cellserve/models/

# The filesystem is read-only at runtime; everything that might write goes to /tmp.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    CUDA_CACHE_PATH=/tmp/.cache/nv \
    CELLSERVE_MODEL_DIR=/opt/cellserve/models

VOLUME ["/tmp"]
WORKDIR /tmp

# gRPC (settings.port) and Prometheus metrics (settings.metrics_port).
EXPOSE 50051 9090

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER ${UID}:${GID}

# Exec form: cellserve is PID 1 and receives SIGTERM itself, and drains (see serve.py). With
# CELLSERVE_FRONTENDS=N it is the supervisor of one engine core and N gRPC frontends; its
# children die with it (parent-death signal), and it reaps them, so PID 1 leaves no zombies.
# Unset, N follows the CPUs the container sees (the node's): the Kubernetes overlays set it.
ENTRYPOINT ["/opt/venv/bin/cellserve", "serve"]
