"""A family's manifest as the exporter writes it (the contract itself is ``titok_core.manifest``)."""

import datetime
from pathlib import Path

from titok_core.manifest import GRAPHS, GraphEntry, Manifest, ServingLimits, Signature, sha256
from titok_core.sampler import SamplingSettings

from .triton_repo import MODEL_FILE, TritonSettings, model_name


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
    sampling: SamplingSettings | None = None,
    limits: ServingLimits | None = None,
    content_size: int | None = None,
) -> Manifest:
    """The manifest of a family whose model files are already in ``repo``."""
    import onnx  # here, not at the top: reading a manifest (twin, tensorrt) should not load torch
    import onnxruntime
    import torch

    from .onnx_graphs import OPSET

    graphs = {}
    for graph in GRAPHS:
        relative = Path(model_name(family, graph)) / str(settings.version) / MODEL_FILE
        graphs[graph] = GraphEntry(
            model_name(family, graph), relative.as_posix(), sha256(Path(repo) / relative), signatures[graph]
        )
    gen = generator_config
    return Manifest(
        family=family,
        version=settings.version,
        image_size=tokenizer_config.image_size,
        content_size=content_size,
        num_tokens=tokenizer_config.num_tokens,
        codebook_size=tokenizer_config.codebook_size,
        num_classes=gen.num_classes,
        class_names=tuple(class_names),
        max_batch_size=settings.max_batch_size,
        graphs=graphs,
        sampling=sampling
        or SamplingSettings(
            num_steps=gen.num_steps,
            guidance_scale=gen.guidance_scale,
            guidance_schedule=gen.guidance_schedule,
            temperature=gen.temperature,
        ),
        serving=limits or ServingLimits(),
        sources=sources,
        export={
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
        verification=verification,
    )
