"""The build step: export the graphs, verify them against PyTorch, and only then write the repository."""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from titok_core.manifest import ServingLimits, write_manifest
from titok_core.sampler import SamplingSettings
from training.data import content_size
from training.models import TiTokConfig, check_pair

from .manifest import build_manifest
from .onnx_graphs import export_family, family_signatures_of
from .sources import class_names, source_record
from .triton_repo import TritonSettings, write_models
from .verify import BATCH_SIZES, verify_family

_FAMILY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BuildResult:
    """The verification report (None when skipped) and the manifest written (None when verification failed)."""

    report: dict | None
    manifest: Path | None

    @property
    def ok(self) -> bool:
        return self.manifest is not None


def build_family(
    tokenizer: nn.Module,
    generator: nn.Module,
    out: str | Path,
    family: str,
    settings: TritonSettings | None = None,
    names: str | list[str] | None = None,
    sources: dict[str, dict] | None = None,
    verify: bool = True,
    batch_sizes=BATCH_SIZES,
    decoder_batch_sizes=None,
    sampling: SamplingSettings | None = None,
    limits: ServingLimits | None = None,
) -> BuildResult:
    """Export, verify (unless ``verify`` is False) and write ``out/<family>_*`` and ``out/<family>.manifest.json``.

    Class names: ``names``, else those recorded in the generator source's metadata, else ``class_<i>``.
    ``sampling`` (default: the generator config's) and ``limits`` (default: the gateway's) go into the manifest.
    """
    if not _FAMILY_NAME.match(family):
        raise ValueError(f"family name {family!r} must be letters, digits, '_', '-' or '.', starting alphanumeric")
    if not isinstance(tokenizer.config, TiTokConfig):  # the exported graphs are TiTok's
        raise ValueError(f"the tokenizer is a {type(tokenizer.config).__name__}, not a TiTok tokenizer")
    check_pair(tokenizer.config, generator.config)
    settings = settings or TritonSettings()
    sources = sources or {"tokenizer": source_record(tokenizer), "generator": source_record(generator)}
    recorded = sources["generator"]["metadata"].get("class_names")
    names = class_names(generator.config.num_classes, names, recorded)
    tokenizer.eval()
    generator.eval()
    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_family(tokenizer, generator, tmp)
        report = None
        if verify:
            report = verify_family(tokenizer, generator, graphs, batch_sizes, decoder_batch_sizes)
            if not report["ok"]:
                return BuildResult(report, None)
        signatures = family_signatures_of(tokenizer)
        write_models(out, family, graphs, signatures, settings)
    # the tokenizer's training data decides how the gateway lays out other-sized uploads (titok_core.images)
    content = content_size((sources["tokenizer"]["metadata"].get("train_config") or {}).get("data"))
    args = (tokenizer.config, generator.config, signatures, settings, names, sources, report, sampling, limits, content)
    manifest = build_manifest(out, family, *args)
    return BuildResult(report, write_manifest(out, manifest))
