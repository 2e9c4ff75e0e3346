"""The HTTP routes: thin handlers that parse, call the engine and shape the answer."""

import asyncio
import base64
import hmac
import secrets
import time
from email.message import Message

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from . import images as imaging
from .errors import (
    BackendUnavailable,
    ClientClosedRequest,
    DeadlineExceeded,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from .metrics import Metrics
from .registry import Registry
from .schemas import (
    ClassInfo,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Health,
    ImageData,
    ModelCard,
    ModelList,
    SamplingDefaults,
    TokenizeRequest,
    TokenizeResponse,
)
from .settings import Settings

# a few small images (64x64 each) decode inline in well under a millisecond
_INLINE_DECODE_PIXELS = 4 * 64 * 64
_UPLOAD_TYPES = {"image/png", "image/jpeg", "image/webp", "application/octet-stream", ""}
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)}
_TOKENIZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TokenizeRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "model": {"type": "string"},
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


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


async def _disconnected(request: Request) -> None:
    # the body is already read, so the next message is http.disconnect (client gone, or our response sent)
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def guarded(request: Request, work):
    """Run the engine's ``work`` until done, the deadline (504) or the client leaving (its work is cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    timeout = request.scope["state"]["deadline"] - time.monotonic()
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


def _raw_format(accept: str | None) -> str | None:
    """The image format an Accept header asks for (first listed of png, jpeg, webp), else None."""
    by_type = {v: k for k, v in imaging.MEDIA_TYPES.items()}
    for part in (accept or "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in by_type:
            return by_type[kind]
    return None


def build_router(settings: Settings, registry: Registry, metrics: Metrics) -> APIRouter:
    """The API routes, bound to one app's settings, registry and metrics."""

    def require_key(request: Request) -> None:
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

    router = APIRouter()
    api = dict(dependencies=[Depends(require_key)], responses=_ERRORS)
    # a few images decode at once: each may take its full pixel limit in memory while it is decoded
    decoding = anyio.CapacityLimiter(4)

    @router.get("/v1/models", **api, response_model=ModelList, summary="The served model families")
    async def list_models() -> ModelList:
        cards = []
        for name, model in registry.models.items():
            info = model.info
            cards.append(
                ModelCard(
                    id=name,
                    version=info.version,
                    image_size=info.image_size,
                    num_tokens=info.num_tokens,
                    codebook_size=info.codebook_size,
                    num_classes=info.num_classes,
                    classes=[ClassInfo(id=i, name=n) for i, n in enumerate(info.class_names)],
                    sampling=SamplingDefaults(**info.sampling),
                    max_batch_size=info.max_batch_size,
                )
            )
        return ModelList(data=cards)

    @router.post(
        "/v1/tokenize",
        **api,
        response_model=TokenizeResponse,
        openapi_extra=_TOKENIZE_BODY,
        summary="Images to token ids (JSON base64 list or multipart `files`)",
    )
    async def tokenize(request: Request) -> Response:
        kind = media_type(request)
        if kind == "application/json":
            try:
                body = TokenizeRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
            name = body.model
            blobs = [imaging.decode_base64(text, f"images[{i}]") for i, text in enumerate(body.images)]
        elif kind == "multipart/form-data":
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
        else:
            raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {kind or 'nothing'}")
        model = registry.get(name)
        if len(blobs) > settings.max_images:
            raise PayloadTooLarge(f"at most {settings.max_images} images per request", "images")
        size, limit = model.info.image_size, settings.max_image_pixels
        opened = [imaging.open_image(data, limit, f"images[{i}]") for i, data in enumerate(blobs)]  # headers only

        def decode() -> list[np.ndarray]:
            return [imaging.preprocess(imaging.load_pixels(im, f"images[{i}]"), size) for i, im in enumerate(opened)]

        # small images decode faster than the hop to a worker thread; large ones must not stall the event loop
        if sum(im.width * im.height for im in opened) <= _INLINE_DECODE_PIXELS:
            arrays = decode()
        else:
            arrays = await anyio.to_thread.run_sync(decode, limiter=decoding)
        tokens = await guarded(request, model.tokenize(np.stack(arrays), request.state.request_id))
        metrics.tokens_produced.labels(model.info.family, "tokenize").inc(tokens.size)
        answer = TokenizeResponse(
            model=model.info.family,
            tokens=tokens.tolist(),
            num_tokens=model.info.num_tokens,
            codebook_size=model.info.codebook_size,
        )
        return _json(answer)

    @router.post(
        "/v1/detokenize",
        dependencies=[Depends(require_key), Depends(require_json)],
        responses={**_ERRORS, 200: {"content": {t: {} for t in imaging.MEDIA_TYPES.values()}}},
        response_model=DetokenizeResponse,
        summary="Token ids to images (a single sequence with `Accept: image/png` returns the raw image)",
    )
    async def detokenize(body: DetokenizeRequest, request: Request):
        model = registry.get(body.model)
        if len(body.tokens) > settings.max_images:
            raise PayloadTooLarge(f"at most {settings.max_images} token sequences per request", "tokens")
        tokens = model.check_tokens(body.tokens)
        raw = _raw_format(request.headers.get("accept")) if len(body.tokens) == 1 else None
        fmt = raw or body.format
        images = await guarded(request, model.detokenize(tokens, request.state.request_id))
        files = await run_in_threadpool(lambda: [imaging.encode_image(im, fmt) for im in images])
        if raw:
            return Response(files[0], media_type=imaging.MEDIA_TYPES[fmt])
        return _json(
            DetokenizeResponse(model=model.info.family, format=fmt, images=[ImageData(b64_json=_b64(f)) for f in files])
        )

    @router.post(
        "/v1/generate",
        dependencies=[Depends(require_key), Depends(require_json)],
        responses=_ERRORS,
        response_model=GenerateResponse,
        response_model_exclude_none=True,
        summary="Class-conditional images (MaskGIT with classifier-free guidance)",
    )
    async def generate(body: GenerateRequest, request: Request) -> Response:
        model = registry.get(body.model)
        labels = body.class_labels if isinstance(body.class_labels, list) else [body.class_labels]
        if not labels:
            raise InvalidRequest("give at least one class label", "class_labels")
        single = not isinstance(body.class_labels, list)
        ids = [model.class_id(lab, "class_labels" if single else f"class_labels[{i}]") for i, lab in enumerate(labels)]
        total = len(ids) * body.n
        if total > settings.max_n:
            raise InvalidRequest(f"at most {settings.max_n} images per request (class labels x n)", "n")
        if body.num_steps is not None and body.num_steps > settings.max_steps:
            raise InvalidRequest(f"at most {settings.max_steps} steps", "num_steps")
        sampling = model.sampling(
            num_steps=body.num_steps,
            guidance_scale=body.guidance_scale,
            guidance_schedule=body.guidance_schedule,
            temperature=body.temperature,
        )
        base = body.seed if body.seed is not None else secrets.randbelow(2**31)
        class_ids = [c for c in ids for _ in range(body.n)]  # label-major
        seeds = [base + i for i in range(total)]
        tokens, images = await guarded(request, model.generate(class_ids, seeds, sampling, request.state.request_id))
        files = await run_in_threadpool(lambda: [imaging.encode_image(im, body.format) for im in images])
        family = model.info.family
        metrics.images_generated.labels(family).inc(total)
        metrics.tokens_produced.labels(family, "generate").inc(tokens.size)
        answer = GenerateResponse(
            created=int(time.time()),
            model=family,
            format=body.format,
            images=[
                GeneratedImage(
                    b64_json=_b64(f),
                    class_label=c,
                    class_name=model.info.class_names[c],
                    seed=s,
                    tokens=t.tolist() if body.return_tokens else None,
                )
                for f, c, s, t in zip(files, class_ids, seeds, tokens, strict=True)
            ],
        )
        return _json(answer, exclude_none=True)

    @router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, summary="Readiness")
    async def readyz() -> Health:
        if not await registry.ready():
            raise BackendUnavailable("a model or its backend is not ready")
        return Health(status="ready", models=list(registry.models))

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _json(answer: BaseModel, **options) -> Response:
    """The JSON of an answer already validated by its model; FastAPI would validate and serialise it again."""
    return Response(answer.model_dump_json(**options), media_type="application/json")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
