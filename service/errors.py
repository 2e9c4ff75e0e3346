"""Typed errors of the gateway and the one place that turns every error into ``{"error": {...}}`` JSON."""

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("titok.errors")


class ServiceError(Exception):
    """An error with its HTTP status, a stable type and optionally the request field it concerns."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InternalError(ServiceError):
    """A bug of the gateway (its traceback is logged where it is caught); the client learns only that it happened."""

    def __init__(self, message: str = "internal error"):
        super().__init__(message)


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something impossible (wrong token count, unknown class)."""

    status, type = 400, "invalid_request"


class InvalidImage(ServiceError):
    """An image that cannot be decoded (truncated, corrupt, not base64)."""

    status, type = 400, "invalid_image"


class Unauthorized(ServiceError):
    """A missing or wrong API key."""

    status, type = 401, "unauthorized"


class ModelNotFound(ServiceError):
    """A model family that is not served."""

    status, type = 404, "model_not_found"


class PayloadTooLarge(ServiceError):
    """A body, an image or a count over its limit."""

    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """A content type (of the body or of an image) that is not accepted."""

    status, type = 415, "unsupported_media_type"


class Overloaded(ServiceError):
    """The queue is full: come back later."""

    status, type = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ClientClosedRequest(ServiceError):
    """The client went away before the answer was ready (nginx's 499; nobody reads it)."""

    status, type = 499, "client_closed_request"


class BackendUnavailable(ServiceError):
    """The inference backend failed or is not running."""

    status, type = 503, "backend_unavailable"


class DeadlineExceeded(ServiceError):
    """The request took longer than its deadline."""

    status, type = 504, "deadline_exceeded"


class ConfigurationError(RuntimeError):
    """Settings or a model repository the gateway cannot start with."""


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
MAX_MESSAGE = 400


def short(text: str, limit: int = 40) -> str:
    """Echoed input cut to a short prefix (a 100 KB class name must not come back whole)."""
    return text if len(text) <= limit else text[:limit] + "..."


def error_body(type_: str, message: str, param: str | None = None) -> dict:
    """The one error shape; the message has no object reprs (heap addresses) and a bounded length."""
    message = _REPR.sub("the upload", message)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    error = {"type": type_, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}


# routes that answer errors in OpenAI's shape, so that OpenAI's clients read them (service/openai_images.py)
OPENAI_PATHS = ("/v1/images/",)


def error_for(path: str, status: int, type_: str, message: str, param: str | None = None) -> dict:
    """The error body for a request path: the one shape, or OpenAI's on its routes: ``{"error": {"message", "type",
    "param", "code"}}`` with our type as ``code`` and OpenAI's coarse type (``invalid_request_error`` for a 4xx,
    ``server_error`` otherwise)."""
    ours = error_body(type_, message, param)  # the message cleaned and bounded in either shape
    if not path.startswith(OPENAI_PATHS):
        return ours
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": ours["error"]["message"], "type": kind, "param": param, "code": type_}}


def _response(request: Request, status: int, type_: str, message: str, param=None, headers=None) -> JSONResponse:
    request.scope.setdefault("state", {})["error_type"] = type_  # read by the metrics middleware
    body = error_for(request.url.path, status, type_, message, param)
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc) -> str | None:
    # ("body", "tokens", 0) -> "tokens[0]"; the location kind itself is not a field name
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or None


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves as the one JSON shape; never a traceback."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return _response(request, exc.status, exc.type, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:  # its loc is ("body", <character position>) or ("body",): no field to name
            at = [p for p in bad_json.get("loc", ()) if isinstance(p, int)]
            why = bad_json.get("ctx", {}).get("error", "JSON decode error")
            where = f" (at character {at[0]})" if at else ""
            return _response(request, 422, "validation_error", f"the body is not valid JSON: {why}{where}")
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc(first.get("loc", ()))
        message = "; ".join(f"{_loc(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5])
        return _response(request, 422, "validation_error", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's JSON parse
            return _response(request, 422, "validation_error", "the body is not valid JSON (or nested too deeply)")
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        return _response(request, exc.status_code, type_, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error", extra={"request_id": request.scope.get("state", {}).get("request_id")})
        error = InternalError()
        return _response(request, error.status, error.type, error.message)
