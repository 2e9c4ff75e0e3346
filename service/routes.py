"""The HTTP routes: each parses what FastAPI has not, calls the serving layer and shapes the HTTP answer.

What a route needs comes from ``app.state`` through the dependencies of ``service/dependencies.py``.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from . import images as imaging
from .dependencies import (
    CallDep,
    MetricsDep,
    ServingDep,
    accepted_image,
    get_call,
    get_serving,
    json_schema,
    parse_json,
    read_uploads,
    read_variation,
    require_json,
    require_key,
    require_metrics_key,
)
from .schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    VariationsRequest,
    VariationsResponse,
)
from .serving import RawImage

_ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)
}
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
_VARIATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VariationsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "The source image as the file `image`, every other field of the JSON form as "
                    "text (lists comma-separated or repeated).",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
_KEY = Depends(require_key)

router = APIRouter()


@router.get(
    "/v1/models", dependencies=[_KEY], responses=_ERRORS, response_model=ModelList, summary="The served model families"
)
async def list_models(serving: ServingDep) -> ModelList:
    return serving.models()


# the hot routes, called directly by service/middleware.py's HotRoutes (each takes the request alone)
HOT_ROUTES = ("/v1/tokenize", "/v1/detokenize", "/v1/generate")

# tokenize, detokenize and generate, the hot routes, call their dependencies themselves, in the order FastAPI would:
# FastAPI's solving of each declared dependency (a recursion over its parameters, cookies included) cost more of a
# request's time on the event loop than the dependency's own work (bench/routes.py, docs/benchmarks.md)


@router.post(
    "/v1/tokenize",
    responses=_ERRORS,
    response_model=TokenizeResponse,
    openapi_extra=_TOKENIZE_BODY,
    summary="Images to token ids (JSON base64 list or multipart `files`)",
)
async def tokenize(request: Request) -> Response:
    await require_key(request)
    name, blobs = await read_uploads(request)
    serving, call = await get_serving(request), await get_call(request)
    return _json(await serving.tokenize(name, blobs, call))


@router.post(
    "/v1/detokenize",
    responses={**_ERRORS, 200: {"content": {t: {} for t in imaging.MEDIA_TYPES.values()}}},
    response_model=DetokenizeResponse,
    openapi_extra=json_schema(DetokenizeRequest),
    summary="Token ids to images (a single sequence with `Accept: image/png` returns the raw image)",
)
async def detokenize(request: Request) -> Response:
    await require_key(request)
    await require_json(request)
    body = await parse_json(DetokenizeRequest, await request.body())
    accepted = await accepted_image(request)
    serving, call = await get_serving(request), await get_call(request)
    answer = await serving.detokenize(body, accepted, call)
    if isinstance(answer, RawImage):
        return Response(answer.data, media_type=answer.media_type)
    return _json(answer)


@router.post(
    "/v1/generate",
    responses=_ERRORS,
    response_model=GenerateResponse,
    response_model_exclude_none=True,
    openapi_extra=json_schema(GenerateRequest),
    summary="Class-conditional images (MaskGIT with classifier-free guidance)",
)
async def generate(request: Request) -> Response:
    await require_key(request)
    await require_json(request)
    body = await parse_json(GenerateRequest, await request.body())
    serving, call = await get_serving(request), await get_call(request)
    return _json(await serving.generate(body, call), exclude_none=True)


@router.post(
    "/v1/variations",
    dependencies=[_KEY],
    responses=_ERRORS,
    response_model=VariationsResponse,
    openapi_extra=_VARIATIONS_BODY,
    summary="Variations of an image: a share of its tokens re-generated, for a target class (class transfer)",
)
async def variations(
    parsed: Annotated[tuple[VariationsRequest, bytes | None], Depends(read_variation)],
    serving: ServingDep,
    call: CallDep,
) -> Response:
    body, upload = parsed
    answer = await serving.variations(body, upload, call)
    return _json(answer, exclude=None if body.return_tokens else {"images": {"__all__": {"tokens"}}})


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz(serving: ServingDep) -> Health:
    return serving.health()


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, summary="Readiness")
async def readyz(serving: ServingDep) -> Health:
    return await serving.ready()


@router.get(
    "/metrics", dependencies=[Depends(require_metrics_key)], summary="Prometheus metrics", response_class=Response
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _json(answer: BaseModel, **options) -> Response:
    """The JSON of an answer already validated by its model; FastAPI would validate and serialise it again."""
    return Response(answer.model_dump_json(**options), media_type="application/json")
