"""The Triton backend: the family's models on a Triton Inference Server, over async gRPC (the generation step too:
Triton serves the fused step graph like the others, so sampling runs where the generator runs).

Triton's answers become the gateway's typed errors: its bounded queue's "Exceeds maximum queue size" a 429, a
deadline (ours or Triton's) a 504, anything else (connection refused or lost, a model not loaded) a 503. The gRPC
channel reconnects by itself (with a short backoff), so the gateway recovers when Triton comes back.
"""

import asyncio
import logging
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from titok_core.manifest import Manifest

from ..errors import BackendUnavailable, DeadlineExceeded, Overloaded, ServiceError
from ..limits import FamilyLimits
from .base import Backend

log = logging.getLogger("titok.triton")
_MAX_MESSAGE = 2**31 - 1  # tritonclient's own limit: a batch of 64 images or logits is tens of MB
_READY_CACHE_S = 1.0  # /readyz is polled often: ask Triton at most once a second


def service_error(e: InferenceServerException, model: str) -> ServiceError:
    """The gateway's error for a failed Triton call (gRPC status and Triton's message, see the module's doc)."""
    status, message = e.status() or "", e.message() or str(e)
    if "queue size" in message or status.endswith("RESOURCE_EXHAUSTED"):
        return Overloaded(f"Triton's queue for {model} is full; retry shortly")
    if status.endswith("DEADLINE_EXCEEDED") or "timeout expired" in message.lower():
        return DeadlineExceeded(f"{model} did not answer within its deadline")
    # the details (addresses, Triton's own words) go to the log, not to the client
    code = status.removeprefix("StatusCode.") or "error"
    return BackendUnavailable(f"the inference server failed on {model} ({code})")


class TritonBackend(Backend):
    """A family's encoder, decoder, generator and step models on Triton; model and tensor names from the manifest."""

    name = "triton"
    remote = True

    def __init__(self, manifest: Manifest, settings):
        self.url = settings.triton_url
        # the longest of the family's deadlines (a 256x256 model's generate may take minutes on a CPU)
        self._timeout_s = max(FamilyLimits.of(manifest, settings).deadlines_s.values())
        self._probe_timeout_s = settings.triton_probe_timeout_s
        self._graphs = {
            graph: (entry.model_name, [t.name for t in entry.signature.inputs], entry.signature.outputs[0].name)
            for graph, entry in manifest.graphs.items()
        }
        self._client: grpcclient.InferenceServerClient | None = None
        self._ready, self._checked = False, -float("inf")
        self._probe_lock: asyncio.Lock | None = None
        self._closed = self._down = False

    def _connect(self) -> grpcclient.InferenceServerClient:
        # made on first use, inside the server's event loop (a grpc.aio channel belongs to one loop)
        if self._client is None:
            options = [
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                # gRPC's default reconnect backoff grows to 2 minutes: keep it short so a restarted Triton is
                # found within about a second
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=options)
        return self._client

    async def _infer(self, graph: str, arrays: tuple[np.ndarray, ...], request_id: str) -> np.ndarray:
        if self._closed:
            raise BackendUnavailable("the Triton backend is closed")
        model, input_names, output_name = self._graphs[graph]
        inputs = []
        for name, array in zip(input_names, arrays, strict=True):
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        try:
            result = await self._connect().infer(
                model,
                inputs,
                outputs=[InferRequestedOutput(output_name)],
                request_id=request_id,  # Triton's logs and errors carry it: the gateway's X-Request-IDs
                client_timeout=self._timeout_s,  # a stuck Triton must not hold the graph's batcher forever
                timeout=int(self._timeout_s * 1e6),  # Triton drops it from its queue past it (if its policy allows)
            )
        except InferenceServerException as e:
            error = service_error(e, model)
            unreachable = (e.status() or "").endswith("UNAVAILABLE") and isinstance(error, BackendUnavailable)
            if unreachable:
                self._ready, self._checked = False, time.monotonic()  # /readyz says so at once
            # Triton's message names the request ids; while it is down, once per outage is enough
            level = logging.DEBUG if isinstance(error, Overloaded) or (unreachable and self._down) else logging.WARNING
            log.log(level, "%s failed on Triton: %s", model, e, extra={"request_ids": request_id})
            self._down = unreachable
            raise error from None
        if self._down:
            log.info("Triton answers again at %s", self.url)
            self._down = False
        return result.as_numpy(output_name)

    async def encode(self, images: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._infer("encoder", (images,), request_id)

    async def decode(self, tokens: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._infer("decoder", (tokens,), request_id)

    async def logits(self, tokens: np.ndarray, class_ids: np.ndarray, request_id: str = "") -> np.ndarray:
        return await self._infer("generator", (tokens, class_ids.reshape(-1, 1)), request_id)

    async def step(self, inputs: tuple[np.ndarray, ...], request_id: str = "") -> np.ndarray:
        return await self._infer("step", inputs, request_id)

    async def ready(self) -> bool:
        """Triton's server and model readiness, asked with a short timeout and remembered for a second."""
        if self._closed:
            return False
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        async with self._probe_lock:  # concurrent probes share one answer
            if time.monotonic() - self._checked >= _READY_CACHE_S:
                self._ready, self._checked = await self._probe(), time.monotonic()
        return self._ready

    async def _probe(self) -> bool:
        client, timeout = self._connect(), self._probe_timeout_s
        checks = [client.is_server_ready(client_timeout=timeout)]
        checks += [client.is_model_ready(model, client_timeout=timeout) for model, _, _ in self._graphs.values()]
        answers = await asyncio.gather(*checks, return_exceptions=True)  # down or slow: an InferenceServerException
        return all(answer is True for answer in answers)

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.close()
