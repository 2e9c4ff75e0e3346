"""Checkpoints: our folder format (``model.safetensors`` + ``config.json``) and the released TiTok files.

Our format never unpickles anything. The released ``.bin`` files are pickles of plain tensors, read with
``torch.load(weights_only=True)`` and loaded strictly: a wrong file names its missing and unexpected keys.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .models import ModelConfig, build_model, config_from_dict, config_to_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# released file name stem -> our preset (e.g. tokenizer_titok_l32.bin -> titok-l-32)
_RELEASED_NAME = re.compile(r"(tokenizer|generator)_titok_([lbs])(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into, or a folder that is not one."""


def save_checkpoint(model: nn.Module, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` as ``folder/model.safetensors`` + ``folder/config.json`` (with optional metadata)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    doc = {"model": config_to_dict(model.config), "metadata": metadata or {}}
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def read_checkpoint_config(folder: str | Path) -> tuple:
    """(model config, metadata dict) of a checkpoint folder, without reading the weights."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: {CONFIG_FILE} is missing")
    doc = json.loads(path.read_text())
    return config_from_dict(doc["model"]), doc.get("metadata", {})


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", kind: str | None = None) -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly; eval mode.

    ``kind`` (e.g. "fmnist-classifier") refuses a checkpoint of another kind of model with a clear error.
    """
    config, _ = read_checkpoint_config(folder)
    if kind is not None and config.kind != kind:
        raise CheckpointError(f"{folder} holds a {config.kind} model, not a {kind}")
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    model = build_model(config)
    load_state_dict_strict(model, load_file(str(weights), device=str(device)), source=str(weights))
    return model.to(device).eval()


def load_state_dict_strict(model: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists every missing, unexpected or misshapen key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or misshapen:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                lines.append(f"  {len(keys)} {title} keys: {shown}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------
# Released TiTok checkpoints
# ---------------------------------------------------------------------------------------------------


def preset_for_released_file(path: str | Path) -> str:
    """Guess our preset from a released file name: tokenizer_titok_b64.bin -> titok-b-64, etc."""
    name = Path(path).name
    if name.startswith("maskgit-vqgan"):
        return "maskgit-vqgan"
    m = _RELEASED_NAME.search(name)
    if not m:
        raise CheckpointError(f"cannot tell the model of {name!r} from its name; pass the preset explicitly")
    kind, size, tokens = m.groups()
    preset = f"titok-{size}-{tokens}"
    return preset + "-generator" if kind == "generator" else preset


def import_released(path: str | Path, preset: str | ModelConfig | None = None) -> nn.Module:
    """Load a released ``.bin`` (tokenizer, generator or MaskGIT-VQGAN) into our module, strictly; eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    preset = preset or preset_for_released_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict (found {type(state).__name__})")
    # transformers < 4.31 saved this buffer; it is always arange(L) and our BERT derives positions itself
    state = {k: v for k, v in state.items() if k != "model.embeddings.position_ids"}
    model = build_model(preset)  # a preset name or a config (e.g. a reduced copy for tests)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()
