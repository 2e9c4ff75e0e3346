"""The serving layer: protocol requests in, engine calls, protocol answers out (vLLM's ``serving_*`` shape).

It owns what lies between HTTP and the engine: the per-request limits, the seed policy, the expansion of class
labels, the orchestration of image decoding and encoding, and the counting of what was produced. The routes parse
HTTP and call it; the engine (``ServedModel``) checks model inputs, batches and runs them.
"""

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np

from titok_core.sampler import SamplingSettings, strength_mask

from . import images as imaging
from .engine import ModelInfo, ServedModel
from .errors import BackendUnavailable, InvalidRequest, PayloadTooLarge
from .metrics import Metrics
from .registry import Registry
from .schemas import (
    MAX_SEED,
    ClassInfo,
    DetokenizeRequest,
    DetokenizeResponse,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Health,
    ImageData,
    ModelCard,
    ModelList,
    SamplingDefaults,
    ServingLimitsCard,
    TokenizeResponse,
    Variation,
    VariationsRequest,
    VariationsResponse,
)
from .settings import Settings

T = TypeVar("T")
# a small image (64x64) decodes inline in well under a millisecond
_INLINE_DECODE_PIXELS = 64 * 64
# a few small images (4 of 32x32) encode as PNG or JPEG inline in about a millisecond: less than a thread hop
# costs under load
_INLINE_ENCODE_PIXELS = 64 * 64


@dataclass(frozen=True)
class Call:
    """What the serving layer needs of the HTTP request it serves: its id, and how to await engine work under a
    deadline counted from the request's arrival (``guard`` raises 504 past it, 499 when the client leaves)."""

    request_id: str
    guard: Callable[[Awaitable[Any], float], Awaitable[Any]]

    async def run(self, work: Awaitable[T], deadline_s: float) -> T:
        return await self.guard(work, deadline_s)


@dataclass(frozen=True)
class RawImage:
    """One encoded image sent as the body itself (``Accept: image/...`` for a single token sequence)."""

    data: bytes
    media_type: str


class Serving:
    """The v1 API over a registry of served models."""

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics):
        self.settings, self.registry, self.metrics = settings, registry, metrics
        # the most images any family takes in one request: the bound checked while a body is read, before its
        # family's own limit is known (a manifest may allow more than TITOK_MAX_IMAGES' default)
        self.max_images = max(model.info.limits.max_images for model in registry.models.values())
        # one large image decodes at a time, across requests: it may take its full pixel limit (and a converted
        # copy) in memory, and the peak of the process must stay bounded whatever the number of clients; always
        # the same thread, so that its freed memory is reused (another thread would grow another malloc arena)
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="titok-decode")

    def models(self) -> ModelList:
        return ModelList(data=[_card(name, model) for name, model in self.registry.models.items()])

    async def ready(self) -> Health:
        if not await self.registry.ready():
            raise BackendUnavailable("a model or its backend is not ready")
        return Health(status="ready", models=list(self.registry.models))

    def health(self) -> Health:
        """Liveness, with the families served (known from their manifests before they are loaded)."""
        return Health(status="ok", models=list(self.registry.models))

    # -- tokenize --------------------------------------------------------------------------------------

    async def tokenize(self, name: str | None, blobs: list[bytes], call: Call) -> TokenizeResponse:
        """Encoded images (PNG, JPEG or WebP bytes) -> their token ids."""
        model = self.registry.get(name)
        limits = model.info.limits
        if len(blobs) > limits.max_images:
            raise PayloadTooLarge(f"at most {limits.max_images} images per request", "images")
        deadline_s = limits.deadline_s("tokenize")
        with model.encoder.reserve(len(blobs)) as seats:  # 429 before any image is decoded

            async def work() -> np.ndarray:  # one guarded task for both stages
                images = await self._decode(blobs, model.info)
                return await model.tokenize(images, call.request_id, seats)

            tokens = await call.run(work(), deadline_s)
        self.metrics.tokens_produced.labels(model.info.family, "tokenize").inc(tokens.size)
        info = model.info
        return TokenizeResponse(
            model=info.family, tokens=tokens.tolist(), num_tokens=info.num_tokens, codebook_size=info.codebook_size
        )

    async def _decode(self, blobs: list[bytes], info: ModelInfo, names: list[str] | None = None) -> np.ndarray:
        """uint8 (B, size, size, 3), preprocessed for ``info``'s family (its size and content area). The cost is
        decided before any pixel is decoded: every header is read and checked against the per-image and per-request
        pixel limits (413). Then the images are decoded and preprocessed one at a time in a worker thread, each
        released before the next, so a request holds at most one decoded image; run under ``call.run``, a deadline
        or a disconnect stops it between images."""
        names = names or [f"images[{i}]" for i in range(len(blobs))]
        size, limit, content = info.image_size, info.limits.max_image_pixels, info.content_size
        costs = [imaging.decoded_pixels(data, limit, names[i]) for i, data in enumerate(blobs)]  # headers only
        if sum(costs) > self.settings.max_request_pixels:
            message = f"the images hold {sum(costs)} pixels, over the limit of {self.settings.max_request_pixels}"
            raise PayloadTooLarge(message + " per request", "images")
        out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
        for i, data in enumerate(blobs):
            if costs[i] <= _INLINE_DECODE_PIXELS:  # faster than the hop to a worker thread
                out[i] = imaging.load_image(data, size, limit, names[i], content)
            else:
                work = partial(imaging.load_image, data, size, limit, names[i], content)
                out[i] = await asyncio.get_running_loop().run_in_executor(self._decoder, work)
        return out

    # -- detokenize ------------------------------------------------------------------------------------

    async def detokenize(
        self, body: DetokenizeRequest, accepted: str | None, call: Call
    ) -> DetokenizeResponse | RawImage:
        """Token ids -> images; one sequence asked for as an image format (``accepted``) comes back raw."""
        model = self.registry.get(body.model)
        limits = model.info.limits
        if len(body.tokens) > limits.max_images:
            raise PayloadTooLarge(f"at most {limits.max_images} token sequences per request", "tokens")
        tokens = model.check_tokens(body.tokens)
        raw = accepted if len(body.tokens) == 1 else None
        fmt = raw or body.format
        work = model.detokenize(tokens, call.request_id)
        files = await _encode(await call.run(work, limits.deadline_s("detokenize")), fmt)
        if raw:
            return RawImage(files[0], imaging.MEDIA_TYPES[fmt])
        return DetokenizeResponse(
            model=model.info.family, format=fmt, images=[ImageData(b64_json=_b64(f)) for f in files]
        )

    # -- generate --------------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest, call: Call) -> GenerateResponse:
        """Class-conditional images, label-major: ``n`` per label, image i with seed + i."""
        model = self.registry.get(body.model)
        return await self._generate(model, self._class_ids(model, body.class_labels), body, call)

    async def generate_openai(self, body: GenerateRequest, call: Call) -> GenerateResponse:
        """The generation of the OpenAI-compatible images route (``service/openai_images.py``): its one class label
        comes from the prompt, and is named so when it is wrong."""
        model = self.registry.get(body.model)
        assert not isinstance(body.class_labels, list)
        return await self._generate(model, [model.class_id(body.class_labels, "prompt")], body, call)

    async def _generate(
        self, model: ServedModel, labels: list[int], body: GenerateRequest, call: Call
    ) -> GenerateResponse:
        class_ids, seeds, sampling = self._plan(model, labels, body)
        work = model.generate(class_ids, seeds, sampling, call.request_id)
        tokens, images = await call.run(work, model.info.limits.deadline_s("generate"))
        files = await _encode(images, body.format)
        self._count(model, "generate", tokens)
        return GenerateResponse(
            created=int(time.time()),
            model=model.info.family,
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

    def _plan(
        self, model: ServedModel, labels: list[int], body: GenerateRequest | VariationsRequest
    ) -> tuple[list[int], list[int], SamplingSettings]:
        """Per image (label-major, ``n`` per label): its class and seed (seed + i), and the sampling settings; the
        request's size and steps are checked against the limits before any work."""
        total = len(labels) * body.n
        max_n = model.info.limits.max_n
        if total > max_n:
            raise InvalidRequest(f"at most {max_n} images per request (class labels x n)", "n")
        if body.num_steps is not None and body.num_steps > self.settings.max_steps:
            raise InvalidRequest(f"at most {self.settings.max_steps} steps", "num_steps")
        sampling = model.sampling(
            num_steps=body.num_steps,
            guidance_scale=body.guidance_scale,
            guidance_schedule=body.guidance_schedule,
            temperature=body.temperature,
        )
        base = body.seed if body.seed is not None else secrets.randbelow(2**31)  # random seeds are returned
        if base + total - 1 > MAX_SEED:  # every reported seed must be one that can be sent back
            raise InvalidRequest(f"seed + {total - 1} (the last image's seed) must be at most {MAX_SEED}", "seed")
        return [c for c in labels for _ in range(body.n)], [base + i for i in range(total)], sampling

    def _count(self, model: ServedModel, route: str, tokens: np.ndarray) -> None:
        family = model.info.family
        self.metrics.images_generated.labels(family).inc(len(tokens))
        self.metrics.tokens_produced.labels(family, route).inc(tokens.size)

    # -- variations ------------------------------------------------------------------------------------

    async def variations(self, body: VariationsRequest, upload: bytes | None, call: Call) -> VariationsResponse:
        """Variations of one source (an image sent as ``body.image`` or ``upload``, or its tokens): each image
        re-generates its hidden positions (``strength``, drawn from its seed, or the explicit ``mask``) from the kept
        tokens, label-major, image i with seed + i."""
        model = self.registry.get(body.model)
        info = model.info
        image = imaging.decode_base64(body.image, "image") if body.image is not None else upload
        if (image is None) == (body.tokens is None):
            raise InvalidRequest("give the source as exactly one of `image` and `tokens`", "image")
        if (body.strength is None) == (body.mask is None):
            message = "give exactly one of `strength` (a fraction of the tokens) and `mask` (positions)"
            raise InvalidRequest(message, "strength")
        class_ids, seeds, sampling = self._plan(model, self._target_ids(model, body.class_labels), body)
        if body.mask is not None:
            for j, position in enumerate(body.mask):
                if not 0 <= position < info.num_tokens:
                    message = f"mask positions must lie in [0, {info.num_tokens}), not {position}"
                    raise InvalidRequest(message, f"mask[{j}]")
            if len(set(body.mask)) != len(body.mask):
                raise InvalidRequest("mask positions must be distinct", "mask")
            hidden = [np.asarray(sorted(body.mask), dtype=np.int64)] * len(seeds)
        elif body.strength is not None:
            hidden = [strength_mask(body.strength, s, info.num_tokens) for s in seeds]
        if image is not None:
            deadline_s = info.limits.deadline_s("variations")
            with model.encoder.reserve(1) as seats:
                pixels = await call.run(self._decode([image], info, ["image"]), deadline_s)
                source = (await call.run(model.tokenize(pixels, call.request_id, seats), deadline_s))[0]
        elif body.tokens is not None:
            source = model.check_tokens([body.tokens], "tokens")[0]
        work = model.vary(source, hidden, class_ids, seeds, sampling, call.request_id)
        tokens, images = await call.run(work, info.limits.deadline_s("variations"))
        files = await _encode(images, body.format)
        self._count(model, "variations", tokens)
        return VariationsResponse(
            created=int(time.time()),
            model=info.family,
            format=body.format,
            source_tokens=source.tolist(),
            images=[
                Variation(
                    b64_json=_b64(f),
                    class_label=None if c == info.num_classes else c,
                    class_name=None if c == info.num_classes else info.class_names[c],
                    seed=s,
                    regenerated=h.tolist(),
                    tokens=t.tolist() if body.return_tokens else None,
                )
                for f, c, s, h, t in zip(files, class_ids, seeds, hidden, tokens, strict=True)
            ],
        )

    @staticmethod
    def _target_ids(model: ServedModel, class_labels: int | str | list[int | str | None] | None) -> list[int]:
        """Like ``_class_ids``, with null (or nothing) for the null class: unconditional."""
        null = model.info.num_classes
        if class_labels is None:
            return [null]
        if not isinstance(class_labels, list):
            return [model.class_id(class_labels, "class_labels")]
        if not class_labels:
            raise InvalidRequest("give at least one class label (null: unconditional)", "class_labels")
        return [null if c is None else model.class_id(c, f"class_labels[{i}]") for i, c in enumerate(class_labels)]

    @staticmethod
    def _class_ids(model: ServedModel, class_labels: int | str | list[int | str]) -> list[int]:
        """Class indices of one label or a list of them (indices or names); the param names the one at fault."""
        if not isinstance(class_labels, list):
            return [model.class_id(class_labels, "class_labels")]
        if not class_labels:
            raise InvalidRequest("give at least one class label", "class_labels")
        return [model.class_id(label, f"class_labels[{i}]") for i, label in enumerate(class_labels)]


def _card(name: str, model: ServedModel) -> ModelCard:
    info = model.info
    return ModelCard(
        id=name,
        version=info.version,
        image_size=info.image_size,
        content_size=info.content_size,
        num_tokens=info.num_tokens,
        codebook_size=info.codebook_size,
        num_classes=info.num_classes,
        classes=[ClassInfo(id=i, name=n) for i, n in enumerate(info.class_names)],
        sampling=SamplingDefaults(**asdict(info.sampling)),
        max_batch_size=info.max_batch_size,
        limits=ServingLimitsCard(**asdict(info.limits)),
    )


async def _encode(images: np.ndarray, fmt: str) -> list[bytes]:
    """(B, H, W, 3) uint8 -> B image files; off the event loop unless they are few and small PNGs or JPEGs
    (lossless WebP takes ten times as long: always in a worker thread)."""
    if fmt != "webp" and images.shape[0] * images.shape[1] * images.shape[2] <= _INLINE_ENCODE_PIXELS:
        return [imaging.encode_image(im, fmt) for im in images]
    return await anyio.to_thread.run_sync(lambda: [imaging.encode_image(im, fmt) for im in images])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
