# The titok-serve gateway: FastAPI + ONNX Runtime (CPU), no torch. The shipped model repository is inside, so the
# image serves on its own (embedded backend); docker-compose.yml runs it as a Triton client (TITOK_BACKEND=triton).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY titok_core ./titok_core
COPY service ./service
COPY titok_client ./titok_client
# only the gateway's dependencies and the cpu extra (onnxruntime): torch lives in the train extra, never here
RUN python -m venv /opt/venv && /opt/venv/bin/pip install '.[cpu]'

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 titok && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin titok
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# owned by root: the gateway reads the models, it never writes them
COPY model_repository ./model_repository
ENV PATH=/opt/venv/bin:$PATH \
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
