"""The routes' FastAPI dependencies: what they read from ``app.state``, the API key, media types, the image uploads
of /v1/tokenize, the body of /v1/variations (JSON or a multipart form), and the ``Call`` that runs engine work under
the request's deadline and connection."""

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable
from email.message import Message
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from . import images as imaging
from .errors import ClientClosedRequest, DeadlineExceeded, InvalidRequest, Unauthorized, UnsupportedMediaType
from .metrics import Metrics
from .schemas import TokenizeRequest, VariationsRequest
from .serving import Call, Serving
from .settings import Settings

T = TypeVar("T")
_UPLOAD_TYPES = {"image/png", "image/jpeg", "image/webp", "application/octet-stream", ""}

# -- app.state (set once by create_app) ----------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_call(request: Request) -> Call:
    return Call(request.state.request_id, partial(guarded, request))


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServingDep = Annotated[Serving, Depends(get_serving)]
CallDep = Annotated[Call, Depends(get_call)]

# -- checks ------------------------------------------------------------------------------------------------


def require_key(request: Request, settings: SettingsDep) -> None:
    """Bearer API key, when keys are configured."""
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


def require_json(request: Request) -> None:
    """415 for a body that is not declared as JSON."""
    kind = media_type(request)
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {kind or 'no content type'}")


def accepted_image(request: Request) -> str | None:
    """The image format the Accept header asks for (first listed of png, jpeg, webp), else None."""
    by_type = {v: k for k, v in imaging.MEDIA_TYPES.items()}
    for part in request.headers.get("accept", "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in by_type:
            return by_type[kind]
    return None


# -- the body of /v1/tokenize --------------------------------------------------------------------------


async def read_uploads(request: Request, settings: SettingsDep) -> tuple[str | None, list[bytes]]:
    """The model named and the image files sent, as JSON (base64 list) or as a multipart upload of `files`."""
    kind = media_type(request)
    if kind == "application/json":
        try:
            body = TokenizeRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
        return body.model, [imaging.decode_base64(text, f"images[{i}]") for i, text in enumerate(body.images)]
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {kind or 'nothing'}")
    async with request.form(max_files=settings.max_images + 1, max_fields=8) as form:  # closes spooled files
        name = form.get("model")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest("model must be a text field", "model")
        uploads = [v for k, v in form.multi_items() if k in ("files", "file")]
        blobs = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("files must be file uploads", f"files[{i}]")
            if (upload.content_type or "").lower() not in _UPLOAD_TYPES:
                raise UnsupportedMediaType(f"{upload.content_type} is not a PNG, JPEG or WebP", f"files[{i}]")
            blobs.append(await upload.read())
    if not blobs:
        raise InvalidRequest("upload at least one image as `files`", "files")
    return name, blobs


# -- the body of /v1/variations -------------------------------------------------------------------------

_LIST_FIELDS = ("class_labels", "mask", "tokens")


def _validated(model: type[T], data: str | bytes | dict) -> T:
    """``model`` of JSON text or form data, its schema errors as FastAPI's (422 in the one error shape)."""
    try:
        if isinstance(data, dict):
            return model.model_validate(data)  # type: ignore[attr-defined]
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
        return _validated(VariationsRequest, await request.body()), None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {kind or 'nothing'}")
    data: dict[str, object] = {}
    upload = None
    async with request.form(max_files=2, max_fields=32) as form:  # closes spooled files
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("image", "file") or upload is not None:
                    raise InvalidRequest("upload exactly one file, as `image`", key)
                if (value.content_type or "").lower() not in _UPLOAD_TYPES:
                    raise UnsupportedMediaType(f"{value.content_type} is not a PNG, JPEG or WebP", "image")
                upload = await value.read()
            elif key in _LIST_FIELDS:
                items = data.setdefault(key, [])
                assert isinstance(items, list)
                items.extend(_form_item(key, part) for part in value.split(","))
            else:
                data[key] = value
    return _validated(VariationsRequest, data), upload


# -- the request's deadline and connection -------------------------------------------------------------


async def _disconnected(request: Request) -> None:
    # the body is already read, so the next message is http.disconnect (client gone, or our response sent)
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def guarded(request: Request, work: Awaitable[T], deadline_s: float) -> T:
    """Run the engine's ``work`` until done, ``deadline_s`` after the request arrived (504) or the client leaving
    (its work is cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    timeout = request.scope["state"]["arrival"] + deadline_s - time.monotonic()
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if watcher in done:
        raise ClientClosedRequest("the client closed the connection")
    raise DeadlineExceeded("the request did not finish within its deadline")
