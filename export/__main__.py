"""The ``export`` command: ``python -m export {build,verify,twin,tensorrt} ...`` (``--help`` on each)."""

import argparse
import sys
from pathlib import Path

from titok_core.extras import require
from titok_core.manifest import GRAPHS


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="export, verify and write a family into a Triton model repository")
    build.add_argument("--tokenizer", help="checkpoint folder or released tokenizer .bin")
    build.add_argument("--generator", help="checkpoint folder or released generator .bin")
    build.add_argument("--family", help="family name: models are <family>_{encoder,decoder,generator}")
    build.add_argument(
        "--released",
        choices=("titok-l-32", "titok-b-64", "titok-s-128"),
        help="a released model: its files from --weights, 256x256, ImageNet class names, the paper's sampling",
    )
    build.add_argument("--weights", help="--released: the folder with the released .bin files")
    build.add_argument("--fetch", action="store_true", help="--released: download missing files from the hub")
    build.add_argument(
        "--configs",
        help="--released: a JSON file {tokenizer: config, generator: config} for files of other sizes in the released "
        "layout (e.g. reduced copies in tests); default: the released models' own",
    )
    build.add_argument("--out", default="model_repository", help="repository folder (default: model_repository)")
    build.add_argument("--max-batch-size", type=int, default=64)
    build.add_argument("--instances", type=int, default=1, help="instances per model (default: 1)")
    build.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: KIND_GPU + TensorRT fp16")
    build.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime threads per instance (0: all)")
    build.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher delay (default: 2000)")
    build.add_argument("--preferred-batch-sizes", type=_sizes, default=(), help="e.g. 8,16,32 (default: powers of 2)")
    build.add_argument("--model-version", type=int, default=1, help="the models' version folder (default: 1)")
    build.add_argument(
        "--class-names", help="comma-separated; default: those the generator checkpoint recorded, else class_<i>"
    )
    build.add_argument("--skip-verify", action="store_true", help="write without checking against PyTorch")
    build.add_argument("--batch-sizes", type=_sizes, default=(1, 3, 32), help="verification batch sizes (1,3,32)")
    build.add_argument("--decoder-batch-sizes", type=_sizes, help="decoder verification batch sizes (default: same)")

    verify = sub.add_parser("verify", help="check a written family against its PyTorch checkpoints")
    verify.add_argument("--repo", required=True)
    verify.add_argument("--family", required=True)
    verify.add_argument("--tokenizer", required=True)
    verify.add_argument("--generator", required=True)
    verify.add_argument("--batch-sizes", type=_sizes, default=(1, 3, 32))
    verify.add_argument("--decoder-batch-sizes", type=_sizes)

    twin = sub.add_parser("twin", help="write the Python-backend twin of a repository (for tests)")
    twin.add_argument("--repo", required=True)
    twin.add_argument("--out", required=True)

    trt = sub.add_parser("tensorrt", help="build fp16 TensorRT engines for a family (NVIDIA GPU + tensorrt)")
    trt.add_argument("--repo", required=True)
    trt.add_argument("--family", required=True)
    trt.add_argument("--out", help="where to write <model>/<version>/model.plan (default: the repository)")
    return p


def _build_released(args) -> int:
    from .released import build_released

    if not args.weights:
        print("--released needs --weights DIR (the folder with the released .bin files)", file=sys.stderr)
        return 2
    presets = {}
    if args.configs:
        import json

        from training.models import config_from_dict

        presets = {f"{k}_preset": config_from_dict(v) for k, v in json.loads(Path(args.configs).read_text()).items()}
    result = build_released(
        args.released, args.weights, args.out, args.family, args.fetch, verify=not args.skip_verify, **presets
    )
    return _reported(result, args.out, args.family or args.released)


def _reported(result, out: str, family: str) -> int:
    """The verification report of a build, then what was written (or that nothing was): the exit status."""
    from .verify import report_markdown

    if result.report is not None:
        print(report_markdown(result.report))
    if not result.ok:
        print(f"verification failed: nothing written to {out}", file=sys.stderr)
        return 1
    print(f"wrote {family}_{{{','.join(GRAPHS)}}} and {result.manifest}")
    return 0


def _build(args) -> int:
    if args.released:
        return _build_released(args)
    if not (args.tokenizer and args.generator and args.family):
        print("build needs --tokenizer, --generator and --family (or --released and --weights)", file=sys.stderr)
        return 2
    from .build import build_family
    from .sources import load_source
    from .triton_repo import TritonSettings

    tokenizer, tok_source = load_source(args.tokenizer)
    generator, gen_source = load_source(args.generator)
    settings = TritonSettings(
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        device=args.device,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=args.preferred_batch_sizes,
        version=args.model_version,
        intra_op_threads=args.intra_op_threads,
    )
    result = build_family(
        tokenizer,
        generator,
        args.out,
        args.family,
        settings=settings,
        names=args.class_names,
        sources={"tokenizer": tok_source, "generator": gen_source},
        verify=not args.skip_verify,
        batch_sizes=args.batch_sizes,
        decoder_batch_sizes=args.decoder_batch_sizes,
    )
    return _reported(result, args.out, args.family)


def _verify(args) -> int:
    from titok_core.manifest import checksum_problems, read_manifest
    from training.models import check_pair

    from .sources import load_source
    from .verify import report_markdown, verify_family

    manifest = read_manifest(args.repo, args.family)
    problems = checksum_problems(args.repo, manifest)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    tokenizer, _ = load_source(args.tokenizer)
    generator, _ = load_source(args.generator)
    check_pair(tokenizer.config, generator.config)
    graphs = {g: Path(args.repo) / e.path for g, e in manifest.graphs.items()}
    report = verify_family(tokenizer, generator, graphs, args.batch_sizes, args.decoder_batch_sizes)
    print(report_markdown(report))
    return 0 if report["ok"] else 1


def _twin(args) -> int:
    from .twin import write_twin

    names = write_twin(args.repo, args.out)
    print(f"wrote the Python-backend twin of {len(names)} models to {args.out}: {', '.join(names)}")
    return 0


def _tensorrt(args) -> int:
    from .tensorrt import TensorRTUnavailable, build_engines

    try:
        plans = build_engines(args.repo, args.family, args.out)
    except TensorRTUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    print("\n".join(f"wrote {p}" for p in plans))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    require("torch", "onnx", "onnxruntime", purpose="python -m export")
    return {"build": _build, "verify": _verify, "twin": _twin, "tensorrt": _tensorrt}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
