"""The embedded backend: onnxruntime sessions in the gateway process, run in a thread pool off the event loop."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from titok_core.manifest import Manifest

from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend


class EmbeddedBackend(Backend):
    """The family's three ONNX files on onnxruntime's CPU provider."""

    name = "embedded"

    def __init__(self, repository: Path, manifest: Manifest, settings):
        self._executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="ort")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = 1
        # spinning threads burn the cores the event loop needs under load (docs/benchmarks.md measures both)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_spinning else "0")
        options.log_severity_level = 3  # errors only
        self._sessions = {}
        for graph, entry in manifest.graphs.items():
            path = Path(repository) / entry.path
            try:
                self._sessions[graph] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise ConfigurationError(f"cannot load {path}: {e}") from e
        self._names = {g: [t.name for t in e.signature.inputs] for g, e in manifest.graphs.items()}
        self._closed = False

    async def _run(self, graph: str, *inputs: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BackendUnavailable("the embedded backend is closed")
        feeds = dict(zip(self._names[graph], inputs, strict=True))
        session = self._sessions[graph]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, session.run, None, feeds)
        except Exception as e:  # onnxruntime failures and a shut-down pool alike
            raise BackendUnavailable(f"{graph} failed: {e}") from e
        return outputs[0]

    # request ids are for a server's logs: the gateway's own log lines already carry them
    async def encode(self, images: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("encoder", images)

    async def decode(self, tokens: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("decoder", tokens)

    async def logits(self, tokens: np.ndarray, class_ids: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._run("generator", tokens, class_ids.reshape(-1, 1))

    async def ready(self) -> bool:
        return not self._closed and len(self._sessions) == 3

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
