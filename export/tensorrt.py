"""fp16 TensorRT engines from a family's ONNX graphs, with one optimization profile over the dynamic batch.

Each engine is written as ``<model>/<version>/model.plan`` beside its ``model.onnx`` (Triton's file name for a
``tensorrt_plan`` model); the onnxruntime configs stay as they are. Engines are tied to the GPU and TensorRT version
that built them, so build them on the serving machine. TensorRT 10 takes fp16 as a builder flag; TensorRT 11 has
only strongly typed networks, so there the graph is first converted to mixed precision with ModelOpt's AutoCast.
"""

from pathlib import Path

from titok_core.manifest import Signature, read_manifest

UNAVAILABLE = "TensorRT export needs an NVIDIA GPU and the tensorrt package: {}"


class TensorRTUnavailable(RuntimeError):
    """No NVIDIA GPU or no ``tensorrt`` package on this machine."""


def _nvidia_gpu_present() -> bool:
    return any(Path("/proc/driver/nvidia/gpus").glob("*")) or Path("/dev/nvidia0").exists()


def load_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailable saying what is missing."""
    problems = [] if _nvidia_gpu_present() else ["no NVIDIA GPU found (no /proc/driver/nvidia/gpus, no /dev/nvidia0)"]
    try:
        import tensorrt
    except ImportError as e:
        problems.append(f"cannot import tensorrt ({e})")
        tensorrt = None
    if problems:
        raise TensorRTUnavailable(UNAVAILABLE.format("; ".join(problems)))
    return tensorrt


def _onnx_bytes(trt, onnx_path: Path) -> bytes:
    if hasattr(trt.BuilderFlag, "FP16"):
        return onnx_path.read_bytes()  # TensorRT 10: fp32 graph, fp16 kernels chosen by the builder flag
    from modelopt.onnx.autocast import convert_to_mixed_precision  # TensorRT 11: fp16 must be in the graph

    model = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    return model.SerializeToString()


def build_engine(trt, onnx_path: str | Path, signature: Signature, max_batch_size: int, plan_path: str | Path) -> Path:
    """Parse one ONNX graph and build an fp16 engine for batches 1..max_batch_size (tuned for max/2)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_onnx_bytes(trt, Path(onnx_path))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for t in signature.inputs:
        opt = max(1, max_batch_size // 2)
        profile.set_shape(t.name, (1, *t.dims), (opt, *t.dims), (max_batch_size, *t.dims))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(engine))
    return plan_path


def build_engines(repo: str | Path, family: str, out: str | Path | None = None) -> list[Path]:
    """Engines for the family's graphs: ``<out or repo>/<model>/<version>/model.plan``."""
    trt = load_tensorrt()
    repo = Path(repo)
    manifest = read_manifest(repo, family)
    plans = []
    for entry in manifest.graphs.values():
        onnx_path = repo / entry.path
        plan = Path(out or repo) / Path(entry.path).with_name("model.plan")
        plan.parent.mkdir(parents=True, exist_ok=True)
        plans.append(build_engine(trt, onnx_path, entry.signature, manifest.max_batch_size, plan))
    return plans
