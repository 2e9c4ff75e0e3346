"""Inference backends: thin adapters that run a family's graphs (embedded onnxruntime, Triton)."""

from collections.abc import Callable
from pathlib import Path

from titok_core.manifest import Manifest

from ..settings import Settings
from .base import Backend

__all__ = ["Backend", "BackendFactory", "create_backend"]

# (settings, model repository, the family's manifest) -> the family's backend
BackendFactory = Callable[[Settings, Path, Manifest], Backend]


def create_backend(settings: Settings, repository: Path, manifest: Manifest) -> Backend:
    """The backend the settings name, for one family."""
    from ..errors import ConfigurationError

    if settings.backend == "embedded":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(repository, manifest, settings)
    if settings.backend == "triton":
        from .triton import TritonBackend

        return TritonBackend(manifest, settings)  # connects lazily: Triton may come up after the gateway
    raise ConfigurationError(f"unknown backend {settings.backend!r}: use embedded or triton")
