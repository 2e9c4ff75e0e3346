"""The embedded backend's choice of onnxruntime execution provider (GPU when there, CPU otherwise)."""

import logging

import onnxruntime as ort
import pytest

from service.backends.embedded import EmbeddedBackend, providers_for
from service.errors import ConfigurationError
from service.settings import Settings
from tests.conftest import FAMILY, SHIPPED
from titok_core.manifest import read_manifest


def test_auto_prefers_the_gpu_providers_and_always_keeps_the_cpu(tmp_path):
    available = ort.get_available_providers()
    names = [p[0] if isinstance(p, tuple) else p for p in providers_for("auto", tmp_path)]
    assert names[-1] == "CPUExecutionProvider"
    assert names == [
        p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in available
    ]
    trt = [p for p in providers_for("tensorrt", tmp_path) if isinstance(p, tuple)]
    for _, options in trt:  # TensorRT engines are cached on disk and built in fp16
        assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)


def test_the_cpu_build_runs_on_the_cpu_and_says_so(caplog):
    with caplog.at_level(logging.INFO, "titok.embedded"):
        backend = EmbeddedBackend(SHIPPED, read_manifest(SHIPPED, FAMILY), Settings(ort_provider="auto"))
    assert backend.provider in ort.get_available_providers()
    assert any(f"runs on {backend.provider}" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_a_forced_gpu_provider_without_one_is_a_clear_configuration_error():
    with pytest.raises(ConfigurationError, match="TITOK_ORT_PROVIDER=cuda.*gpu extra"):
        EmbeddedBackend(SHIPPED, read_manifest(SHIPPED, FAMILY), Settings(ort_provider="cuda"))
