"""Sampling-settings grid for a generator: gFID, IS and class accuracy per (steps, guidance, temperature).

    python -m training.sweep_sampling --tokenizer DIR --generator DIR --classifier DIR \\
        --steps 8 --guidance 1,2,4 --temperature 1,2,4.5 --num-per-class 50 [--write-defaults]

Every cell uses the service's sampler (through ``evaluate_generation``) with the same seeds. ``--write-defaults``
stores the best cell (the lowest gFID within ``--accuracy-tolerance`` of the best class accuracy) as the generator
checkpoint's sampling defaults, which the export copies into the manifest, so the service serves what was
measured best.
"""

import argparse
import itertools
import json
from pathlib import Path

from titok_core.sampler import SamplingSettings

from .checkpoint import CONFIG_FILE, load_checkpoint
from .classifier import load_classifier
from .data import load_fashion_mnist
from .evaluate import FID_NOTE, evaluate_generation


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def sweep(generator, tokenizer, classifier, real, steps, guidance, temperature, schedule, num_per_class, seed=0):
    """One row per cell of the grid, in grid order."""
    rows = []
    for s, g, t in itertools.product(steps, guidance, temperature):
        settings = SamplingSettings(num_steps=s, guidance_scale=g, guidance_schedule=schedule, temperature=t)
        r = evaluate_generation(generator, tokenizer, classifier, num_per_class, settings, seed=seed, real_images=real)
        rows.append(
            {
                "num_steps": s,
                "guidance_scale": g,
                "temperature": t,
                "guidance_schedule": schedule,
                "gfid": r["gfid"],
                "inception_score": r["inception_score"],
                "class_accuracy": r["class_accuracy"],
            }
        )
        print(
            f"| {s} | {g:g} | {t:g} | {r['gfid']:.3f} | {r['inception_score']:.2f} | {r['class_accuracy']:.3f} |",
            flush=True,
        )
    return rows


def choose(rows: list[dict], accuracy_tolerance: float | None) -> dict:
    """The lowest-gFID cell; with a tolerance, only among cells within it of the best class accuracy.

    A low gFID can come from diversity alone (a hotter sampler): the tolerance keeps a default from trading the
    class the user asked for against it.
    """
    if accuracy_tolerance is not None:
        floor = max(r["class_accuracy"] for r in rows) - accuracy_tolerance
        rows = [r for r in rows if r["class_accuracy"] >= floor]
    return min(rows, key=lambda r: r["gfid"])


def write_defaults(generator_dir: str | Path, best: dict) -> None:
    """Make ``best`` the sampling defaults in the generator checkpoint's config.json."""
    path = Path(generator_dir) / CONFIG_FILE
    doc = json.loads(path.read_text())
    for key in ("num_steps", "guidance_scale", "temperature", "guidance_schedule"):
        doc["model"][key] = best[key]
    doc["metadata"]["sampling_defaults_from"] = {k: best[k] for k in ("gfid", "inception_score", "class_accuracy")}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--steps", default="8")
    p.add_argument("--guidance", default="1,2,4")
    p.add_argument("--temperature", default="1,2,4.5")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--num-per-class", type=int, default=50)
    p.add_argument("--num-test", type=int, default=10000, help="real test images for the FID statistics")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--write-defaults", action="store_true")
    p.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.02,
        help="the best cell is the lowest gFID among cells within this of the best class accuracy (<0: gFID only)",
    )
    args = p.parse_args(argv)
    tokenizer, generator = load_checkpoint(args.tokenizer), load_checkpoint(args.generator)
    classifier = load_classifier(args.classifier)
    real, _ = load_fashion_mnist("test", limit=args.num_test)
    print("| steps | guidance | temperature | gFID* | IS* | class acc. |\n|---|---|---|---|---|---|")
    rows = sweep(
        generator,
        tokenizer,
        classifier,
        real,
        [int(v) for v in args.steps.split(",")],
        _floats(args.guidance),
        _floats(args.temperature),
        args.schedule,
        args.num_per_class,
    )
    print(f"\n\\* {FID_NOTE}; {args.num_per_class} samples per class, seeds 0..")
    best = choose(rows, args.accuracy_tolerance if args.accuracy_tolerance >= 0 else None)
    print(f"best: {best}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.write_defaults:
        write_defaults(args.generator, best)
        print(f"wrote the best settings into {args.generator}/{CONFIG_FILE}")
    return rows


if __name__ == "__main__":
    main()
