"""One served model family: what its manifest says, its batchers and scheduler, and the checks on its inputs."""

import asyncio
import difflib
import logging
from dataclasses import dataclass, replace

import numpy as np

from titok_core.manifest import Manifest
from titok_core.sampler import Generation, SamplingSettings, step_inputs

from .backends import Backend
from .batcher import MicroBatcher, RunFn, Seats
from .errors import InvalidRequest, ServiceError, short
from .limits import FamilyLimits
from .metrics import Metrics
from .scheduler import GenerationScheduler
from .settings import Settings

log = logging.getLogger("titok.engine")


@dataclass(frozen=True)
class ModelInfo:
    """The facts of a family that the gateway needs, from its manifest."""

    family: str
    version: int
    image_size: int
    content_size: int | None  # the area the training images' content filled (titok_core.images.preprocess)
    num_tokens: int
    codebook_size: int
    num_classes: int
    class_names: tuple[str, ...]
    max_batch_size: int
    sampling: SamplingSettings  # the family's defaults
    limits: FamilyLimits  # batch, queue, request sizes and deadlines, for this family

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> "ModelInfo":
        return cls(
            family=manifest.family,
            version=manifest.version,
            image_size=manifest.image_size,
            content_size=manifest.content_size,
            num_tokens=manifest.num_tokens,
            codebook_size=manifest.codebook_size,
            num_classes=manifest.num_classes,
            class_names=manifest.class_names,
            max_batch_size=manifest.max_batch_size,
            sampling=manifest.sampling,
            limits=FamilyLimits.of(manifest, settings),
        )


class ServedModel:
    """A family behind its micro-batchers (encoder, decoder) and its step-level generation scheduler."""

    def __init__(self, info: ModelInfo, backend: Backend, settings: Settings, metrics: Metrics):
        self.info, self.backend = info, backend
        batch, queue, wait = info.limits.max_batch_size, info.limits.max_queue, settings.max_wait_ms / 1000

        def batcher(graph: str, run: RunFn) -> MicroBatcher:
            return MicroBatcher(
                info.family,
                graph,
                run,
                max_batch_size=batch,
                max_wait_s=wait,
                max_queue=queue,
                metrics=metrics,
                backend=backend.name,
            )

        self.encoder, self.decoder = batcher("encoder", backend.encode), batcher("decoder", backend.decode)
        self.scheduler = GenerationScheduler(
            info.family,
            backend.step,
            max_batch_size=batch,
            max_queue=queue,
            metrics=metrics,
            backend=backend.name,
            regroup_wait_s=wait,
        )
        self._lower_names = {name.lower(): i for i, name in enumerate(info.class_names)}
        self.warm = False
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the workers and warm every graph up. A remote backend is warmed up in the background, retried until
        it answers: Triton may come up after the gateway (compose, Kubernetes); not ready until then."""
        for worker in (self.encoder, self.decoder, self.scheduler):
            worker.start()
        if self.backend.remote:
            self._warming = asyncio.create_task(self._warm_up_until_done(), name=f"warm-up-{self.info.family}")
        else:
            await self._warm_up()

    async def _warm_up_until_done(self, every_s: float = 1.0) -> None:
        last = None
        while True:
            try:
                return await self._warm_up()
            except ServiceError as e:
                if str(e) != last:  # once per distinct error, not once a second
                    log.warning("%s: the backend is not usable yet (%s); retrying", self.info.family, e)
                    last = str(e)
            await asyncio.sleep(every_s)

    async def _warm_up(self) -> None:
        """Run every graph once, checking that a row's output does not depend on its batch."""
        info, rng = self.info, np.random.default_rng(0)
        await self.backend.encode(rng.integers(0, 256, (2, info.image_size, info.image_size, 3), dtype=np.uint8))
        # seeded generation promises the same bytes whatever the batch-mates: that needs batch-invariant graphs
        tokens = rng.integers(0, info.codebook_size + 1, (8, info.num_tokens), dtype=np.int64)
        classes = rng.integers(0, info.num_classes + 1, 8, dtype=np.int64)
        logits = await self.backend.logits(tokens, classes)
        images = await self.backend.decode(np.minimum(tokens, info.codebook_size - 1))
        alone_logits = await self.backend.logits(tokens[3:4], classes[3:4])
        alone_images = await self.backend.decode(np.minimum(tokens[3:4], info.codebook_size - 1))
        # the step graph: guided and unguided rows (every class, the null one too) at their first step
        dims = dict(seq_len=info.num_tokens, codebook_size=info.codebook_size, num_classes=info.num_classes)
        gens = [Generation.start(i % info.num_classes, i, info.sampling, **dims) for i in range(8)]
        gens[5].class_id = info.num_classes
        step_in = step_inputs(gens)
        stepped = await self.backend.step(step_in)
        alone_step = await self.backend.step(tuple(x[3:4] for x in step_in))
        self.batch_invariant = (
            np.array_equal(logits[3], alone_logits[0])
            and np.array_equal(images[3], alone_images[0])
            and np.array_equal(stepped[3], alone_step[0])
        )
        if self.batch_invariant:
            log.info("%s: outputs do not depend on the batch (seeded results are reproducible)", info.family)
        else:
            log.warning("%s: outputs differ with the batch size; seeded results may vary with load", info.family)
        self.warm = True

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        for worker in (self.encoder, self.decoder, self.scheduler):
            await worker.stop()
        await self.backend.close()

    async def ready(self) -> bool:
        workers = (self.encoder, self.decoder, self.scheduler)
        return self.warm and all(w.alive for w in workers) and await self.backend.ready()

    # -- inputs ----------------------------------------------------------------------------------------

    def check_tokens(self, sequences: list[list[int]], param: str = "tokens") -> np.ndarray:
        """int64 (B, N) ids, or a 400 naming the first sequence of the wrong length or with an id out of range."""
        n, k = self.info.num_tokens, self.info.codebook_size
        for i, seq in enumerate(sequences):
            if len(seq) != n:
                raise InvalidRequest(f"a token sequence must have {n} ids, not {len(seq)}", f"{param}[{i}]")
            for j, t in enumerate(seq):
                if not 0 <= t < k:
                    raise InvalidRequest(f"token ids must lie in [0, {k}), not {t}", f"{param}[{i}][{j}]")
        return np.asarray(sequences, dtype=np.int64).reshape(len(sequences), n)

    def class_id(self, label: int | str, param: str) -> int:
        """A class index from an index or a (case-insensitive) class name."""
        if isinstance(label, str):
            # no class name is long: a long label is unknown without being copied (lower() of 16 MB stalls)
            index = self._lower_names.get(label.strip().lower()) if len(label) <= 256 else None
            if index is None:
                raise InvalidRequest(f"unknown class {short(label)!r}; {self._known_classes(label)}", param)
            return index
        if isinstance(label, bool) or not 0 <= label < self.info.num_classes:
            raise InvalidRequest(f"class labels must lie in [0, {self.info.num_classes}), not {label!r}", param)
        return int(label)

    def _known_classes(self, label: str) -> str:
        """All class names when they are few, else the closest few (1000 names make no error message)."""
        names = self.info.class_names
        if len(names) <= 20:
            return "classes: " + ", ".join(names)
        close = difflib.get_close_matches(label.strip().lower(), list(self._lower_names), n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(names[self._lower_names[c]] for c in close)}? " if close else ""
        return f"{hint}{len(names)} classes, listed by GET /v1/models; or give the class index"

    def sampling(self, **overrides) -> SamplingSettings:
        """The manifest's sampling defaults with the request's non-None overrides; ``SamplingSettings`` is the one
        owner of what a valid setting is (the request schema refuses most bad values before, as a 422)."""
        try:
            return replace(self.info.sampling, **{k: v for k, v in overrides.items() if v is not None})
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    # -- work ------------------------------------------------------------------------------------------

    # request_id: the caller's X-Request-ID, handed on to the backend with the batch that serves it
    async def tokenize(self, images: np.ndarray, request_id: str = "", seats: Seats | None = None) -> np.ndarray:
        """uint8 (B, H, W, 3) -> int64 (B, N) (in ``seats`` of ``encoder.reserve`` when given)."""
        return await self.encoder.submit(images, request_id=request_id, seats=seats)

    async def detokenize(self, tokens: np.ndarray, request_id: str = "") -> np.ndarray:
        """int64 (B, N) -> uint8 (B, H, W, 3)."""
        return await self.decoder.submit(tokens, request_id=request_id)

    async def generate(self, class_ids: list[int], seeds: list[int], settings: SamplingSettings, request_id: str = ""):
        """Tokens (B, N) and images (B, H, W, 3): one generation per (class, seed), decoded in shared batches."""
        info = self.info
        dims = dict(seq_len=info.num_tokens, codebook_size=info.codebook_size, num_classes=info.num_classes)
        gens = [Generation.start(c, s, settings, **dims) for c, s in zip(class_ids, seeds, strict=True)]
        return await self._sample_and_decode(gens, request_id)

    async def _sample_and_decode(self, gens: list[Generation], request_id: str):
        # the decoder rows are held from admission: a full decoder refuses (429) before sampling, not after it
        with self.decoder.reserve(len(gens)) as seats:
            tokens = await self.scheduler.generate(gens, request_id=request_id)
            return tokens, await self.decoder.submit(tokens, request_id=request_id, seats=seats)

    async def vary(
        self,
        source: np.ndarray,
        hidden: list[np.ndarray],
        class_ids: list[int],
        seeds: list[int],
        settings: SamplingSettings,
        request_id: str = "",
    ):
        """Tokens (B, N) and images (B, H, W, 3) of variations of ``source`` (N,): item i re-generates the positions
        ``hidden[i]`` for ``class_ids[i]`` (num_classes: unconditional) with ``seeds[i]``, scheduled and decoded
        alongside every other generation."""
        info = self.info
        dims = dict(codebook_size=info.codebook_size, num_classes=info.num_classes)
        gens = [
            Generation.resume(source, h, c, s, settings, **dims)
            for h, c, s in zip(hidden, class_ids, seeds, strict=True)
        ]
        return await self._sample_and_decode(gens, request_id)
