"""A family's manifest: everything the gateway needs to know about its three models, in one JSON file.

It lives at ``<repository>/<family>.manifest.json``. Triton takes only the repository's sub-directories as models
(``GetDirectorySubdirs`` in triton-inference-server/core drops plain files), so a file beside them is ignored.
"""

import datetime
import hashlib
import json
from pathlib import Path

from .signatures import GRAPHS, Signature
from .triton_repo import MODEL_FILE, TritonSettings, model_name

MANIFEST_FORMAT = 1


def manifest_path(repo: str | Path, family: str) -> Path:
    return Path(repo) / f"{family}.manifest.json"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    repo: str | Path,
    family: str,
    tokenizer_config,
    generator_config,
    signatures: dict[str, Signature],
    settings: TritonSettings,
    class_names: list[str],
    sources: dict[str, dict],
    verification: dict | None,
) -> dict:
    """The manifest of a family whose model files are already in ``repo``."""
    import onnx  # here, not at the top: reading a manifest (twin, tensorrt) should not load torch
    import onnxruntime
    import torch

    from .onnx_graphs import OPSET

    graphs = {}
    for graph in GRAPHS:
        relative = Path(model_name(family, graph)) / str(settings.version) / MODEL_FILE
        graphs[graph] = {
            "model_name": model_name(family, graph),
            "path": relative.as_posix(),
            "sha256": sha256(Path(repo) / relative),
            **signatures[graph].to_dict(),
        }
    gen = generator_config
    return {
        "manifest_format": MANIFEST_FORMAT,
        "family": family,
        "version": settings.version,
        "image_size": tokenizer_config.image_size,
        "num_tokens": tokenizer_config.num_tokens,
        "codebook_size": tokenizer_config.codebook_size,
        "mask_id": gen.mask_id,
        "num_classes": gen.num_classes,
        "null_class_id": gen.null_class_id,
        "class_names": class_names,
        "max_batch_size": settings.max_batch_size,
        "graphs": graphs,
        "sampling": {
            "num_steps": gen.num_steps,
            "temperature": gen.temperature,
            "guidance_scale": gen.guidance_scale,
            "guidance_schedule": gen.guidance_schedule,
        },
        "sources": sources,
        "export": {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "opset": OPSET,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "device": settings.device,
            "instances": settings.instances,
            "intra_op_threads": settings.intra_op_threads,
        },
        "verification": verification,
    }


def write_manifest(repo: str | Path, manifest: dict) -> Path:
    path = manifest_path(repo, manifest["family"])
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(repo: str | Path, family: str) -> dict:
    path = manifest_path(repo, family)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest for family {family!r}: {path} is missing")
    return json.loads(path.read_text())


def checksum_problems(repo: str | Path, manifest: dict) -> list[str]:
    """Model files that are missing or whose sha256 differs from the manifest's; empty when all match."""
    problems = []
    for graph, entry in manifest["graphs"].items():
        path = Path(repo) / entry["path"]
        if not path.is_file():
            problems.append(f"{graph}: {path} is missing")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{graph}: {path} does not match the manifest's sha256")
    return problems
