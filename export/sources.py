"""Where a family's models come from (checkpoint folders or released ``.bin`` files), and what they must agree on."""

from pathlib import Path

from torch import nn

from training.checkpoint import import_released, load_checkpoint, read_checkpoint_config
from training.data import FASHION_MNIST_CLASSES
from training.models import GeneratorConfig, TiTokConfig, config_to_dict


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
    return model.eval(), source_record(model, path=path.resolve(), kind=kind, metadata=metadata)


def source_record(model: nn.Module, path: str | Path | None = None, kind: str = "in-memory", metadata=None) -> dict:
    """The manifest's account of one source model: path, format, config and checkpoint metadata."""
    return {
        "path": str(path) if path is not None else None,
        "format": kind,
        "config": config_to_dict(model.config),
        "metadata": metadata or {},
    }


def check_pair(tokenizer: TiTokConfig, generator: GeneratorConfig) -> None:
    """A generator must predict exactly the tokenizer's ids: same sequence length and codebook."""
    if not isinstance(tokenizer, TiTokConfig):
        raise ValueError(f"the tokenizer is a {type(tokenizer).__name__}, not a TiTok tokenizer")
    if not isinstance(generator, GeneratorConfig):
        raise ValueError(f"the generator is a {type(generator).__name__}, not a MaskGIT generator")
    if (generator.seq_len, generator.codebook_size) != (tokenizer.num_tokens, tokenizer.codebook_size):
        raise ValueError(
            f"generator (seq_len {generator.seq_len}, codebook {generator.codebook_size}) does not fit the tokenizer "
            f"({tokenizer.num_tokens} tokens, codebook {tokenizer.codebook_size})"
        )


def class_names(num_classes: int, given: str | list[str] | None = None) -> list[str]:
    """Names from a comma-separated list, else Fashion-MNIST's for 10 classes, else ``class_<i>``."""
    if given:
        names = [n.strip() for n in given.split(",")] if isinstance(given, str) else list(given)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for a generator with {num_classes} classes")
        return names
    if num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]
