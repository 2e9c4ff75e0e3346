"""The released TiTok models as served families: ``python -m export build --released titok-l-32 --weights DIR``.

Everything the release implies is filled in here, once: the file names, 256x256 images, the ImageNet-1k class
names (``export/data/imagenet_classes.txt``, by class index), the paper's sampling settings per model with softmax
annealing on (as the official evaluation sets it), and batch sizes, queues and deadlines sized for a 4096-code,
256x256 model on a CPU (the gateway reads them from the manifest, ``service/limits.py``).
"""

from dataclasses import dataclass, replace
from pathlib import Path

from titok_core.manifest import ServingLimits
from titok_core.sampler import SamplingSettings

CLASS_NAMES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"
HUB_REPO = "fun-research/TiTok"  # where the official demo downloads the released files from


# A CPU decodes TiTok-L-32 at ~0.3 images/s: a batch of 8 takes ~30 s, a full queue minutes. Deadlines leave room
# for one full batch behind another; generate adds the sampling steps before the decoder (docs/benchmarks.md).
MAX_BATCH_SIZE = 8
LIMITS = ServingLimits(
    max_batch_size=MAX_BATCH_SIZE,
    max_queue=32,
    max_n=16,
    max_images=16,
    max_image_pixels=4096 * 4096,
    deadlines_s={"tokenize": 120.0, "detokenize": 300.0, "generate": 330.0},
)

# S-128 samples in 64 steps of a 1024-wide U-ViT: ~95 s an image on this CPU (docs/benchmarks.md), so 16 images
# could never finish in time; two images and a longer generate deadline keep every accepted request feasible
SLOW_GENERATION_LIMITS = replace(LIMITS, max_n=2, deadlines_s={**LIMITS.deadlines_s, "generate": 600.0})


@dataclass(frozen=True)
class Release:
    """One released model: its files and the settings behind its published numbers."""

    tokenizer_file: str
    generator_file: str
    sampling: SamplingSettings
    limits: ServingLimits = LIMITS


RELEASES = {
    "titok-l-32": Release(
        "tokenizer_titok_l32.bin",
        "generator_titok_l32.bin",
        SamplingSettings(8, 4.5, "linear", 9.5, softmax_annealing=True),
    ),
    "titok-b-64": Release(
        "tokenizer_titok_b64.bin",
        "generator_titok_b64.bin",
        SamplingSettings(8, 3.0, "linear", 11.0, softmax_annealing=True),
    ),
    "titok-s-128": Release(
        "tokenizer_titok_s128.bin",
        "generator_titok_s128.bin",
        SamplingSettings(64, 6.9, "power-cosine", 2.8, softmax_annealing=True),
        SLOW_GENERATION_LIMITS,
    ),
}


def imagenet_class_names() -> list[str]:
    """The 1000 class names, by index, from the shipped data file (index<TAB>name; # comments)."""
    names: dict[int, str] = {}
    for line in CLASS_NAMES_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            index, name = line.split("\t")
            names[int(index)] = name.strip()
    if sorted(names) != list(range(1000)):
        raise ValueError(f"{CLASS_NAMES_FILE} must name the classes 0..999 once each")
    return [names[i] for i in range(1000)]


def released_files(model: str, weights: str | Path, fetch: bool = False) -> tuple[Path, Path]:
    """The tokenizer and generator files of a released model in ``weights``; downloaded there first when
    ``fetch`` (needs ``huggingface_hub`` and the network)."""
    release = RELEASES[model]
    folder = Path(weights)
    files = (folder / release.tokenizer_file, folder / release.generator_file)
    if fetch:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise SystemExit("--fetch needs huggingface_hub: pip install huggingface_hub") from None
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            if not path.is_file():
                try:
                    hf_hub_download(HUB_REPO, path.name, local_dir=folder)
                except Exception as e:  # offline, proxy, missing file: one line, not a traceback
                    message = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise SystemExit(f"cannot fetch {path.name} from the hub ({HUB_REPO}): {message}") from None
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {folder}: download them (or add --fetch)")
    return files


def build_released(
    model: str,
    weights: str | Path,
    out: str | Path,
    family: str | None = None,
    fetch: bool = False,
    settings=None,
    verify: bool = True,
    batch_sizes=(1, 3),
    tokenizer_preset=None,
    generator_preset=None,
):
    """Export a released model's files as the family ``family`` (default: the model's name) into ``out``.

    ``*_preset`` build the modules from other configurations (tests: reduced copies with the released key layout).
    """
    from training.checkpoint import import_released

    from .build import build_family
    from .sources import source_record
    from .triton_repo import TritonSettings

    release = RELEASES[model]
    tok_file, gen_file = released_files(model, weights, fetch)
    tokenizer = import_released(tok_file, tokenizer_preset)
    generator = import_released(gen_file, generator_preset)
    deadline_us = int(max(release.limits.deadlines_s.values()) * 1e6)
    settings = settings or TritonSettings(
        max_batch_size=MAX_BATCH_SIZE, preferred_batch_sizes=(MAX_BATCH_SIZE,), queue_timeout_us=deadline_us
    )
    settings = replace(settings, queue_timeout_us=max(settings.queue_timeout_us, deadline_us))
    sources = {
        "tokenizer": source_record(tokenizer, tok_file.resolve(), "released", {"release": model}),
        "generator": source_record(generator, gen_file.resolve(), "released", {"release": model}),
    }
    return build_family(
        tokenizer,
        generator,
        out,
        family or model,
        settings=settings,
        names=imagenet_class_names() if generator.config.num_classes == 1000 else None,
        sources=sources,
        verify=verify,
        batch_sizes=batch_sizes,
        sampling=release.sampling,
        limits=release.limits,
    )
