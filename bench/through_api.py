"""Quality as an outside judge measures it, over real HTTP: the Fashion-MNIST test set through ``/v1/tokenize``
and then ``/v1/detokenize`` of the answer, the returned PNGs scored against the training layout of the same images
(PSNR, and rFID* and class kept by the repository's classifier, ``training.evaluation``); and ``/v1/generate`` at
the served defaults, 100 images per class with the evaluation's seeds (class c, image i: seed 100 c + i), scored
like ``python -m training evaluate`` (gFID* against the test set, IS*, class accuracy).

    python -m bench.through_api                    # 10,000 test images; gateways spawned on model_repository
    python -m bench.through_api --num-test 2000

Rows: the data set's own 28x28 files and the 32x32 training layout, through the gateway as it is, and the 28x28
files through the same repository with ``content_size`` removed from the manifest (as families were exported
before it existed: the image resized to fill the 32x32 frame). The in-process evaluation of the same images
(PyTorch, no HTTP) is the reference row. Prints Markdown tables.
"""

import argparse
import base64
import io
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from bench.load import _Gateway
from titok_core.manifest import manifest_paths
from training.checkpoint import load_checkpoint
from training.data import load_fashion_mnist, read_fashion_mnist
from training.evaluation.features import classify, fid_from_features, softmax
from training.evaluation.generation import evaluate_generation
from training.evaluation.reconstruction import reconstruct, reconstruction_metrics
from training.metrics import inception_score

FAMILY = "titok-fmnist"
BATCH = 64  # images per request: the gateway's default max_images


def _png(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def round_trip(url: str, images: list[str], clients: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Base64 files -> (tokens (N, T), served reconstructions uint8 (N, 3, H, W)), ``clients`` requests at a time."""

    def one(batch: list[str]) -> tuple[list, list]:
        with httpx.Client(base_url=url, timeout=300) as http:
            r = http.post("/v1/tokenize", json={"model": FAMILY, "images": batch})
            r.raise_for_status()
            tokens = r.json()["tokens"]
            r = http.post("/v1/detokenize", json={"model": FAMILY, "tokens": tokens})
            r.raise_for_status()
            pngs = [base64.b64decode(item["b64_json"]) for item in r.json()["images"]]
        return tokens, [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs]

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, [images[i : i + BATCH] for i in range(0, len(images), BATCH)]))
    tokens = torch.tensor([t for a in answers for t in a[0]])
    recon = torch.from_numpy(np.stack([x for a in answers for x in a[1]])).permute(0, 3, 1, 2)
    return tokens, recon


def generated(url: str, num_classes: int, per_class: int, clients: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (M, 3, H, W), labels (M,)) from /v1/generate at the served defaults, class-major, item k of the
    M = num_classes x per_class with seed k (the seeds of ``training.evaluation.generation``)."""
    chunk = 50  # images per request, within the gateway's max_n

    def one(start: int) -> list[np.ndarray]:
        label, n = start // per_class, min(chunk, per_class - start % per_class)
        body = {"model": FAMILY, "class_labels": [label], "n": n, "seed": start}
        r = httpx.post(f"{url}/v1/generate", json=body, timeout=600)
        r.raise_for_status()
        return [
            np.asarray(Image.open(io.BytesIO(base64.b64decode(i["b64_json"]))).convert("RGB"))
            for i in r.json()["images"]
        ]

    starts = [c * per_class + i for c in range(num_classes) for i in range(0, per_class, chunk)]
    with ThreadPoolExecutor(clients) as pool:
        images = [x for part in pool.map(one, starts) for x in part]
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), labels


def _without_content_size(repo: Path, into: Path) -> Path:
    """A copy of the repository whose manifests lack ``content_size`` (as exported before the field existed)."""
    shutil.copytree(repo, into)
    for path in manifest_paths(into):
        data = json.loads(path.read_text())
        data.pop("content_size", None)
        path.write_text(json.dumps(data, indent=2))
    return into


def run(args) -> str:
    torch.set_num_threads(args.threads)
    native, _ = read_fashion_mnist("test", limit=args.num_test)  # (N, 28, 28): the data set's own files
    padded, labels = load_fashion_mnist("test", limit=args.num_test)  # (N, 3, 32, 32): the training layout
    classifier = load_checkpoint(args.classifier)
    tokenizer = load_checkpoint(args.tokenizer)
    files = {
        "28x28 files": [_png(x) for x in native],
        "32x32 training layout": [_png(x.permute(1, 2, 0).numpy()) for x in padded],
    }

    def scored(tokens: torch.Tensor, recon: torch.Tensor) -> dict:
        m = reconstruction_metrics(padded, recon, tokens, tokenizer.config.codebook_size, classifier, labels=labels)
        kept = m["class_kept"]
        return {"psnr": m["psnr"], "rfid": m["rfid"], "class_kept": kept["accuracy_reconstructed"], **kept}

    rows = {}
    rows["in process (PyTorch, the training layout)", "-"] = scored(*reconstruct(tokenizer, padded))
    generator = load_checkpoint(args.generator)
    num_classes = generator.config.num_classes
    real_features = classify(classifier, padded)[0]

    def scored_samples(images: torch.Tensor, labels: torch.Tensor) -> dict:
        feats, logits = classify(classifier, images)
        return {
            "gfid": fid_from_features(real_features, feats),
            "inception_score": inception_score(softmax(logits)),
            "class_accuracy": float((logits.argmax(axis=1) == labels.numpy()).mean()),
        }

    samples = {}
    reference = evaluate_generation(generator, tokenizer, classifier, args.num_per_class, real_images=padded)
    samples["in process (PyTorch generator, titok_core.sampler)"] = scored_samples(
        reference["images"], reference["labels"]
    )
    gateway = _Gateway(args.repo)
    try:
        for name, images in files.items():
            rows[name, "content_size from the manifest"] = scored(*round_trip(gateway.url, images))
        samples["/v1/generate (the step graph)"] = scored_samples(
            *generated(gateway.url, num_classes, args.num_per_class)
        )
    finally:
        gateway.close()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = _Gateway(str(_without_content_size(Path(args.repo), Path(tmp) / "repo")))
        try:
            rows["28x28 files", "none (resized to fill 32x32)"] = scored(*round_trip(gateway.url, files["28x28 files"]))
        finally:
            gateway.close()

    originals = next(iter(rows.values()))["accuracy_original"]
    lines = [
        f"{len(labels)} Fashion-MNIST test images; classifier `{args.classifier}`: {originals:.2%} on the originals.",
        "",
        "| sent | gateway layout | PSNR (dB) | rFID* | class kept* |",
        "|---|---|---:|---:|---:|",
    ]
    for (sent, layout), r in rows.items():
        lines.append(f"| {sent} | {layout} | {r['psnr']:.2f} | {r['rfid']:.3f} | {r['class_kept']:.2%} |")
    lines += [
        "",
        f"Generation at the served defaults, {args.num_per_class} images per class (seeds 0 to "
        f"{num_classes * args.num_per_class - 1}):",
        "",
        "| sampled by | gFID* | IS* | class accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, r in samples.items():
        lines.append(f"| {name} | {r['gfid']:.3f} | {r['inception_score']:.2f} | {r['class_accuracy']:.2%} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--tokenizer", default="checkpoints/titok-fmnist/tokenizer", help="the family's source")
    p.add_argument("--generator", default="checkpoints/titok-fmnist/generator", help="the family's source")
    p.add_argument("--classifier", default="checkpoints/fmnist-classifier")
    p.add_argument("--num-test", type=int, default=10_000)
    p.add_argument("--num-per-class", type=int, default=100, help="generated images per class")
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads here (the gateway has its own)")
    return p


def main(argv=None) -> None:
    print(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
