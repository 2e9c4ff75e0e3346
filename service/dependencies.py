"""The routes' FastAPI dependencies: what they read from ``app.state``, the API key, media types, the image uploads
of /v1/tokenize, the body of /v1/variations (JSON or a multipart form), and the ``Call`` that runs engine work under
the request's deadline and connection."""

import asyncio
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from email.message import Message
from functools import partial
from typing import Annotated, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import images as imaging
from .errors import (
    ClientClosedRequest,
    DeadlineExceeded,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    short,
)
from .metrics import Metrics
from .protocol import CONNECTION_LOST
from .schemas import TokenizeRequest, VariationsRequest
from .serving import Call, Serving
from .settings import Settings

T = TypeVar("T")
_INLINE_PARSE_BYTES = 256 << 10  # a JSON body up to this size is parsed on the event loop (well under 10 ms)
_INLINE_BASE64_CHARS = 64 << 10  # base64 images up to this size are decoded on the event loop (under 1 ms: a thread
# hop costs more than that under load)
_UPLOAD_TYPES = {"image/png", "image/jpeg", "image/webp", "application/octet-stream", ""}

# -- app.state (set once by create_app) ----------------------------------------------------------------
# the dependencies are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in a worker
# thread, and a thread hop per dependency cost more than the rest of a small request (bench/routes.py)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_serving(request: Request) -> Serving:
    return request.app.state.serving


async def get_call(request: Request) -> Call:
    return Call(request.state.request_id, partial(guarded, request))


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServingDep = Annotated[Serving, Depends(get_serving)]
CallDep = Annotated[Call, Depends(get_call)]

# -- checks ------------------------------------------------------------------------------------------------


async def require_key(request: Request) -> None:
    """Bearer API key, when keys are configured (the settings read here: a sub-dependency costs each request)."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    ok = scheme.lower() == "bearer" and any(
        hmac.compare_digest(token.strip().encode(), key.encode()) for key in settings.api_keys
    )
    if not ok:
        raise Unauthorized(
            "a valid API key is required: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"}
        )


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower-case ('' when absent)."""
    header = request.headers.get("content-type")
    if not header:
        return ""
    message = Message()
    message["content-type"] = header
    return message.get_content_type().lower()


async def require_json(request: Request) -> None:
    """415 for a body that is not declared as JSON."""
    kind = media_type(request)
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {short(kind) or 'no content type'}")


async def require_metrics_key(request: Request, settings: SettingsDep) -> None:
    """The API key on /metrics too, when TITOK_METRICS_REQUIRE_KEY is set."""
    if settings.metrics_require_key:
        await require_key(request)


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


async def accepted_image(request: Request) -> str | None:
    """The image format the Accept header prefers (highest q, then first listed, of png, jpeg, webp), else None;
    q=0 means "not this one"."""
    by_type = {v: k for k, v in imaging.MEDIA_TYPES.items()}
    best, best_q = None, 0.0
    for part in request.headers.get("accept", "").split(","):
        kind, *params = part.split(";")
        fmt, q = by_type.get(kind.strip().lower()), _quality(params)
        if fmt is not None and q > best_q:
            best, best_q = fmt, q
    return best


def _part_type(upload: UploadFile) -> str:
    # a part's media type without its parameters ("image/png; x=y" is image/png)
    return (upload.content_type or "").split(";")[0].strip().lower()


@asynccontextmanager
async def _form(request: Request, max_files: int, max_fields: int) -> AsyncIterator[FormData]:
    """The request's form (its spooled files closed on exit); too many files or fields is 413, as for JSON."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields)
    except StarletteHTTPException as e:
        if str(e.detail).startswith("Too many"):
            raise PayloadTooLarge(f"at most {max_files - 1} files and {max_fields} fields per form") from None
        raise
    try:
        yield form
    finally:
        await form.close()  # the spooled files


# -- the body of /v1/tokenize --------------------------------------------------------------------------


async def parse_json(model: type[T], data: bytes) -> T:
    """``model`` of a JSON body (422 in the one shape); a large body is parsed off the event loop."""
    if len(data) <= _INLINE_PARSE_BYTES:
        return _validated(model, data)
    return await anyio.to_thread.run_sync(_validated, model, data)


def json_schema(model: type) -> dict:
    """The OpenAPI ``openapi_extra`` of a route that reads ``model`` from its JSON body itself (``parse_json``)."""
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_uploads(request: Request) -> tuple[str | None, list[bytes]]:
    """The model named and the image files sent, as JSON (base64 list) or as a multipart upload of `files`."""
    serving: Serving = request.app.state.serving
    kind = media_type(request)
    if kind == "application/json":
        body = await parse_json(TokenizeRequest, await request.body())
        if len(body.images) > serving.max_images:  # before any base64 is decoded (the family's own limit follows)
            raise PayloadTooLarge(f"at most {serving.max_images} images per request", "images")

        def decode() -> list[bytes]:
            return [imaging.decode_base64(text, f"images[{i}]") for i, text in enumerate(body.images)]

        if sum(len(text) for text in body.images) <= _INLINE_BASE64_CHARS:
            return body.model, decode()
        return body.model, await anyio.to_thread.run_sync(decode)
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {short(kind) or 'nothing'}")
    async with _form(request, max_files=serving.max_images + 1, max_fields=8) as form:
        name = form.get("model")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest("model must be a text field", "model")
        uploads = [v for k, v in form.multi_items() if k in ("files", "file")]
        blobs = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("files must be file uploads", f"files[{i}]")
            if _part_type(upload) not in _UPLOAD_TYPES:
                raise UnsupportedMediaType(f"{short(_part_type(upload))} is not a PNG, JPEG or WebP", f"files[{i}]")
            blobs.append(await upload.read())
    if not blobs:
        raise InvalidRequest("upload at least one image as `files`", "files")
    return name, blobs


# -- the body of /v1/variations -------------------------------------------------------------------------

_LIST_FIELDS = ("class_labels", "mask", "tokens")


def _validated(model: type[T], data: str | bytes | dict) -> T:
    """``model`` of JSON text or form data (text fields: converted, a form has no other type), its schema errors as
    FastAPI's (422 in the one error shape)."""
    try:
        if isinstance(data, dict):
            return model.model_validate(data, strict=False)  # type: ignore[attr-defined]
        return model.model_validate_json(data)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _form_item(key: str, text: str) -> int | str | None:
    # a form carries only text: class labels may be indices, names or null; positions and ids are integers
    text = text.strip()
    if key == "class_labels" and text.lower() in ("", "null", "none"):
        return None
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else text


async def read_variation(request: Request, settings: SettingsDep) -> tuple[VariationsRequest, bytes | None]:
    """The request and the uploaded source image, from JSON (base64 `image` or `tokens`) or a form (multipart with
    the file `image`, or url-encoded with `tokens`; the other fields as text, lists comma-separated or repeated)."""
    kind = media_type(request)
    if kind == "application/json":
        return await parse_json(VariationsRequest, await request.body()), None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {short(kind) or 'nothing'}")
    data: dict[str, object] = {}
    upload = None
    async with _form(request, max_files=2, max_fields=32) as form:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("image", "file") or upload is not None:
                    raise InvalidRequest("upload exactly one file, as `image`", key)
                if _part_type(value) not in _UPLOAD_TYPES:
                    raise UnsupportedMediaType(f"{short(_part_type(value))} is not a PNG, JPEG or WebP", "image")
                upload = await value.read()
            elif key in _LIST_FIELDS:
                items = data.setdefault(key, [])
                assert isinstance(items, list)
                items.extend(_form_item(key, part) for part in value.split(","))
            else:
                data[key] = value
    return _validated(VariationsRequest, data), upload


# -- the request's deadline and connection -------------------------------------------------------------


async def _watch_disconnect(request: Request, lost: asyncio.Future) -> None:
    # the body is already read, so the next message is http.disconnect (client gone, or our response sent)
    while (await request.receive())["type"] != "http.disconnect":
        pass
    if not lost.done():
        lost.set_result(None)


async def guarded(request: Request, work: Awaitable[T], deadline_s: float) -> T:
    """Run the engine's ``work`` until done, ``deadline_s`` after the request arrived (504) or the client leaving
    (its work is cancelled: 499). The work runs in the request's own task; a timer at the deadline and the loss of
    the connection cancel that task. No task is made per request on the gateway's own port (a task and
    ``asyncio.wait`` per request were a sixth of a small request's event-loop time)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    lost: asyncio.Future | None = request.scope.get(CONNECTION_LOST)
    watcher = None
    if lost is None:
        lost = loop.create_future()
        watcher = asyncio.ensure_future(_watch_disconnect(request, lost))
    why: list[str] = []  # our own cancellations of the task, in order

    def cancel(reason: str) -> None:
        why.append(reason)
        task.cancel()

    on_lost = lambda _: cancel("left")  # noqa: E731
    lost.add_done_callback(on_lost)
    deadline = request.scope["state"]["arrival"] + deadline_s
    timer = loop.call_at(loop.time() + (deadline - time.monotonic()), cancel, "deadline")
    try:
        return await work
    except asyncio.CancelledError:
        if not why:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: our cancellations are not the caller's
        if uncancel is not None:
            for _ in why:
                uncancel()
            if task.cancelling():  # type: ignore[attr-defined]
                raise  # someone else cancelled it too
        if why[0] == "left":
            raise ClientClosedRequest("the client closed the connection") from None
        raise DeadlineExceeded("the request did not finish within its deadline") from None
    finally:
        timer.cancel()
        lost.remove_done_callback(on_lost)
        if watcher is not None:
            watcher.cancel()
        if asyncio.iscoroutine(work):
            work.close()  # never started (an already lost connection): no "never awaited" warning
