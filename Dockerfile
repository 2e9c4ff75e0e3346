# The titok-serve gateway: FastAPI + ONNX Runtime, no torch. The shipped model repository is inside, so the
# image serves on its own (embedded backend); docker-compose.yml points it at Triton instead.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir '.[cpu]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 titok
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=titok:titok model_repository ./model_repository
USER titok
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TITOK_HOST=0.0.0.0 \
    TITOK_PORT=8000 \
    TITOK_MODEL_REPOSITORY=/app/model_repository
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
CMD ["python", "-m", "service"]
