"""The embedded backend: onnxruntime sessions in the gateway process, run in a thread pool off the event loop."""

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from titok_core.manifest import GRAPHS, Manifest

from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend

log = logging.getLogger("titok.embedded")

_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def providers_for(choice: str, trt_cache_dir: Path) -> list:
    """onnxruntime's providers for a setting, best first; CPU always last, as the fallback."""
    wanted = ["tensorrt", "cuda", "cpu"] if choice == "auto" else [choice, "cpu"]
    available = set(ort.get_available_providers())
    providers: list = []
    for name in dict.fromkeys(wanted):
        provider = _PROVIDERS[name]
        if provider not in available:
            continue
        if name == "tensorrt":  # fp16 engines, cached on disk so a restart does not rebuild them
            options = {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache_dir),
            }
            providers.append((provider, options))
        else:
            providers.append(provider)
    return providers


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


class EmbeddedBackend(Backend):
    """The family's ONNX files on onnxruntime: TensorRT or CUDA when a GPU is there, else the CPU."""

    name = "embedded"

    def __init__(self, repository: Path, manifest: Manifest, settings):
        self._executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="ort")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = 1
        # spinning threads burn the cores the event loop needs under load (docs/benchmarks.md measures both)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_spinning else "0")
        options.log_severity_level = 3  # errors only
        providers = providers_for(settings.ort_provider, settings.ort_trt_cache_dir)
        if settings.ort_provider != "auto" and _provider_name(providers[0]) != _PROVIDERS[settings.ort_provider]:
            raise ConfigurationError(
                f"TITOK_ORT_PROVIDER={settings.ort_provider} but this onnxruntime offers only "
                f"{', '.join(ort.get_available_providers())} (install the gpu extra on a machine with a GPU)"
            )
        self._sessions = {}
        for graph, entry in manifest.graphs.items():
            path = Path(repository) / entry.path
            try:
                self._sessions[graph] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:
                raise ConfigurationError(f"cannot load {path}: {e}") from e
        # onnxruntime-gpu lists CUDA even without a device, then quietly runs on the CPU: ask the session itself
        used = self._sessions["generator"].get_providers()[0]
        self.provider = used
        if used != _provider_name(providers[0]):
            if settings.ort_provider != "auto":
                raise ConfigurationError(
                    f"TITOK_ORT_PROVIDER={settings.ort_provider}: no usable device ({used} instead)"
                )
            log.warning("%s: %s is not usable here; running on %s", manifest.family, _provider_name(providers[0]), used)
        log.info("%s: onnxruntime runs on %s", manifest.family, used)
        self._names = {g: [t.name for t in e.signature.inputs] for g, e in manifest.graphs.items()}
        # seconds spent inside each graph's session.run (not waiting for the worker thread): what the graphs
        # themselves cost, beside the work around them (bench/routes.py shares a request's time out with it)
        self.graph_seconds: defaultdict[str, float] = defaultdict(float)
        self._closed = False

    def run_graph(self, graph: str, *inputs: np.ndarray) -> np.ndarray:
        """One graph's first output, on the calling thread (the gateway calls it in its worker thread)."""
        feeds = dict(zip(self._names[graph], inputs, strict=True))
        start = time.perf_counter()
        try:
            return self._sessions[graph].run(None, feeds)[0]
        finally:
            self.graph_seconds[graph] += time.perf_counter() - start

    async def _run(self, graph: str, *inputs: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BackendUnavailable("the embedded backend is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_graph, graph, *inputs)
        except Exception as e:  # onnxruntime failures and a shut-down pool alike
            raise BackendUnavailable(f"{graph} failed: {e}") from e

    # request ids are for a server's logs: the gateway's own log lines already carry them
    async def encode(self, images: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("encoder", images)

    async def decode(self, tokens: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("decoder", tokens)

    async def logits(self, tokens: np.ndarray, class_ids: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("generator", tokens, class_ids.reshape(-1, 1))

    async def step(self, inputs: tuple[np.ndarray, ...], request_id: str = "") -> np.ndarray:
        return await self._run("step", *inputs)

    async def ready(self) -> bool:
        return not self._closed and len(self._sessions) == len(GRAPHS)

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
