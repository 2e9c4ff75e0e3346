"""The four ONNX graphs of a family (encoder, decoder, generator, step): fp32 inside, a dynamic batch, opset 18.

The dtypes and layouts are chosen so that the gateway does as little as possible:
  * encoder: uint8 NHWC images (B, H, W, 3) -> int64 token ids (B, N). PIL decodes a PNG/JPEG into exactly
    that array, so the gateway sends it as is; the /255, the NHWC -> NCHW transpose and the quantization (the
    nearest l2-normalised code) all happen in the graph.
  * decoder: int64 ids (B, N) -> uint8 NHWC images (B, H, W, 3): clamp, *255, round and cast in the graph, so
    the array goes straight to PIL for PNG encoding. It is the float32 [0, 1] variant (exported for verification
    to 1e-4) with those last ops appended: one trace, one decoder body.
  * generator: int64 ids (B, N) (mask id = codebook_size) and int64 class ids (B, 1) (num_classes = the null
    class) -> float32 logits (B, N, K): one MaskGIT step; the caller stacks the conditional and null-class rows
    for guidance. (B, 1) rather than (B,) gives every input a batch dimension plus dims, as Triton batches them.
  * step: one whole MaskGIT step (``training.sampling.MaskGITStep``, sampler version 2): tokens (B, N) and per-row
    (B, 1) class ids, seeds, steps, guidance, temperature, annealing and mask_len -> the next tokens (B, N). The
    null-class rows, guidance, the counter-based sampling and re-masking run in the graph: the gateway makes one
    call per step and does no per-item work on logits.
Ids are int64 because ONNX ArgMin returns int64 and Gather takes it without a cast.
"""

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from training.sampling import MaskGITStep

from .signatures import Signature, family_signatures, float_decoder_signature

OPSET = 18
_ONNX_DTYPES = {"uint8": onnx.TensorProto.UINT8, "int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}

# ---------------------------------------------------------------------------------------------------
# The graphs as modules
# ---------------------------------------------------------------------------------------------------


class EncoderGraph(nn.Module):
    """uint8 NHWC images -> token ids, with scaling, transpose and quantization inside."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.eval()  # a fresh wrapper is in training mode, and exporters restore it on the whole tree

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(images.permute(0, 3, 1, 2))  # (B, H, W, 3) uint8 -> (B, N) int64


class DecoderGraph(nn.Module):
    """Token ids -> uint8 NHWC images (or float32 in [0, 1] for verification)."""

    def __init__(self, tokenizer: nn.Module, float_output: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.float_output = float_output
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer.decode_tokens(tokens).permute(0, 2, 3, 1)  # (B, H, W, 3) in [0, 1]
        if self.float_output:
            return x.contiguous()
        return (x * 255.0).round().to(torch.uint8)  # round half to even, like ONNX Round


class GeneratorGraph(nn.Module):
    """One MaskGIT step: token ids (B, N) + class ids (B, 1) -> logits (B, N, K)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator
        self.eval()

    def forward(self, tokens: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        return self.generator(tokens, class_ids.reshape(-1))  # (B, N, K)


def family_signatures_of(tokenizer: nn.Module) -> dict[str, Signature]:
    """The shipped signatures for a tokenizer's sizes."""
    cfg = tokenizer.config
    return family_signatures(cfg.image_size, cfg.num_tokens, cfg.codebook_size)


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


def example_inputs(signature: Signature, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zeros of the right dtypes and batch size."""
    return tuple(torch.zeros((batch, *t.dims), dtype=getattr(torch, t.dtype)) for t in signature.inputs)


def step_example_inputs(signature: Signature, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs the step graph is traced on: a guided row and an unguided one (so that the null-class rows are built
    from data, not fixed by the trace), settings > 0 (zeros would divide by zero)."""
    tokens, *rest = example_inputs(signature, batch)
    values = {"guidance": [1.0, 0.0], "temperature": [1.0] * batch, "annealing": [1.0] * batch, "mask_len": [1] * batch}
    filled = [
        torch.tensor(values[t.name][:batch], dtype=x.dtype).reshape(-1, 1) if t.name in values else x
        for t, x in zip(signature.inputs[1:], rest, strict=True)
    ]
    return (tokens, *filled)


def _trace(module: nn.Module, signature: Signature, path: Path, inputs=None) -> onnx.ModelProto:
    """``torch.onnx.export`` to ``path`` with the TorchScript exporter, the batch axis named "batch"; the model."""
    # dynamo=False: deprecated in torch 2.13 but present, and on these models it gives the same numbers as the
    # torch.export-based exporter, 5-10x faster and without onnxscript. The tracer runs the model once, on a batch
    # of 1 (half the cost of 2 for the big decoders); sizes read from the input stay symbolic, and verification at
    # other batch sizes shows that the batch really is dynamic.
    names = [t.name for t in signature.inputs + signature.outputs]
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the deprecation notice, and tracer warnings about sizes it reads
        torch.onnx.export(
            module,
            example_inputs(signature) if inputs is None else inputs,
            str(path),
            input_names=[t.name for t in signature.inputs],
            output_names=[t.name for t in signature.outputs],
            opset_version=OPSET,
            dynamic_axes={name: {0: "batch"} for name in names},
            dynamo=False,
        )
    return onnx.load(str(path))


def _pin_io_shapes(model: onnx.ModelProto, signature: Signature) -> None:
    """Write the declared I/O shapes and dtypes into the graph: the tracer can leave a static dim symbolic."""
    declared = {t.name: t for t in signature.inputs + signature.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = declared[value.name]
        value.type.tensor_type.elem_type = _ONNX_DTYPES[spec.dtype]
        dims = value.type.tensor_type.shape.dim
        for i, size in enumerate(spec.shape):
            dims[i].Clear()
            if size < 0:
                dims[i].dim_param = "batch"
            else:
                dims[i].dim_value = size


def _save_checked(model: onnx.ModelProto, signature: Signature, path: Path) -> Path:
    _pin_io_shapes(model, signature)
    problems = model_problems(model, signature)
    if problems:
        raise RuntimeError(f"{path} does not match its signature: " + "; ".join(problems))
    onnx.save(model, str(path))
    return path


def _append_uint8_output(model: onnx.ModelProto) -> None:
    """Turn the float32 [0, 1] image output into uint8: *255, Round (half to even, as torch.round), Cast."""
    (output,) = model.graph.output
    unit = output.name + "_unit"  # the float output becomes an inner tensor of the same graph
    for node in model.graph.node:
        node.output[:] = [unit if name == output.name else name for name in node.output]
    for info in model.graph.value_info:
        if info.name == output.name:
            info.name = unit
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(255.0, dtype=np.float32), "uint8_scale"))
    model.graph.node.extend(
        [
            onnx.helper.make_node("Mul", [unit, "uint8_scale"], ["images_scaled"]),
            onnx.helper.make_node("Round", ["images_scaled"], ["images_rounded"]),
            onnx.helper.make_node("Cast", ["images_rounded"], [output.name], to=onnx.TensorProto.UINT8),
        ]
    )


def export_graph(module: nn.Module, signature: Signature, path: str | Path, inputs=None) -> Path:
    """Export one graph to ``path`` (weights inside the file) and check its I/O against ``signature``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save_checked(_trace(module, signature, path, inputs), signature, path)


def export_step(generator: nn.Module, signature: Signature, path: str | Path) -> Path:
    """The fused generator step graph (``MaskGITStep``)."""
    return export_graph(MaskGITStep(generator), signature, path, step_example_inputs(signature))


def export_decoder(
    tokenizer: nn.Module, path: str | Path, float_output: bool = False, float_path: str | Path | None = None
) -> Path:
    """The decoder graph: uint8 NHWC, or float32 NHWC in [0, 1] with ``float_output`` (for verification to 1e-4).

    The uint8 graph is the float one plus *255, Round and Cast, from the same trace; ``float_path`` keeps that float
    graph as well, so the graph verified to 1e-4 is exactly the body of the shipped one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = tokenizer.config
    float_signature = float_decoder_signature(cfg.image_size, cfg.num_tokens)
    model = _trace(DecoderGraph(tokenizer, float_output=True), float_signature, path)
    if float_output:
        return _save_checked(model, float_signature, path)
    if float_path is not None:
        _save_checked(model, float_signature, Path(float_path))
    _append_uint8_output(model)
    return _save_checked(model, family_signatures_of(tokenizer)["decoder"], path)


def export_family(tokenizer: nn.Module, generator: nn.Module, out_dir: str | Path) -> dict[str, Path]:
    """``out_dir/{encoder,decoder,generator,step}.onnx``, plus ``decoder_float.onnx`` for verification."""
    out = Path(out_dir)
    signatures = family_signatures_of(tokenizer)
    return {
        "encoder": export_graph(EncoderGraph(tokenizer), signatures["encoder"], out / "encoder.onnx"),
        "decoder": export_decoder(tokenizer, out / "decoder.onnx", float_path=out / "decoder_float.onnx"),
        "generator": export_graph(GeneratorGraph(generator), signatures["generator"], out / "generator.onnx"),
        "step": export_step(generator, signatures["step"], out / "step.onnx"),
        "decoder_float": out / "decoder_float.onnx",
    }


# ---------------------------------------------------------------------------------------------------
# Checking a graph's interface
# ---------------------------------------------------------------------------------------------------


def _describe(values) -> list[tuple[str, int, tuple]]:
    return [
        (v.name, v.type.tensor_type.elem_type, tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim))
        for v in values
    ]


def model_io(model: onnx.ModelProto) -> dict:
    """{"inputs"|"outputs": [(name, onnx elem type, dims as ints or names)], "opset": int} of a model."""
    return {
        "inputs": _describe(model.graph.input),
        "outputs": _describe(model.graph.output),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
    }


def graph_io(path: str | Path) -> dict:
    """``model_io`` of an ONNX file."""
    return model_io(onnx.load(str(path), load_external_data=False))


def model_problems(model: onnx.ModelProto, signature: Signature) -> list[str]:
    """What differs between a model and a signature (names, order, dtypes, shapes, opset); empty if nothing."""
    io = model_io(model)
    problems = [f"opset {io['opset']} < 17"] if io["opset"] < 17 else []
    for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        want = [(t.name, _ONNX_DTYPES[t.dtype], tuple("batch" if s < 0 else s for s in t.shape)) for t in specs]
        if io[kind] != want:
            problems.append(f"{kind} are {io[kind]}, expected {want}")
    return problems


def graph_problems(path: str | Path, signature: Signature) -> list[str]:
    """``model_problems`` of an ONNX file."""
    return model_problems(onnx.load(str(path), load_external_data=False), signature)
