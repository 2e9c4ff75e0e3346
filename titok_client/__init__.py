"""Client of the titok-serve gateway: ``Client`` in Python, ``titok`` (``python -m titok_client``) in a shell."""

from .api import DEFAULT_URL, ApiError, Client

__version__ = "0.1.0"  # pyproject.toml's version (tests/test_client_install.py holds them equal)
__all__ = ["DEFAULT_URL", "ApiError", "Client", "__version__"]
