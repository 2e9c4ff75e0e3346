"""Command-line entry: ``python -m training <command>``.

train CONFIG.yaml [key=value ...]     train (or resume) with a recipe; see training/train.py
classifier [--steps N] [--out DIR]     train the Fashion-MNIST classifier used for FID and perceptual losses
import-released FILE --out DIR         convert a released TiTok .bin into our checkpoint folder
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import load_config, train

        config = rest[0] if rest and "=" not in rest[0] else None
        overrides = rest[1:] if config else rest
        print(train(load_config(config, overrides)))
    elif command == "classifier":
        from .classifier import main as classifier_main

        classifier_main(rest)
    elif command == "import-released":
        from .checkpoint import import_released, save_checkpoint

        parser = argparse.ArgumentParser(prog="python -m training import-released")
        parser.add_argument("file")
        parser.add_argument("--out", required=True)
        parser.add_argument("--preset", default=None)
        args = parser.parse_args(rest)
        save_checkpoint(import_released(args.file, args.preset), args.out, {"source": args.file})
        print(f"wrote {args.out}")
    else:
        sys.exit(f"unknown command {command!r}\n{__doc__}")


if __name__ == "__main__":
    main()
