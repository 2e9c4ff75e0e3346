"""The app factory: settings -> registry -> FastAPI app with middleware, error handlers and routes."""

import gc
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute

from .backends import BackendFactory, create_backend
from .docs import docs_app
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import BodyGuard, HotRoutes, RequestContext
from .openai_images import router as openai_router
from .registry import Registry
from .routes import HOT_ROUTES, router
from .serving import Serving
from .settings import Settings

DESCRIPTION = """Tokenize images into TiTok's 1D tokens, decode tokens back into images, and generate
class-conditional images with MaskGIT. Every error answers `{"error": {"type", "message", "param"?}}` (OpenAI's
`{"error": {"message", "type", "param", "code"}}` on the OpenAI-compatible `/v1/images/generations`).
A playground page is served at `/`."""
STATIC = Path(__file__).resolve().parent / "static"


def page_router() -> tuple[APIRouter, set[str]]:
    """The playground at `/` and its files at `/static/<name>` (they need no API key; the page's API calls send
    it), and the paths it serves."""
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def playground() -> FileResponse:
        return FileResponse(files["index.html"])

    @router.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        if name not in files:
            raise HTTPException(404, "no such file under /static")
        return FileResponse(files[name])

    return router, {"/", *(f"/static/{name}" for name in files)}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The registry's workers run (and its models are warm) while the app serves."""
    registry: Registry = app.state.registry
    await registry.start()
    # what start-up made (sessions, manifests, the app) lives as long as the process: out of the collector's sight,
    # so that its collections under load walk only what requests allocate
    gc.freeze()
    try:
        yield
    finally:
        await registry.close()


def create_app(settings: Settings | None = None, backend_factory: BackendFactory = create_backend) -> FastAPI:
    """A gateway serving every family in ``settings.model_repository`` (raises ConfigurationError when none);
    ``backend_factory`` makes each family's backend (tests hand in one of their own)."""
    settings = settings or Settings()
    metrics = Metrics()
    registry = Registry.load(settings, metrics, backend_factory)
    # newer FastAPI looks OpenTelemetry providers up on every request (8% of a small request's time on the event
    # loop, bench/routes.py); the gateway has its own metrics and no OpenTelemetry set-up
    quiet = {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    options = quiet if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {}
    app = docs_app(title="titok-serve", version="1", description=DESCRIPTION, lifespan=lifespan, **options)
    # what the routes and the lifespan read (service/dependencies.py), and nothing else
    app.state.settings, app.state.registry, app.state.metrics = settings, registry, metrics
    app.state.serving = Serving(settings, registry, metrics)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(openai_router)
    pages, page_paths = page_router()
    app.include_router(pages)
    # innermost: the hot routes skip FastAPI's own plumbing, not our middlewares
    hot = {r.path: (r, r.endpoint) for r in router.routes if isinstance(r, APIRoute) and r.path in HOT_ROUTES}
    app.add_middleware(HotRoutes, routes=hot, exception_handlers=app.exception_handlers)
    # inside CORS, so that its 413 and 408 carry the CORS headers
    app.add_middleware(
        BodyGuard,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_s=settings.read_timeout_s,
        body_timeout_s=settings.request_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    api_routes = [*router.routes, *openai_router.routes]
    routes = {route.path for route in api_routes if isinstance(route, APIRoute)} | page_paths
    # added last, so it is outermost: it sees (and logs) every request, CORS preflights included
    app.add_middleware(RequestContext, metrics=metrics, routes=routes)
    return app
