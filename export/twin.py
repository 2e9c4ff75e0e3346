"""The Python-backend twin of a repository, for tests on a Triton that has only the Python backend.

Each model keeps its name, inputs, outputs, max_batch_size, dynamic batching, version policy and warm-up; only
``platform: onnxruntime_onnx`` becomes ``backend: python`` (running the SAME model.onnx through ``twin_model.py``),
instances move to the CPU and the GPU-only TensorRT accelerator is dropped. The manifests are copied as they are.
"""

import os
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from titok_core.manifest import family_of, manifest_paths, read_manifest

from .triton_repo import CONFIG_FILE, MODEL_FILE, read_config, write_config

TWIN_MODEL = Path(__file__).with_name("twin_model.py")


def twin_config(config: mc.ModelConfig, intra_op_threads: int | None = None) -> mc.ModelConfig:
    """The Python-backend version of an onnxruntime_onnx config (``intra_op_threads``: override the thread count)."""
    twin = mc.ModelConfig()
    twin.CopyFrom(config)
    twin.ClearField("platform")
    twin.backend = "python"
    twin.ClearField("optimization")
    for group in twin.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    if intra_op_threads is not None:  # a test machine with few cores: the production count may be "all cores"
        twin.parameters["intra_op_thread_count"].string_value = str(intra_op_threads)
    return twin


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (the very same file, no extra space) where the filesystem allows it, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_twin(repo: str | Path, out: str | Path, intra_op_threads: int | None = None) -> list[str]:
    """Write the twin of every family in ``repo`` (found by its manifest) into ``out``; returns the model names."""
    repo, out = Path(repo), Path(out)
    if out.resolve() == repo.resolve():
        raise ValueError("the twin must go to another folder than the repository it mirrors")
    manifests = manifest_paths(repo)
    if not manifests:
        raise FileNotFoundError(f"{repo} holds no <family>.manifest.json: not a repository written by `export build`")
    names = []
    out.mkdir(parents=True, exist_ok=True)
    for path in manifests:
        manifest = read_manifest(repo, family_of(path))
        for entry in manifest.graphs.values():
            src, dst = repo / entry.model_name, out / entry.model_name
            if dst.exists():
                shutil.rmtree(dst)
            version = dst / Path(entry.path).parent.name
            version.mkdir(parents=True)
            _link_or_copy(src / Path(entry.path).relative_to(entry.model_name), version / MODEL_FILE)
            shutil.copyfile(TWIN_MODEL, version / "model.py")
            note = "Python-backend twin written by `python -m export twin`"
            write_config(dst / CONFIG_FILE, twin_config(read_config(src / CONFIG_FILE), intra_op_threads), note)
            names.append(entry.model_name)
        shutil.copyfile(path, out / path.name)
    return names
