"""Command-line entry: ``python -m training <command>`` (``python -m training <command> --help`` for each).

train CONFIG.yaml [key=value ...]   train (or resume) with a recipe; see training/train.py
classifier [--steps N] [--out DIR]   train the Fashion-MNIST classifier used for FID and perceptual losses
evaluate --tokenizer DIR ...         reconstruction, generation and linear-probe metrics (training/evaluation/)
sweep --tokenizer DIR ...            the sampling-settings grid of a generator (training/sweep_sampling.py)
science RESULTS.json ...             the tokenizer comparison tables and plot (training/science.py)
token-probe --tokenizer DIR ...      what a 1D tokenizer's tokens hold (training/token_probe.py)
variations [--out-dir DIR]           variations by strength, same vs other class (training/variations.py)
import-released FILE --out DIR       convert a released TiTok .bin into our checkpoint folder
"""

import argparse
import sys

from titok_core.extras import require


def _train(rest: list[str]) -> None:
    from .train import load_config, train

    config = rest[0] if rest and "=" not in rest[0] else None
    overrides = rest[1:] if config else rest
    print(train(load_config(config, overrides)))


def _import_released(rest: list[str]) -> None:
    from .checkpoint import import_released, save_checkpoint

    parser = argparse.ArgumentParser(prog="python -m training import-released")
    parser.add_argument("file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default=None)
    args = parser.parse_args(rest)
    save_checkpoint(import_released(args.file, args.preset), args.out, {"source": args.file})
    print(f"wrote {args.out}")


def _module_main(module: str):
    """A command whose ``main(argv)`` lives in ``training.<module>`` (imported only when it runs)."""

    def run(rest: list[str]) -> None:
        import importlib

        importlib.import_module(f"training.{module}").main(rest)

    return run


COMMANDS = {
    "train": _train,
    "classifier": _module_main("classifier"),
    "evaluate": _module_main("evaluation.cli"),
    "sweep": _module_main("sweep_sampling"),
    "science": _module_main("science"),
    "token-probe": _module_main("token_probe"),
    "variations": _module_main("variations"),
    "import-released": _import_released,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"unknown command {command!r}\n{__doc__}")
    require("torch", purpose="python -m training")
    COMMANDS[command](rest)


if __name__ == "__main__":
    main()
