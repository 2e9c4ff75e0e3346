# The titok-serve gateway: FastAPI + ONNX Runtime (CPU), no torch. The shipped model repository is inside, so the
# image serves on its own (embedded backend); docker-compose.yml runs it as a Triton client (TITOK_BACKEND=triton).
#
# Reproducible: every Python dependency comes from deploy/image/requirements.lock (exact versions and hashes, `make
# lock` refreshes it). The base is a tag by default; pin it by digest with
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<that digest> .
# Any Debian bookworm image with Python 3.11 (`python` and its venv module) will do: the tests build on a local
# debootstrap one (deploy/image/local-base.sh) where no container registry is reachable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the locked dependencies first: this layer is rebuilt only when the lock changes
COPY deploy/image/requirements.lock ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY titok_core ./titok_core
COPY service ./service
COPY titok_client ./titok_client
# then the gateway alone: the cpu (onnxruntime) and triton (tritonclient) extras are in the lock, torch (the train
# extra) never is; pip check fails the build when pyproject.toml asks for something the lock lacks
RUN /opt/venv/bin/pip install --no-deps '.[cpu,triton]' && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="titok-serve gateway" \
      org.opencontainers.image.description="TiTok 1D image tokenizer and MaskGIT generator behind an HTTP API" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# a real home: without one ONNX Runtime prints a coloured, non-JSON warning before the first JSON log line
RUN groupadd --gid 10001 titok \
 && useradd --uid 10001 --gid 10001 --home-dir /home/titok --create-home --shell /usr/sbin/nologin titok
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# owned by root: the gateway reads the models, it never writes them
COPY model_repository ./model_repository
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/titok \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TITOK_HOST=0.0.0.0 \
    TITOK_PORT=8000 \
    TITOK_MODEL_REPOSITORY=/app/model_repository
USER 10001:10001
EXPOSE 8000
# ready = models loaded, workers and backend (Triton, when used) up; compose starts what depends on it only then
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f'http://127.0.0.1:{os.environ[\"TITOK_PORT\"]}/readyz', timeout=2)"]
CMD ["python", "-m", "service"]
