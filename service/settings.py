"""The gateway's settings: one pydantic-settings class, environment variables prefixed ``TITOK_``."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_MIB = 1 << 20


class Settings(BaseSettings):
    """Everything the gateway can be told; the only place that reads the environment."""

    model_config = SettingsConfigDict(env_prefix="TITOK_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    model_repository: Path = Field(Path("model_repository"), description="Triton model repository with manifests")
    backend: Literal["embedded", "triton"] = Field("embedded", description="embedded onnxruntime, or Triton")
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address (backend=triton)")
    triton_probe_timeout_s: float = Field(1.0, gt=0, description="Triton readiness probe timeout (backend=triton)")

    # max_batch_size, max_queue, request_timeout_s, max_image_pixels, max_images, max_n: defaults; a family's manifest
    # may set its own, and a variable set explicitly wins over both (service/limits.py)
    max_batch_size: int = Field(32, ge=1, description="rows per model call (capped by the manifest's)")
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long a batch waits to fill before it runs (a new generation batch too)"
    )
    max_queue: int = Field(256, ge=1, description="rows (or generations) waiting per model graph before 429")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline from arrival (504 beyond it)")
    inference_threads: int = Field(1, ge=1, description="worker threads running model calls")
    ort_intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per call (0: all cores)")
    ort_provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="onnxruntime execution provider: auto takes TensorRT, then CUDA, when a GPU is there"
    )
    ort_trt_cache_dir: Path = Field(
        Path("/tmp/titok-trt-cache"), description="where TensorRT keeps its built engines (built once per shape range)"
    )
    ort_spinning: bool = Field(
        False, description="onnxruntime threads spin between calls (lower lone latency, CPU taken from HTTP under load)"
    )

    max_body_bytes: int = Field(16 * _MIB, ge=1024, description="request body limit (413 beyond it)")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="pixels per decoded image (413 beyond it)")
    max_request_pixels: int = Field(64 * _MIB, ge=1, description="decoded pixels per request, all images (413)")
    max_images: int = Field(64, ge=1, description="images or token sequences per request")
    max_n: int = Field(64, ge=1, description="images per generate or variations request")
    max_steps: int = Field(64, ge=1, description="sampling steps per generate request")

    # the served port's own limits (service/protocol.py): what uvicorn alone does not bound
    max_connections: int = Field(1000, ge=1, description="open connections; beyond it a new one gets 429 and is closed")
    max_header_bytes: int = Field(16384, ge=1024, description="request line and headers (431 beyond it)")
    read_timeout_s: float = Field(10.0, gt=0, description="the longest wait for headers or a body chunk (408 beyond)")
    keep_alive_s: float = Field(5.0, gt=0, description="idle time before a keep-alive connection is closed")
    metrics_require_key: bool = Field(False, description="/metrics needs the API key too")

    api_keys: Annotated[list[str], NoDecode] = Field([], description="comma-separated Bearer keys; empty: no auth")
    cors_origins: Annotated[list[str], NoDecode] = Field([], description="comma-separated origins; empty: CORS off")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value):
        # a comma-separated string from the environment, or a list from code
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
