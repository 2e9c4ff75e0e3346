"""``POST /v1/images/generations``: OpenAI's images API over the generator, so that OpenAI's clients work unchanged.

The prompt is one class, by name or by index as text ("Sneaker", "7"); ``n`` images of it come back base64-encoded as
``{"created", "data": [{"b64_json", "revised_prompt", "seed"}]}``. Our sampling settings and ``seed`` are accepted as
extra fields (``extra_body`` in OpenAI's Python client). Errors on this route have OpenAI's shape
(``service/errors.py``: ``error_for``). Generation is the native route's (``Serving.generate_openai``).
"""

import re
from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from .dependencies import CallDep, ServingDep, require_json, require_key
from .errors import InvalidRequest
from .schemas import MAX_SEED, GenerateRequest, ImageFormat, Schedule, _Request


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error` (4xx) or `server_error` (5xx).")
    param: str | None
    code: str = Field(description="The gateway's error type (e.g. `invalid_request`, `model_not_found`).")


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error object."""

    error: OpenAIError


class ImagesRequest(_Request):
    """OpenAI's image generation request; the prompt names one class."""

    model: str | None = Field(None, description="Model family; the default family when omitted.")
    prompt: str = Field(
        max_length=1000, description="One class: its name (any case) or its index as text.", examples=["Sneaker"]
    )
    n: int = Field(1, ge=1, description="Images to make.")
    response_format: Literal["b64_json"] | None = Field(None, description="Only `b64_json` (no image URLs).")
    output_format: ImageFormat | None = Field(None, description="Image format (png when omitted).")
    size: str | None = Field(None, description="`auto` or the model's own size, e.g. `32x32`.")
    quality: str | None = Field(None, description="Accepted for compatibility; ignored.")
    style: str | None = Field(None, description="Accepted for compatibility; ignored.")
    user: str | None = Field(None, max_length=256, description="Accepted for compatibility; ignored.")
    # ours
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Image i uses seed + i; random when omitted.")
    num_steps: int | None = Field(None, ge=1, description="Sampling steps.")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale.")
    guidance_schedule: Schedule | None = Field(None, description="How guidance grows over the steps.")
    temperature: float | None = Field(None, ge=0, le=1000, description="Gumbel noise temperature.")


class ImageObject(BaseModel):
    b64_json: str = Field(description="The image file, base64-encoded.")
    revised_prompt: str = Field(description="The class name the image was generated for.")
    seed: int = Field(description="Seed of this image (reproduces it with n=1).")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the answer.")
    data: list[ImageObject]
    output_format: ImageFormat
    size: str


router = APIRouter()
_ERRORS: dict[int | str, dict] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)
}


@router.post(
    "/v1/images/generations",
    dependencies=[Depends(require_key), Depends(require_json)],
    responses=_ERRORS,
    response_model=ImagesResponse,
    summary="OpenAI-compatible image generation (the prompt is a class name or index)",
    tags=["OpenAI-compatible"],
)
async def images_generations(body: ImagesRequest, serving: ServingDep, call: CallDep) -> Response:
    text = body.prompt.strip()
    fmt = body.output_format or "png"
    request = GenerateRequest(
        model=body.model,
        class_labels=int(text) if text.isdigit() else text,
        n=body.n,
        seed=body.seed,
        num_steps=body.num_steps,
        guidance_scale=body.guidance_scale,
        guidance_schedule=body.guidance_schedule,
        temperature=body.temperature,
        format=fmt,
    )
    side = serving.registry.get(body.model).info.image_size
    if body.size not in (None, "auto") and not _is_size(body.size, side):
        raise InvalidRequest(f"this model makes {side}x{side} images; size must be auto or {side}x{side}", "size")
    answer = await serving.generate_openai(request, call)
    images = [ImageObject(b64_json=i.b64_json, revised_prompt=i.class_name, seed=i.seed) for i in answer.images]
    result = ImagesResponse(created=answer.created, data=images, output_format=fmt, size=f"{side}x{side}")
    return Response(result.model_dump_json(), media_type="application/json")


def _is_size(text: str | None, side: int) -> bool:
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text or "")
    return match is not None and int(match[1]) == int(match[2]) == side
