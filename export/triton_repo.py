"""A family's graphs as a Triton model repository: ``<family>_<graph>/config.pbtxt`` + ``.../<version>/model.onnx``.

The configs are built as ``ModelConfig`` protobufs (Triton's own schema, bundled with ``tritonclient``) and written
in text format, so a field that Triton does not know cannot slip in. Beside each ``config.pbtxt`` goes its GPU
variant, ``configs/gpu.pbtxt``: Triton reads it instead when started with ``--model-config-name=gpu`` (its custom
model configuration), so one repository serves a CPU host and a GPU host alike.
"""

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from titok_core.manifest import GRAPHS, Signature, TensorSpec

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
GPU_CONFIG_NAME = "gpu"  # tritonserver --model-config-name=gpu reads <model>/configs/gpu.pbtxt
GPU_CONFIG_FILE = f"configs/{GPU_CONFIG_NAME}.pbtxt"
TRITON_DTYPES = {"uint8": mc.TYPE_UINT8, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}


@dataclass(frozen=True)
class TritonSettings:
    """How Triton should run a family: batching, instances, device and the model version to write."""

    max_batch_size: int = 64
    instances: int = 1
    device: str = "cpu"  # "gpu" adds the TensorRT accelerator (fp16) of the onnxruntime backend
    max_queue_delay_us: int = 2000
    max_queue_size: int = 64  # requests waiting per model before Triton rejects more (UNAVAILABLE); 0: unbounded
    queue_timeout_us: int = 30_000_000  # longest wait in the queue, a request may ask for less (the gateway's deadline)
    preferred_batch_sizes: tuple[int, ...] = ()  # empty: powers of two from 4 up to max_batch_size
    version: int = 1
    intra_op_threads: int = 0  # onnxruntime threads per instance; 0: the backend's default (all cores)
    # GPU: where TensorRT keeps its engines (one folder per model); a volume, so that only the first start builds them
    engine_cache_dir: str = "/engine-cache"

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {self.device!r}")
        if self.max_batch_size < 1 or self.instances < 1 or self.version < 1:
            raise ValueError("max_batch_size, instances and version must be >= 1")
        if min(self.intra_op_threads, self.max_queue_size, self.queue_timeout_us) < 0:
            raise ValueError("intra_op_threads, max_queue_size and queue_timeout_us must be >= 0")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes {self.preferred_batch_sizes} must lie in 1..{self.max_batch_size}")

    def preferred(self) -> list[int]:
        if self.preferred_batch_sizes:
            return sorted(set(self.preferred_batch_sizes))
        sizes = [b for b in (4, 8, 16, 32, 64, 128, 256, 512, 1024) if b <= self.max_batch_size]
        return sizes or [self.max_batch_size]


def model_name(family: str, graph: str) -> str:
    """Triton's name for one graph of a family."""
    return f"{family}_{graph}"


def _tensor(spec: TensorSpec, cls):
    return cls(name=spec.name, data_type=TRITON_DTYPES[spec.dtype], dims=list(spec.dims))


def model_config(name: str, signature: Signature, settings: TritonSettings) -> mc.ModelConfig:
    """The onnxruntime_onnx config of one graph (dims exclude the batch, which Triton adds)."""
    config = mc.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=settings.max_batch_size,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        input=[_tensor(t, mc.ModelInput) for t in signature.inputs],
        output=[_tensor(t, mc.ModelOutput) for t in signature.outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=settings.preferred(), max_queue_delay_microseconds=settings.max_queue_delay_us
        ),
    )
    # a bounded queue: a burst is refused at once rather than queued without limit; a request whose deadline passed
    # while it waited is dropped, not computed (Triton takes a request's own timeout only below the default one)
    policy = config.dynamic_batching.default_queue_policy
    if settings.max_queue_size:
        policy.max_queue_size = settings.max_queue_size
    if settings.queue_timeout_us:
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = settings.queue_timeout_us
        policy.allow_timeout_override = True
    kind = mc.ModelInstanceGroup.KIND_GPU if settings.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=settings.instances, kind=kind)
    # warm-up at 1 and at the largest batch: TensorRT builds (or loads) its engine for the whole batch range, and ONNX
    # Runtime grows its memory arena, before the model is ready rather than in a user's first large request
    for batch in sorted({1, settings.max_batch_size}):
        warmup = config.model_warmup.add(name=f"batch_{batch}", batch_size=batch)
        for t in signature.inputs:
            # random bytes are valid images, but random int64 ids would index past the embeddings: zeros instead
            data = warmup.inputs[t.name]
            data.data_type = TRITON_DTYPES[t.dtype]
            data.dims.extend(t.dims)
            if t.dtype == "uint8":
                data.random_data = True
            else:
                data.zero_data = True
    if settings.intra_op_threads:  # read by the onnxruntime backend, and by the Python-backend twin
        config.parameters["intra_op_thread_count"].string_value = str(settings.intra_op_threads)
    if settings.device == "gpu":
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
        # engines and kernel timings kept across restarts (ONNX Runtime creates the model's folder)
        cache = f"{settings.engine_cache_dir.rstrip('/')}/{name}"
        for kind in ("engine", "timing"):
            trt.parameters[f"trt_{kind}_cache_enable"] = "1"
            trt.parameters[f"trt_{kind}_cache_path"] = cache
    return config


def write_config(path: str | Path, config: mc.ModelConfig, note: str = "written by `python -m export build`") -> Path:
    """``config.pbtxt`` in protobuf text format, under a one-line comment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = text_format.MessageToString(config, use_short_repeated_primitives=True)
    path.write_text(f"# {config.name}: {note}\n{text}")
    return path


def read_config(path: str | Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` (raises ``text_format.ParseError`` on anything Triton would reject as text)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def write_models(
    out: str | Path, family: str, graphs: dict[str, Path], signatures: dict[str, Signature], settings: TritonSettings
) -> dict[str, Path]:
    """Write the three model folders (replacing earlier ones of this family); returns each model.onnx path."""
    out = Path(out)
    written = {}
    for graph in GRAPHS:
        folder = out / model_name(family, graph)
        if folder.exists():
            shutil.rmtree(folder)
        model_file = folder / str(settings.version) / MODEL_FILE
        model_file.parent.mkdir(parents=True)
        shutil.copyfile(graphs[graph], model_file)
        name = model_name(family, graph)
        write_config(folder / CONFIG_FILE, model_config(name, signatures[graph], settings))
        gpu = model_config(name, signatures[graph], replace(settings, device="gpu"))
        write_config(folder / GPU_CONFIG_FILE, gpu, f"GPU variant (tritonserver --model-config-name={GPU_CONFIG_NAME})")
        written[graph] = model_file
    return written
