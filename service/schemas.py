"""Request and response models of the v1 API (their field descriptions are the /docs page)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from titok_core.sampler import SCHEDULES

ImageFormat = Literal["png", "jpeg", "webp"]
Schedule = Literal[SCHEDULES]  # type: ignore[valid-type]
MAX_SEED = 2**63 - 1

_MODEL = Field(None, description="Model family; the default family when omitted.", examples=["titok-fmnist"])


# list bounds of the schema, far above the settings' limits (which answer 413 with the limit): an absurd list is
# refused while it is validated, before any work
_MAX_ITEMS, _MAX_IDS = 1024, 4096


class _Request(BaseModel):
    # unknown fields and NaN/Infinity are refused (422) rather than silently ignored; strict: true is not 1 and
    # "5" is not 5 (a form's text fields are converted where they are read, service/dependencies.py)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# -- models --------------------------------------------------------------------------------------------


class ClassInfo(BaseModel):
    """One class the generator knows."""

    id: int = Field(description="Class index, usable as a class label.")
    name: str = Field(description="Class name, usable as a class label (case-insensitive).")


class SamplingDefaults(BaseModel):
    """The family's default sampling settings (used for every field a generate request omits)."""

    num_steps: int
    guidance_scale: float
    guidance_schedule: Schedule
    temperature: float
    softmax_annealing: bool = Field(description="Temperature annealed over the steps (the released models' sampler).")


class ServingLimitsCard(BaseModel):
    """The limits a family is served with: the manifest's, where no TITOK_* variable overrides them."""

    max_batch_size: int = Field(description="Rows per model call.")
    max_queue: int = Field(description="Rows (or generations) waiting per graph before 429.")
    max_n: int = Field(description="Images per generate or variations request.")
    max_images: int = Field(description="Images or token sequences per tokenize / detokenize request.")
    max_image_pixels: int = Field(description="Pixels per uploaded image (413 beyond it).")
    deadlines_s: dict[str, float] = Field(description="Seconds from arrival before 504, per route.")


class ModelCard(BaseModel):
    """A served model family and its facts, from its manifest."""

    id: str = Field(description="Family name, the value of `model` in requests.")
    object: Literal["model"] = "model"
    version: int = Field(description="Model version in the repository.")
    image_size: int = Field(description="Side of the square images the model reads and writes, in pixels.")
    content_size: int | None = Field(
        description="Side of the centred square its training images' content filled, when smaller than image_size "
        "(Fashion-MNIST: 28x28 on a black 32x32 canvas). An uploaded image of another size than image_size is fitted "
        "to it and centred on black; null: images fill the frame (shorter side resized, centre crop)."
    )
    num_tokens: int = Field(description="Tokens per image.")
    codebook_size: int = Field(description="Token ids lie in [0, codebook_size).")
    num_classes: int = Field(description="Number of generator classes.")
    classes: list[ClassInfo]
    sampling: SamplingDefaults
    max_batch_size: int = Field(description="Largest batch the model files accept.")
    limits: ServingLimitsCard


class ModelList(BaseModel):
    """The served model families."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- tokenize ------------------------------------------------------------------------------------------


class TokenizeRequest(_Request):
    """Images to turn into token ids (JSON form; a multipart upload of `files` is accepted too)."""

    model: str | None = _MODEL
    images: list[str] = Field(
        min_length=1,
        max_length=_MAX_ITEMS,
        description="Base64 PNG, JPEG or WebP images (a `data:image/...;base64,` prefix is allowed). Any size and "
        "mode: converted to RGB (transparency composited on black), the shorter side resized to the model's size "
        "(bicubic, antialiased) and centre-cropped.",
    )


class TokenizeResponse(BaseModel):
    """One token sequence per image, in request order."""

    model: str
    tokens: list[list[int]] = Field(description="Token ids, one list of `num_tokens` per image.")
    num_tokens: int
    codebook_size: int


# -- detokenize ----------------------------------------------------------------------------------------


class DetokenizeRequest(_Request):
    """Token sequences to turn back into images."""

    model: str | None = _MODEL
    tokens: list[Annotated[list[int], Field(max_length=_MAX_IDS)]] = Field(
        min_length=1, max_length=_MAX_ITEMS, description="Sequences of exactly `num_tokens` ids in [0, codebook_size)."
    )
    format: ImageFormat = Field("png", description="Output image format (JPEG quality 95, WebP lossless).")


class ImageData(BaseModel):
    """One encoded image."""

    b64_json: str = Field(description="The image file, base64-encoded.")


class DetokenizeResponse(BaseModel):
    """One image per sequence, in request order."""

    model: str
    format: ImageFormat
    images: list[ImageData]


# -- generate ------------------------------------------------------------------------------------------


class GenerateRequest(_Request):
    """Class-conditional generation with MaskGIT; every omitted sampling field takes the model's default."""

    model: str | None = _MODEL
    class_labels: int | str | Annotated[list[int | str], Field(max_length=_MAX_ITEMS)] = Field(
        description="Class indices or names (one or a list); `n` images are made for each.", examples=[[0, "Sneaker"]]
    )
    n: int = Field(1, ge=1, description="Images per class label.")
    num_steps: int | None = Field(None, ge=1, description="Sampling steps.")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale.")
    guidance_schedule: Schedule | None = Field(None, description="How guidance grows over the steps.")
    temperature: float | None = Field(
        None, ge=0, le=1000, description="Temperature of softmax(logits / T) sampling (annealed to 0)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Image i of the request uses seed + i; the same request and seed give the same tokens and bytes "
        "whatever else is being served. Random when omitted (and returned).",
    )
    return_tokens: bool = Field(False, description="Also return each image's token ids.")
    format: ImageFormat = Field("png", description="Output image format.")


class GeneratedImage(BaseModel):
    """One generated image."""

    b64_json: str = Field(description="The image file, base64-encoded.")
    class_label: int = Field(description="Class index the image was generated for.")
    class_name: str
    seed: int = Field(description="Seed of this image (reproduces it with n=1).")
    tokens: list[int] | None = Field(None, description="Token ids, when `return_tokens` was set.")


class GenerateResponse(BaseModel):
    """The generated images, label-major (all images of the first label first)."""

    created: int = Field(description="Unix time of the answer.")
    model: str
    format: ImageFormat
    images: list[GeneratedImage]


# -- variations ----------------------------------------------------------------------------------------


class VariationsRequest(_Request):
    """Variations of one image (or its tokens): a share of its tokens hidden and re-generated by MaskGIT from the
    rest, for a target class or unconditionally. JSON, or a multipart form with the image as the file `image` and
    the other fields as form fields (lists comma-separated or repeated)."""

    model: str | None = _MODEL
    image: str | None = Field(
        None,
        description="The source image, base64 PNG, JPEG or WebP (preprocessed as for tokenize). Give `image` "
        "or `tokens`.",
    )
    tokens: Annotated[list[int], Field(max_length=_MAX_IDS)] | None = Field(
        None, description="The source's `num_tokens` token ids, instead of an image."
    )
    strength: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fraction of the tokens re-generated (rounded half up), at positions drawn from each image's "
        "seed: 0 gives the source back, 1 a new image. Give `strength` or `mask`.",
    )
    mask: Annotated[list[int], Field(max_length=_MAX_IDS)] | None = Field(
        None, description="Explicit token positions in [0, num_tokens) to re-generate, the same for every image."
    )
    class_labels: int | str | Annotated[list[int | str | None], Field(max_length=_MAX_ITEMS)] | None = Field(
        None,
        description="Target class indices or names (one or a list); `n` images are made for each. null (or omitted) "
        "conditions on the null class: unconditional.",
        examples=[["Dress"]],
    )
    n: int = Field(1, ge=1, description="Images per class label.")
    num_steps: int | None = Field(
        None, ge=1, description="Steps of the full schedule; a variation runs only its remaining steps."
    )
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale.")
    guidance_schedule: Schedule | None = Field(None, description="How guidance grows over the steps.")
    temperature: float | None = Field(
        None, ge=0, le=1000, description="Temperature of softmax(logits / T) sampling (annealed to 0)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Image i uses seed + i (for its hidden positions and its sampling); reproducible whatever else "
        "is being served. Random when omitted (and returned).",
    )
    return_tokens: bool = Field(False, description="Also return each image's token ids.")
    format: ImageFormat = Field("png", description="Output image format.")


class Variation(BaseModel):
    """One variation of the source."""

    b64_json: str = Field(description="The image file, base64-encoded.")
    class_label: int | None = Field(description="Target class index; null for unconditional.")
    class_name: str | None
    seed: int = Field(description="Seed of this image (reproduces it with n=1).")
    regenerated: list[int] = Field(description="The token positions that were hidden and re-generated.")
    tokens: list[int] | None = Field(None, description="Token ids, when `return_tokens` was set.")


class VariationsResponse(BaseModel):
    """The variations, label-major, and the source's tokens."""

    created: int = Field(description="Unix time of the answer.")
    model: str
    format: ImageFormat
    source_tokens: list[int] = Field(description="The source's token ids (the image's, when an image was sent).")
    images: list[Variation]


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    models: list[str] = []


class ErrorDetail(BaseModel):
    """What went wrong."""

    type: str = Field(description="Stable error type, e.g. invalid_image, payload_too_large, overloaded.")
    message: str
    param: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    """The one error shape, for every status."""

    error: ErrorDetail
