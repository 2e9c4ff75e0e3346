"""Inference backends: thin adapters that run a family's three graphs (embedded onnxruntime, Triton)."""

from .base import Backend

__all__ = ["Backend", "create_backend"]


def create_backend(settings, repository, manifest) -> Backend:
    """The backend the settings name, for one family."""
    from ..errors import ConfigurationError

    if settings.backend == "embedded":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(repository, manifest, settings)
    if settings.backend == "triton":
        from .triton import TritonBackend

        return TritonBackend(manifest, settings)  # connects lazily: Triton may come up after the gateway
    raise ConfigurationError(f"unknown backend {settings.backend!r}: use embedded or triton")
