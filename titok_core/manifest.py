"""The manifest: the contract between the exporter, which writes it, and the gateway, which reads it.

A family's manifest says everything the gateway needs about its graphs, in one JSON file at
``<repository>/<family>.manifest.json``. Triton takes only the repository's sub-directories as models
(``GetDirectorySubdirs`` in triton-inference-server/core drops plain files), so a file beside them is ignored.

Tensor shapes are batch-first with -1 for the dynamic batch (Triton's convention); ``dims`` drops it, as a
``config.pbtxt`` with ``max_batch_size > 0`` expects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .sampler import SAMPLER_VERSION, SamplingSettings

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
GRAPHS = ("encoder", "decoder", "generator", "step")  # step: one whole sampling step (sampler version 2)
SAMPLERS = (SAMPLER_VERSION,)  # the sampler versions this code serves: a seed's tokens differ between versions


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a graph; ``shape[0] == -1`` is the batch."""

    name: str
    dtype: str  # numpy dtype name: "uint8", "int64", "float32"
    shape: tuple[int, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape without the batch dimension."""
        return self.shape[1:]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of one graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class GraphEntry:
    """One graph of a family: its Triton model name, its file (relative to the repository) and tensors."""

    model_name: str
    path: str  # POSIX, relative to the repository: "<model_name>/<version>/model.onnx"
    sha256: str
    signature: Signature

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "path": self.path, "sha256": self.sha256, **self.signature.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> GraphEntry:
        return cls(str(data["model_name"]), str(data["path"]), str(data["sha256"]), Signature.from_dict(data))


ROUTES = ("tokenize", "detokenize", "generate")  # the routes with a deadline of their own (variations: generate's)


@dataclass(frozen=True)
class ServingLimits:
    """What a family asks of the gateway, sized by the exporter for the model's cost (a 256x256, 4096-code model
    is not served with the limits of a 32x32 one). ``None`` leaves the gateway's default; an explicitly set
    ``TITOK_*`` variable overrides both (``service/limits.py``)."""

    max_batch_size: int | None = None  # rows per model call (at most the graphs' max_batch_size)
    max_queue: int | None = None  # rows (or generations) waiting per graph before 429
    max_n: int | None = None  # images per generate or variations request
    max_images: int | None = None  # images or token sequences per tokenize / detokenize request
    max_image_pixels: int | None = None  # pixels per uploaded image, checked from its header
    deadlines_s: dict[str, float] = field(default_factory=dict)  # per route in ROUTES, from the request's arrival

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_n", "max_images", "max_image_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"serving.{name} must be an integer >= 1 or null, not {value!r}")
        for route, seconds in self.deadlines_s.items():
            if route not in ROUTES:
                raise ValueError(f"serving.deadlines_s names {route!r}, not one of {', '.join(ROUTES)}")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
                raise ValueError(f"serving.deadlines_s.{route} must be a number > 0, not {seconds!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ServingLimits:
        known = cls.__dataclass_fields__
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"serving has unknown fields: {', '.join(unknown)}")
        return cls(**{**data, "deadlines_s": dict(data.get("deadlines_s") or {})})


@dataclass(frozen=True)
class Manifest:
    """A family as exported: sizes, classes, the graphs, sampling defaults, and the record of its making."""

    family: str
    version: int
    image_size: int
    num_tokens: int
    codebook_size: int
    num_classes: int
    class_names: tuple[str, ...]
    max_batch_size: int
    graphs: dict[str, GraphEntry]
    sampling: SamplingSettings
    sources: dict = field(default_factory=dict)  # what the graphs were exported from (names, checksums, configs)
    export: dict = field(default_factory=dict)  # when and with which tools
    verification: dict | None = None  # the exporter's parity report against PyTorch
    serving: ServingLimits = field(default_factory=ServingLimits)  # limits sized for this family
    sampler: int = SAMPLER_VERSION  # the sampler the step graph implements (titok_core.sampler)
    # the side of the square the training images' content filled, when smaller than image_size (Fashion-MNIST: 28 in
    # 32): other-sized inputs are fitted to it and centred on black (titok_core.images.preprocess); None: the frame
    content_size: int | None = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(_sampler_problem(self.sampler))
        if set(self.graphs) != set(GRAPHS):
            raise ValueError(f"a manifest names the graphs {', '.join(GRAPHS)}, not {', '.join(self.graphs)}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        for name in ("version", "image_size", "num_tokens", "codebook_size", "num_classes", "max_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        c = self.content_size
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= self.image_size):
            raise ValueError(f"content_size must be null or an integer from 1 to image_size, not {c!r}")

    # the vocabulary's two extra ids, by the sampler's convention
    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    def to_dict(self) -> dict:
        return {
            "manifest_format": MANIFEST_FORMAT,
            "family": self.family,
            "version": self.version,
            "image_size": self.image_size,
            "content_size": self.content_size,
            "num_tokens": self.num_tokens,
            "codebook_size": self.codebook_size,
            "mask_id": self.mask_id,
            "num_classes": self.num_classes,
            "null_class_id": self.null_class_id,
            "class_names": list(self.class_names),
            "max_batch_size": self.max_batch_size,
            "sampler": self.sampler,
            "graphs": {g: self.graphs[g].to_dict() for g in GRAPHS},
            "sampling": asdict(self.sampling),
            "serving": self.serving.to_dict(),
            "sources": self.sources,
            "export": self.export,
            "verification": self.verification,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """The manifest of a JSON object; ValueError (with the reason) for one this code cannot serve."""
        if data.get("manifest_format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest_format {data.get('manifest_format')!r} is not {MANIFEST_FORMAT}")
        sampler = data.get("sampler", 1)  # manifests written before the field are sampler 1's
        if sampler not in SAMPLERS:  # before the graphs: an older manifest also lacks the step graph
            raise ValueError(_sampler_problem(sampler))
        try:
            if data["mask_id"] != data["codebook_size"] or data["null_class_id"] != data["num_classes"]:
                raise ValueError("the mask id and null class must equal the codebook size and class count")
            known = SamplingSettings.__dataclass_fields__
            return cls(
                family=str(data["family"]),
                version=data["version"],
                image_size=data["image_size"],
                content_size=data.get("content_size"),  # older manifests: the image fills the frame
                num_tokens=data["num_tokens"],
                codebook_size=data["codebook_size"],
                num_classes=data["num_classes"],
                class_names=tuple(str(n) for n in data["class_names"]),
                max_batch_size=data["max_batch_size"],
                graphs={g: GraphEntry.from_dict(e) for g, e in data["graphs"].items()},
                # a manifest with impossible sampling defaults is refused here
                sampling=SamplingSettings(**{k: v for k, v in data["sampling"].items() if k in known}),
                sources=data.get("sources") or {},
                export=data.get("export") or {},
                verification=data.get("verification"),
                serving=ServingLimits.from_dict(data.get("serving") or {}),  # older manifests have none
                sampler=sampler,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"missing or malformed field: {e}") from None


def _sampler_problem(version) -> str:
    known = ", ".join(map(str, SAMPLERS))
    if version == 1:
        return (
            f"sampler 1 (a manifest written before the sampler version was recorded) is retired; this gateway "
            f"serves sampler {known}: re-export the family with `python -m export build`"
        )
    return f"sampler {version!r} is not one this gateway knows (it serves sampler {known}): update the gateway"


def manifest_path(repo: str | Path, family: str) -> Path:
    return Path(repo) / f"{family}{MANIFEST_SUFFIX}"


def manifest_paths(repo: str | Path) -> list[Path]:
    """The manifests of every family in a repository, sorted by family name."""
    repo = Path(repo)
    return sorted(repo.glob(f"*{MANIFEST_SUFFIX}")) if repo.is_dir() else []


def family_of(path: str | Path) -> str:
    """The family a manifest file is named after."""
    return Path(path).name.removesuffix(MANIFEST_SUFFIX)


def read_manifest(repo: str | Path, family: str) -> Manifest:
    path = manifest_path(repo, family)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest for family {family!r}: {path} is missing")
    return Manifest.from_dict(json.loads(path.read_text()))


def write_manifest(repo: str | Path, manifest: Manifest) -> Path:
    path = manifest_path(repo, manifest.family)
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_problems(repo: str | Path, manifest: Manifest) -> list[str]:
    """Model files that are missing or whose sha256 differs from the manifest's; empty when all match."""
    problems = []
    for graph, entry in manifest.graphs.items():
        path = Path(repo) / entry.path
        if not path.is_file():
            problems.append(f"{graph}: {path} is missing")
        elif sha256(path) != entry.sha256:
            problems.append(f"{graph}: {path} does not match the manifest's sha256")
    return problems
