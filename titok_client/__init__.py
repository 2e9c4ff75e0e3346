"""Client of the titok-serve gateway: ``Client`` in Python, ``titok`` (``python -m titok_client``) in a shell."""

from .api import DEFAULT_URL, ApiError, Client

__all__ = ["DEFAULT_URL", "ApiError", "Client"]
