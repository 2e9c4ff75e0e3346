"""The prepared GPU check: fp16 parity against fp32 PyTorch and speed at batch 64, one command, ~10 min on one GPU.

    python -m bench.gpu_check                                    # TiTok-L-32 + its generator, random weights
    python -m bench.gpu_check --out $OUT/gpu_check.md            # the same, the tables also written to a file
    python -m bench.gpu_check --preset titok-fmnist-32 --batch 8 --repeats 2    # a CPU smoke run (the tests run it)

Random weights are fine for speed; parity on random weights is a lower bound (no trained margins between codes).
Runners, each against fp32 PyTorch on the same device and the same inputs:
- PyTorch fp16 autocast on a GPU (bf16 on a CPU);
- ONNX Runtime on its best provider (TensorRT fp16 with an engine cache, then CUDA; the CPU provider only when
  PyTorch runs on the CPU too), from the same ONNX graphs the exporter ships. Skipped with a line when
  onnxruntime is missing or offers no provider for this device (the GPU image here has the CPU build only).

Parity: token agreement of the encoder, PSNR of the decoder's uint8 images, argmax agreement of the generator's
logits. Speed: tokenize and detokenize images/s at the batch; generate samples/s (the steps with guidance:
2 x batch generator rows a step, the numpy sampler on the host, then the decoder), and the same graphs alone
without the sampler, against the paper's about 100 samples/s for TiTok-L-32 on an A100. The gap between the
two generate rows is the host sampler's share (the engine issue moves it onto the device).
"""

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.graphs import export_three, graph_inputs
from bench.machine import median_seconds
from export.onnx_graphs import DecoderGraph, EncoderGraph, GeneratorGraph
from titok_core.sampler import SamplingSettings, generate
from training.models import build_model

PAPER_SAMPLES_PER_S = 100  # TiTok-L-32 + MaskGIT, 256x256, one A100 (the paper)


class TorchRunner:
    """The three graphs as PyTorch modules on a device, fp32 or under autocast."""

    def __init__(self, tokenizer, generator, device: torch.device, autocast: torch.dtype | None):
        self.device, self.autocast = device, autocast
        self.modules = {
            "encoder": EncoderGraph(tokenizer),
            "decoder": DecoderGraph(tokenizer),
            "generator": GeneratorGraph(generator),
        }
        self.name = "PyTorch fp32" if autocast is None else f"PyTorch {str(autocast).removeprefix('torch.')} autocast"

    def __call__(self, graph: str, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            out = self.modules[graph](*(torch.from_numpy(a).to(self.device) for a in arrays))
        return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()


class OnnxRunner:
    """The exported graphs on onnxruntime's best provider for this device."""

    def __init__(self, paths: dict[str, Path], providers: list):
        import onnxruntime as ort

        self.sessions = {g: ort.InferenceSession(str(p), providers=providers) for g, p in paths.items()}
        self.name = f"ONNX Runtime {self.sessions['generator'].get_providers()[0].removesuffix('ExecutionProvider')}"

    def __call__(self, graph: str, *arrays: np.ndarray) -> np.ndarray:
        session = self.sessions[graph]
        return session.run(None, dict(zip((i.name for i in session.get_inputs()), arrays, strict=True)))[0]


def onnx_providers(device: torch.device, trt_cache: Path) -> tuple[list | None, str]:
    """The providers to try, or None and why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(ort.get_available_providers())
    if device.type == "cuda" and not gpu:
        return None, f"onnxruntime {ort.__version__} offers no GPU provider here (install onnxruntime-gpu)"
    from service.backends.embedded import providers_for  # the gateway's own choice (it needs the gateway's packages)

    return providers_for("auto", trt_cache), ""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def parity(reference, runner, feeds: dict) -> str:
    tokens = np.mean(reference("encoder", *feeds["encoder"].values()) == runner("encoder", *feeds["encoder"].values()))
    images = psnr(reference("decoder", *feeds["decoder"].values()), runner("decoder", *feeds["decoder"].values()))
    ref_logits = reference("generator", *feeds["generator"].values())
    argmax = np.mean(ref_logits.argmax(-1) == runner("generator", *feeds["generator"].values()).argmax(-1))
    return f"| {runner.name} | {tokens:.2%} | {images:.1f} | {argmax:.2%} |"


def speed(runner, tokenizer, generator, feeds: dict, settings: SamplingSettings, args) -> list[str]:
    cfg, gcfg, batch = tokenizer.config, generator.config, args.batch
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(fn) -> float:
        return median_seconds(lambda: (fn(), sync()), args.warmup, args.repeats)

    classes = list(np.arange(batch) % gcfg.num_classes)
    dims = dict(seq_len=cfg.num_tokens, codebook_size=cfg.codebook_size, num_classes=gcfg.num_classes)
    logits = lambda tokens, ids: runner("generator", tokens, ids.reshape(-1, 1))  # noqa: E731
    rows = np.concatenate([feeds["generator"]["tokens"]] * 2)  # conditional + unconditional rows of one step
    row_classes = np.concatenate([feeds["generator"]["class_ids"]] * 2)

    def graphs_alone():
        for _ in range(settings.num_steps):
            runner("generator", rows, row_classes)
        runner("decoder", feeds["decoder"]["tokens"])

    def with_sampler():
        runner("decoder", generate(logits, classes, list(range(batch)), settings=settings, **dims))

    t = {
        "tokenize": timed(lambda: runner("encoder", feeds["encoder"]["images"])),
        "detokenize": timed(lambda: runner("decoder", feeds["decoder"]["tokens"])),
        "generate (graphs alone)": timed(graphs_alone),
        "generate (with the host sampler)": timed(with_sampler),
    }
    return [f"| {runner.name} | {name} | {batch / s:,.2f} |" for name, s in t.items()]


def run(args) -> str:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    gen_preset = args.generator_preset or (
        "generator-fmnist" if "fmnist" in args.preset else f"{args.preset}-generator"
    )
    tokenizer, generator = build_model(args.preset).eval(), build_model(gen_preset).eval()
    gcfg = generator.config
    settings = SamplingSettings(
        num_steps=args.steps or gcfg.num_steps,
        guidance_scale=gcfg.guidance_scale,
        guidance_schedule=gcfg.guidance_schedule,
        temperature=gcfg.temperature,
    )
    feeds = graph_inputs(tokenizer, generator, args.batch, np.random.default_rng(0))
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    tokenizer, generator = tokenizer.to(device), generator.to(device)
    reference = TorchRunner(tokenizer, generator, device, None)
    runners = [reference, TorchRunner(tokenizer, generator, device, half)]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        providers, why_not = onnx_providers(device, Path(args.trt_cache))
        if providers is None:
            notes.append(f"- ONNX Runtime skipped: {why_not}.")
        else:
            paths = export_three(tokenizer.cpu(), generator.cpu(), Path(tmp))
            tokenizer, generator = tokenizer.to(device), generator.to(device)
            runners.append(OnnxRunner(paths, providers))
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        lines = [
            f"`{args.preset}` + `{gen_preset}` (random weights) on {name}, batch {args.batch}; "
            f"generation: {settings.num_steps} steps, guidance {settings.guidance_scale:g} "
            f"({settings.guidance_schedule}); median of {args.repeats} runs after {args.warmup} warm-up runs.",
            *notes,
            "",
            "| against fp32 PyTorch | token agreement | decoder PSNR (dB) | generator argmax agreement |",
            "|---|---:|---:|---:|",
            *(parity(reference, r, feeds) for r in runners[1:]),
            "",
            "| runner | route | images/s |",
            "|---|---|---:|",
        ]
        for runner in runners:
            lines += speed(runner, tokenizer, generator, feeds, settings, args)
            print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", f"The paper: about {PAPER_SAMPLES_PER_S} samples/s for TiTok-L-32 + MaskGIT on one A100."]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="titok-l-32", help="tokenizer preset (random weights)")
    p.add_argument("--generator-preset", help="generator preset (default: the tokenizer preset's generator)")
    p.add_argument("--batch", type=int, default=64, help="images per call")
    p.add_argument("--steps", type=int, help="sampling steps (default: the generator preset's)")
    p.add_argument("--device", default="auto", help="auto (cuda when there), cuda or cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (TensorRT builds its engines then)")
    p.add_argument("--trt-cache", default="/tmp/titok-trt-cache", help="TensorRT engine cache folder")
    p.add_argument("--out", help="also write the tables here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report = run(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
