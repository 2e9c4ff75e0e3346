"""Per-family limits: a 256x256 model with 4096 codes takes seconds per image on a CPU where a 32x32 one takes
milliseconds, so batch sizes, queues, request sizes and deadlines are the family's, not one global value.

Each limit is, in order: the ``TITOK_*`` variable when it is set explicitly, else the manifest's ``serving`` value
(sized by the exporter for the model), else the setting's default.
"""

from dataclasses import dataclass

from titok_core.manifest import ROUTES, Manifest

from .settings import Settings


@dataclass(frozen=True)
class FamilyLimits:
    """The limits one family is served with."""

    max_batch_size: int  # rows per model call
    max_queue: int  # rows (or generations) waiting per graph before 429
    max_n: int  # images per generate or variations request
    max_images: int  # images or token sequences per tokenize / detokenize request
    max_image_pixels: int  # pixels per uploaded image
    deadlines_s: dict[str, float]  # per route (tokenize, detokenize, generate), counted from the request's arrival

    @classmethod
    def of(cls, manifest: Manifest, settings: Settings) -> "FamilyLimits":
        explicit, asked = settings.model_fields_set, manifest.serving

        def pick(name: str, manifest_value):
            if name in explicit or manifest_value is None:
                return getattr(settings, name)
            return manifest_value

        return cls(
            # the manifest's top-level max_batch_size is the graphs' own (Triton's config): never above it
            max_batch_size=min(pick("max_batch_size", asked.max_batch_size), manifest.max_batch_size),
            max_queue=pick("max_queue", asked.max_queue),
            max_n=pick("max_n", asked.max_n),
            max_images=pick("max_images", asked.max_images),
            max_image_pixels=pick("max_image_pixels", asked.max_image_pixels),
            deadlines_s={route: pick("request_timeout_s", asked.deadlines_s.get(route)) for route in ROUTES},
        )

    def deadline_s(self, route: str) -> float:
        """The deadline of a route; variations take generate's."""
        return self.deadlines_s["generate" if route == "variations" else route]
