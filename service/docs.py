"""The API reference pages: Swagger UI at /docs and ReDoc at /redoc with their assets served from the installed
``fastapi-offline`` package (nothing from a CDN), and the Bearer key declared in the OpenAPI schema, so that Swagger
UI's Authorize button sends it."""

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

STATIC_URL = "/static-offline-docs"


def docs_app(**options: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load their scripts from ``STATIC_URL`` on the gateway itself."""
    app = FastAPIOffline(static_url=STATIC_URL, **options)
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of TITOK_API_KEYS (only when the gateway sets keys): `Authorization: Bearer <key>`.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
