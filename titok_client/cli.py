"""``titok``: the gateway from a shell.

    titok models                                    # served families, their classes and sampling defaults
    titok tokenize a.png b.jpg -o tokens.json       # images -> token ids (stdout without -o)
    titok detokenize tokens.json -o out/            # token ids -> out/a.png, out/b.png
    titok generate --class sneaker --class 9 -n 8 --seed 0 -o out/ [--tokens]
    titok vary shoe.png --strength 0.5 --class Dress -n 8 --seed 0 -o out/   # variations (or --mask 0,5,9)

The gateway is ``--url`` or $TITOK_URL (default http://127.0.0.1:8000); the API key ``--api-key`` or
$TITOK_API_KEY. Exit codes: 0 done, 1 the gateway answered an error or could not be reached (one line on stderr:
``error: <type>: <message>``), 2 a usage error.

A tokens file (written by ``tokenize`` and by ``generate --tokens``, read by ``detokenize``) is JSON::

    {"model": "titok-fmnist", "num_tokens": 32, "codebook_size": 1024,
     "items": [{"name": "a.png", "tokens": [390, 703, ...]}, ...]}

``detokenize`` also reads a bare list of token lists, and names its images after the items' names.
"""

import argparse
import base64
import functools
import json
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .api import DEFAULT_URL, MAX_RETRY_WAIT_S, ApiError, Client

MAX_PER_REQUEST = 64  # the gateway's default TITOK_MAX_IMAGES and TITOK_MAX_N
MAX_UPLOAD_BYTES = 8 << 20  # image bytes per tokenize request: in base64, under the default 16 MiB body limit
FORMATS = ("png", "jpeg", "webp")
SCHEDULES = ("constant", "linear", "power-cosine")  # the gateway's guidance schedules (GET /openapi.json)
FORMAT_HELP = "image file format: png, jpeg (quality 95) or webp (lossless) (default: png)"


class UsageError(Exception):
    """The command line or its input files are wrong (exit 2)."""


class Batches:
    """Sends items in consecutive batches of at most ``limit`` items (and ``max_bytes``; one item may exceed it
    alone). A gateway whose own limits are lower (TITOK_MAX_IMAGES, TITOK_MAX_N, TITOK_MAX_BODY_BYTES) refuses a
    batch: the limit then drops to the gateway's (read from its message, else half) and the batch is sent again."""

    # (status, param) of the gateway's refusals of a request's size: image count, token sequences, n, body bytes
    SIZE_LIMITS = {(413, "images"), (413, "tokens"), (400, "n"), (413, None)}

    def __init__(self, limit: int):
        self.limit = limit

    def run(self, sizes: list[int], send: Callable[[range], None], max_bytes: float = float("inf")) -> None:
        start = 0
        while start < len(sizes):
            end, total = start, 0
            while end < len(sizes) and end - start < self.limit and (end == start or total + sizes[end] <= max_bytes):
                total, end = total + sizes[end], end + 1
            try:
                send(range(start, end))
            except ApiError as e:
                if (e.status, e.param) not in self.SIZE_LIMITS or end - start == 1:
                    raise
                hint = re.search(r"at most (\d+)", e.message)
                self.limit = max(1, min(int(hint[1]) if hint else (end - start) // 2, end - start - 1))
                continue
            start = end


def progress(total: int, args, unit: str) -> tqdm:
    """A bar on stderr: shown with --progress, hidden with --no-progress, else when stderr is a terminal."""
    show = args.progress if args.progress is not None else sys.stderr.isatty() and total > 1
    return tqdm(total=total, unit=unit, disable=not show, file=sys.stderr, dynamic_ncols=True)


def write_json(doc: dict, output: str) -> None:
    """A tokens file: one item a line."""
    head = json.dumps({k: v for k, v in doc.items() if k != "items"})[:-1]
    text = head + ', "items": [\n' + ",\n".join(f" {json.dumps(item)}" for item in doc["items"]) + "\n]}\n"
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(output)


def slug(name: str) -> str:
    """A class name as a file-name part: 'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


# -- commands --------------------------------------------------------------------------------------


def cmd_models(client: Client, args) -> None:
    cards = client.models()
    if args.json:
        print(json.dumps(cards, indent=1))
        return
    for card in cards:
        s = card["sampling"]
        content = card.get("content_size")  # older gateways do not send it
        print(
            f"{card['id']} (version {card['version']}): {card['image_size']}x{card['image_size']} images"
            + (f" (content in the centred {content}x{content}: other sizes are fitted to it)" if content else "")
            + f", {card['num_tokens']} tokens over {card['codebook_size']} codes"
        )
        print(_classes_line(card["classes"], args.search))
        print(
            f"  sampling: {s['num_steps']} steps, guidance {s['guidance_scale']} ({s['guidance_schedule']}), "
            f"temperature {s['temperature']}" + (", softmax annealing" if s.get("softmax_annealing") else "")
        )
        if "limits" in card:
            deadlines = ", ".join(f"{route} {s:g} s" for route, s in card["limits"]["deadlines_s"].items())
            print(f"  limits: batch {card['limits']['max_batch_size']}, deadlines {deadlines}")


def _classes_line(classes: list[dict], search: str | None) -> str:
    """All classes when they are few; those whose name (or index) matches ``search``; else a count and a hint."""
    named = [f"{c['id']} {c['name']}" for c in classes]
    if search:
        query = search.strip().lower()
        found = [n for c, n in zip(classes, named, strict=True) if query in c["name"].lower() or query == str(c["id"])]
        return f"  classes matching {search!r}: " + (", ".join(found) or "none")
    if len(classes) > 20:
        return f"  classes: {len(classes)} ({', '.join(named[:3])}, ...; find one with --search NAME)"
    return "  classes: " + ", ".join(named)


def cmd_tokenize(client: Client, args) -> None:
    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    sizes = [p.stat().st_size for p in paths]
    items, answer = [], {}

    def send(batch: range) -> None:
        nonlocal answer
        try:
            answer = client.tokenize([paths[i].read_bytes() for i in batch], args.model)
        except ApiError as e:  # name the file at fault: param images[k] is the batch's k-th
            k = re.fullmatch(r"images\[(\d+)\]", e.param or "")
            if k and int(k[1]) < len(batch):
                e.message += f" ({paths[batch[int(k[1])]]})"
            raise
        items.extend({"name": str(paths[i]), "tokens": t} for i, t in zip(batch, answer["tokens"], strict=True))
        bar.update(len(batch))

    with progress(len(paths), args, "image") as bar:
        Batches(args.batch_size).run(sizes, send, MAX_UPLOAD_BYTES)
    doc = {k: answer[k] for k in ("model", "num_tokens", "codebook_size")}
    write_json({**doc, "items": items}, args.output)


def read_tokens(path: str) -> tuple[str | None, list[dict]]:
    """The model and items of a tokens file (or a bare list of token lists); UsageError when it is not one."""
    try:
        doc = json.loads(sys.stdin.read() if path == "-" else Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e}") from None
    model, items = None, doc
    if isinstance(doc, dict):
        model, items = doc.get("model"), doc.get("items")
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path} is not a tokens file: expected {{'items': [{{'tokens': [...]}}, ...]}}")
    items = [item if isinstance(item, dict) else {"tokens": item} for item in items]
    for i, item in enumerate(items):
        tokens = item.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise UsageError(f"{path}: item {i} has no list of integer token ids")
    return model, items


def cmd_detokenize(client: Client, args) -> None:
    model, items = read_tokens(args.tokens)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names, seen = [], set()
    for i, item in enumerate(items):
        stem = Path(str(item.get("name") or f"{i:04d}")).stem
        name = f"{stem}.{args.format}" if stem not in seen else f"{stem}-{i}.{args.format}"
        seen.add(stem)
        names.append(name)

    def send(batch: range) -> None:
        answer = client.detokenize([items[i]["tokens"] for i in batch], args.model or model, args.format)
        for i, image in zip(batch, answer["images"], strict=True):
            (out / names[i]).write_bytes(base64.b64decode(image["b64_json"]))
            print(out / names[i])
        bar.update(len(batch))

    with progress(len(items), args, "image") as bar:
        Batches(args.batch_size).run([0] * len(items), send)


def cmd_generate(client: Client, args) -> None:
    labels = [int(c) if c.isdigit() else c for c in args.classes]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    sampling = dict(
        num_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_schedule=args.guidance_schedule,
        temperature=args.temperature,
        format=args.format,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    items, answer = [], {}

    def send(label, first_seed: int, batch: range) -> None:
        nonlocal answer
        # image k of all (label-major) gets seed + k, as in one request: split requests give the same images
        job_seed = first_seed + batch.start
        answer = client.generate(label, len(batch), args.model, seed=job_seed, return_tokens=args.tokens, **sampling)
        for image in answer["images"]:
            name = f"{slug(image['class_name'])}-{image['seed']}.{args.format}"
            (out / name).write_bytes(base64.b64decode(image["b64_json"]))
            print(out / name)
            if args.tokens:
                keys = ("class_label", "class_name", "seed", "tokens")
                items.append({"name": name, **{key: image[key] for key in keys}})
        bar.update(len(batch))

    batches = Batches(args.batch_size)
    with progress(len(labels) * args.n, args, "image") as bar:
        for j, label in enumerate(labels):
            batches.run([0] * args.n, functools.partial(send, label, seed + j * args.n))
    if args.tokens:
        num_tokens = len(items[0]["tokens"])
        write_json({"model": answer["model"], "num_tokens": num_tokens, "items": items}, str(out / "tokens.json"))


def cmd_vary(client: Client, args) -> None:
    source = Path(args.source)
    if not source.is_file() and args.source != "-":
        raise UsageError(f"no such file: {args.source}")
    image, tokens, model = None, None, args.model
    if args.source == "-" or source.suffix.lower() == ".json":  # a tokens file: its first item is the source
        file_model, items = read_tokens(args.source)
        tokens, model = items[0]["tokens"], model or file_model
    else:
        image = source.read_bytes()
    if args.mask is not None and args.strength is not None:
        raise UsageError("give --strength or --mask, not both")
    mask = None
    if args.mask is not None:
        try:
            mask = [int(p) for p in args.mask.split(",") if p.strip()]
        except ValueError:
            raise UsageError(f"--mask takes comma-separated token positions, not {args.mask!r}") from None
    strength = args.strength if args.strength is not None or mask is not None else 0.5
    # no --class: unconditional; 'null' (or 'none') among them: one unconditional set
    labels = [None if c.lower() in ("null", "none") else int(c) if c.isdigit() else c for c in args.classes or ["null"]]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    sampling = dict(
        num_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_schedule=args.guidance_schedule,
        temperature=args.temperature,
        format=args.format,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = "tokens" if image is None else source.stem
    items, answer = [], {}

    def send(label, first_seed: int, batch: range) -> None:
        nonlocal answer
        job_seed = first_seed + batch.start  # image k of all gets seed + k, however the requests are split
        answer = client.vary(
            image,
            tokens,
            strength=strength,
            mask=mask,
            class_labels=label,
            n=len(batch),
            model=model,
            seed=job_seed,
            return_tokens=args.tokens,
            **sampling,
        )
        for v in answer["images"]:
            name = f"{stem}-{slug(v['class_name'] or 'unconditional')}-{v['seed']}.{args.format}"
            (out / name).write_bytes(base64.b64decode(v["b64_json"]))
            print(out / name)
            if args.tokens:
                keys = ("class_label", "class_name", "seed", "regenerated", "tokens")
                items.append({"name": name, **{key: v[key] for key in keys}})
        bar.update(len(batch))

    batches = Batches(args.batch_size)
    with progress(len(labels) * args.n, args, "image") as bar:
        for j, label in enumerate(labels):
            batches.run([0] * args.n, functools.partial(send, label, seed + j * args.n))
    if args.tokens:
        head = {"model": answer["model"], "num_tokens": len(answer["source_tokens"]), "source": answer["source_tokens"]}
        write_json({**head, "items": items}, str(out / "tokens.json"))


# -- the command line ------------------------------------------------------------------------------


def common_options(top: bool) -> argparse.ArgumentParser:
    """The options of every command, before it (``top``) or after it; after it, an option left out is SUPPRESSed,
    so that it does not reset one given before the command."""
    p = argparse.ArgumentParser(add_help=False)
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("--url", default=default(None), help=f"gateway URL (TITOK_URL; default {DEFAULT_URL})")
    p.add_argument("--api-key", default=default(None), help="Bearer API key (TITOK_API_KEY)")
    p.add_argument("--timeout", type=float, default=default(120.0), help="seconds per request (120)")
    p.add_argument("--model", default=default(None), help="model family (default: the gateway's first)")
    p.add_argument(
        "--retries",
        type=int,
        default=default(3),
        help="tries again after a 429 (queue full) or 503 (backend down) answer, waiting its Retry-After (else 0.5, "
        f"1, 2, ... s; at most {MAX_RETRY_WAIT_S:g} s a wait) (default: 3; 0: never)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = common_options(top=False)
    parser = argparse.ArgumentParser(
        prog="titok",
        description="Tokenize, detokenize, generate and vary images with a titok-serve gateway.",
        parents=[common_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", parents=[common], help="list the served models")
    models.add_argument("--json", action="store_true", help="the raw JSON of GET /v1/models")
    models.add_argument("--search", metavar="TEXT", help="only the classes whose name contains TEXT (or index is it)")
    models.set_defaults(run=cmd_models)

    per_request = dict(type=positive, default=MAX_PER_REQUEST, help="most images per request (%(default)s)")
    tok = commands.add_parser("tokenize", parents=[common], help="images -> token ids (a tokens JSON file)")
    tok.add_argument("files", nargs="+", metavar="IMAGE", help="PNG, JPEG or WebP files")
    tok.add_argument("-o", "--output", default="-", help="tokens file to write (default: stdout)")
    tok.add_argument("--batch-size", **per_request)
    tok.set_defaults(run=cmd_tokenize)

    detok = commands.add_parser("detokenize", parents=[common], help="a tokens JSON file -> images")
    detok.add_argument("tokens", metavar="TOKENS_JSON", help="a tokens file ('-': stdin)")
    detok.add_argument("-o", "--output", default=".", help="directory for the images (default: .)")
    detok.add_argument("--format", choices=FORMATS, default="png", help=FORMAT_HELP)
    detok.add_argument("--batch-size", **per_request)
    detok.set_defaults(run=cmd_detokenize)

    gen = commands.add_parser("generate", parents=[common], help="class-conditional images")
    gen.add_argument(
        "-c",
        "--class",
        dest="classes",
        metavar="CLASS",
        action="append",
        required=True,
        help="class name or id (repeatable)",
    )
    gen.add_argument("-n", type=positive, default=1, help="images per class (1)")
    gen.add_argument("--steps", type=positive, help="sampling steps (the model's default)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (the model's default)")
    gen.add_argument(
        "--guidance-schedule", choices=SCHEDULES, help="how guidance grows over the steps (the model's default)"
    )
    gen.add_argument("--temperature", type=float, help="sampling temperature (the model's default)")
    gen.add_argument("--seed", type=int, help="image k uses seed + k (random when omitted)")
    gen.add_argument("-o", "--output", default=".", help="directory for the images (default: .)")
    gen.add_argument("--format", choices=FORMATS, default="png", help=FORMAT_HELP)
    gen.add_argument("--tokens", action="store_true", help="also write the token ids to OUTPUT/tokens.json")
    gen.add_argument("--batch-size", **per_request)
    gen.set_defaults(run=cmd_generate)

    vary = commands.add_parser("vary", parents=[common], help="variations of an image: some tokens re-generated")
    vary.add_argument("source", metavar="SOURCE", help="an image file, or a tokens file (its first item; '-': stdin)")
    vary.add_argument("--strength", type=fraction, help="fraction of the tokens re-generated (0.5 without --mask)")
    vary.add_argument("--mask", help="token positions to re-generate, comma-separated (instead of --strength)")
    vary.add_argument(
        "-c",
        "--class",
        dest="classes",
        metavar="CLASS",
        action="append",
        help="target class name or id, or null (repeatable; unconditional when omitted)",
    )
    vary.add_argument("-n", type=positive, default=1, help="variations per class (1)")
    vary.add_argument("--steps", type=positive, help="steps of the full schedule (the model's default)")
    vary.add_argument("--guidance", type=float, help="classifier-free guidance scale (the model's default)")
    vary.add_argument(
        "--guidance-schedule", choices=SCHEDULES, help="how guidance grows over the steps (the model's default)"
    )
    vary.add_argument("--temperature", type=float, help="sampling temperature (the model's default)")
    vary.add_argument("--seed", type=int, help="variation k uses seed + k (random when omitted)")
    vary.add_argument("-o", "--output", default=".", help="directory for the images (default: .)")
    vary.add_argument("--format", choices=FORMATS, default="png", help=FORMAT_HELP)
    vary.add_argument("--tokens", action="store_true", help="also write the token ids to OUTPUT/tokens.json")
    vary.add_argument("--batch-size", **per_request)
    vary.set_defaults(run=cmd_vary)
    return parser


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], not {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    url = args.url or os.environ.get("TITOK_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("TITOK_API_KEY") or None
    try:
        if args.retries < 0:
            raise UsageError(f"--retries must be 0 or more, not {args.retries}")
        with Client(url, api_key, args.timeout, args.retries) as client:
            args.run(client, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        # the gateway does not know how this client takes its key: say it here
        how = " (give the key with --api-key or TITOK_API_KEY)" if e.status == 401 else ""
        if e.type == "connection_error":
            how = " (is a gateway running there? `make serve` starts one; --url or TITOK_URL names another)"
        print(f"error: {e.type}: {' '.join(e.message.split())}{how}", file=sys.stderr)
        return 1
    except OSError as e:  # writing an output
        print(f"error: os_error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
