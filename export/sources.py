"""Where a family's models come from (checkpoint folders or released ``.bin`` files), and what they must agree on."""

from pathlib import Path

from torch import nn

from training.checkpoint import import_released, load_checkpoint, read_checkpoint_config
from training.models import config_to_dict


def load_source(path: str | Path) -> tuple[nn.Module, dict]:
    """A model from a checkpoint folder or a released ``.bin`` (preset from its name), and where it came from."""
    path = Path(path)
    if path.is_dir():
        model = load_checkpoint(path)
        _, metadata = read_checkpoint_config(path)
        kind = "checkpoint"
    else:
        model = import_released(path)
        metadata, kind = {}, "released"
    return model.eval(), source_record(model, path=portable(path), kind=kind, metadata=metadata)


def portable(path: Path) -> str:
    """A source's path as the manifest records it: relative to the working directory (the repository's root when run
    as documented), else its name alone; never the absolute path of the machine that exported it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def source_record(model: nn.Module, path: str | Path | None = None, kind: str = "in-memory", metadata=None) -> dict:
    """The manifest's account of one source model: path, format, config and checkpoint metadata."""
    return {
        "path": str(path) if path is not None else None,
        "format": kind,
        "config": config_to_dict(model.config),
        "metadata": metadata or {},
    }


def class_names(num_classes: int, given: str | list[str] | None = None, recorded: list[str] | None = None) -> list[str]:
    """Names given (a comma-separated list or a list), else those the generator's checkpoint recorded from its
    training data, else ``class_<i>``: never guessed from the class count."""
    for source, names in (("given", given), ("recorded in the generator checkpoint", recorded)):
        if names:
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            if len(names) != num_classes:
                raise ValueError(f"{len(names)} class names {source} for a generator with {num_classes} classes")
            return names
    return [f"class_{i}" for i in range(num_classes)]
