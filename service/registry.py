"""The model registry: every family found in the model repository (by its manifest), with its backend."""

import json
import logging
from pathlib import Path

from titok_core.manifest import GRAPHS, MANIFEST_SUFFIX, Manifest, manifest_paths

from .backends import BackendFactory, create_backend
from .engine import ModelInfo, ServedModel
from .errors import ConfigurationError, ModelNotFound, short
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("titok.registry")


def _check_files(repo: Path, manifest: Manifest) -> None:
    for graph in GRAPHS:
        if not (repo / manifest.graphs[graph].path).is_file():
            raise ConfigurationError(f"{manifest.family}: the {graph} model file is missing from {repo}")


class Registry:
    """The served families by name; the first (sorted) is the default when a request names none."""

    def __init__(self, models: dict[str, ServedModel]):
        self.models = models

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics, backend_factory: BackendFactory = create_backend) -> "Registry":
        """Every family of the repository, each on the backend ``backend_factory`` makes for it."""
        repo = Path(settings.model_repository)
        paths = manifest_paths(repo)
        if not paths:
            raise ConfigurationError(
                f"no model family in {repo.resolve()}: expected <family>{MANIFEST_SUFFIX} "
                "(write one with `python -m export build`, or set TITOK_MODEL_REPOSITORY)"
            )
        models = {}
        for path in paths:
            try:
                manifest = Manifest.from_dict(json.loads(path.read_text()))
            except ValueError as e:  # json's decode errors too
                raise ConfigurationError(f"{path}: not a usable manifest: {e}") from e
            if settings.backend == "embedded":  # Triton holds its own copy of the model files
                _check_files(repo, manifest)
            info = ModelInfo.from_manifest(manifest, settings)
            models[info.family] = ServedModel(info, backend_factory(settings, repo, manifest), settings, metrics)
            log.info("loaded %s (version %d) from %s", info.family, info.version, repo)
        return cls(models)

    def get(self, name: str | None) -> ServedModel:
        """The named family, or the default one; 404 for a name that is not served."""
        if name is None:
            return next(iter(self.models.values()))
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {short(name)!r} is not served; served: {', '.join(self.models)}", "model")
        return model

    async def start(self) -> None:
        for model in self.models.values():
            await model.start()

    async def close(self) -> None:
        for model in self.models.values():
            await model.close()

    async def ready(self) -> bool:
        for model in self.models.values():
            if not await model.ready():
                return False
        return True
