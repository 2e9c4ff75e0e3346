"""The backend interface: a family's graphs in, arrays out; batching, validation and metrics live above it."""

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs one family's graphs on whole batches; knows nothing of HTTP, queues or sampling.

    ``request_id`` names the HTTP requests a batch serves (their X-Request-IDs, comma-separated), for a backend
    that can hand it on to its server's logs.
    """

    name: str = "backend"
    remote: bool = False  # a server that may come up after the gateway: warm-up is retried until it answers

    @abstractmethod
    async def encode(self, images: np.ndarray, request_id: str = "") -> np.ndarray:
        """uint8 (B, H, W, 3) images -> int64 (B, N) token ids."""

    @abstractmethod
    async def decode(self, tokens: np.ndarray, request_id: str = "") -> np.ndarray:
        """int64 (B, N) token ids -> uint8 (B, H, W, 3) images."""

    @abstractmethod
    async def logits(self, tokens: np.ndarray, class_ids: np.ndarray, request_id: str = "") -> np.ndarray:
        """int64 (B, N) tokens (mask id where hidden) and int64 (B,) class ids -> float32 (B, N, K) logits."""

    @abstractmethod
    async def step(self, inputs: tuple[np.ndarray, ...], request_id: str = "") -> np.ndarray:
        """One MaskGIT step of B generations on the step graph: ``titok_core.sampler.step_inputs`` -> int64 (B, N)
        next tokens (the null-class rows, guidance and sampling all happen in the graph)."""

    @abstractmethod
    async def ready(self) -> bool:
        """Whether the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release sessions, threads or connections."""
